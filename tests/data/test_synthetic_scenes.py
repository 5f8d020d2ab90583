"""The scene-confounded benchmark's own sanity checks, measured on what it generates."""
import numpy as np
import pytest

from cit_fast.data.synthetic.benchmark import SHAPE_CLASSES
from cit_fast.data.synthetic.scenes import (ARMS, GRID, P_C_AWAY, SCENE_PAIRS, label_statistics, make_scene_multilabel,
                                            make_scene_singles, scene_arm, scene_labels)

N_TRAIN, N_TEST = 7600, 8000  # the sweep's sizes (labels only: fast)
PAIRS = [(SHAPE_CLASSES.index(b), SHAPE_CLASSES.index(c)) for b, c in SCENE_PAIRS]
FREE = [v for v in range(len(SHAPE_CLASSES)) if v not in {x for p in PAIRS for x in p}]


def stats(arm, split="train", n=N_TRAIN):
    labels, scene, overflow = scene_labels(arm, n, split)
    assert overflow == 0  # no scene needed its free classes redrawn: the grid never capped a label
    return labels, scene, label_statistics(labels, scene, PAIRS)


@pytest.mark.parametrize("arm", ["control", "3", "15", "28"])
def test_exclusive_fraction_within_one_point_of_target(arm):
    target = scene_arm(arm).exclusive
    _, _, rows = stats(arm)
    for r in rows:
        assert abs(r["exclusive"] - target) <= 0.01, (arm, r["exclusive"])
    if arm == "control":
        assert all(r["n_exclusive"] == 0 for r in rows)
        assert all(r["p_b_scene"][s] == 0 for k, r in enumerate(rows) for s in range(4) if s != k)  # b only at home
    if arm == "15":
        assert min(r["n_exclusive"] for r in rows) >= 150  # enough "b without c" images to measure Exclusive AP


@pytest.mark.parametrize("arm", ["3", "15", "28"])
def test_b_and_c_independent_given_the_scene_with_the_stated_rates(arm):
    a = scene_arm(arm)
    labels, scene, rows = stats(arm)
    t = labels > 0
    for k, ((b, c), r) in enumerate(zip(PAIRS, rows)):
        for s in range(4):
            rows_s = scene == s
            pb, pc = t[rows_s, b].mean(), t[rows_s, c].mean()
            assert pb == pytest.approx(0.5 if s == k else a.eps, abs=2e-3)
            assert pc == pytest.approx(a.q if s == k else P_C_AWAY, abs=2e-3)
            assert (t[rows_s, b] & t[rows_s, c]).mean() == pytest.approx(pb * pc, abs=2e-3)
    # the free classes: Bernoulli(0.15), independent of the scene
    for v in FREE:
        for s in range(4):
            assert t[scene == s, v].mean() == pytest.approx(0.15, abs=0.03)


def test_placebo_matches_the_control_labels_with_the_scene_independent():
    _, _, control = stats("control")
    labels, scene, placebo = stats("placebo")
    for rc, rp in zip(control, placebo):
        for key in ("p_b", "p_c", "p_bc"):
            assert rp[key] == pytest.approx(rc[key], abs=2e-3), key
        assert rp["n_exclusive"] == 0  # b => c: today's rule
        assert max(rp["p_b_scene"]) - min(rp["p_b_scene"]) < 2e-3  # S carries nothing about b
        assert max(rp["p_c_scene"]) - min(rp["p_c_scene"]) < 2e-3
        assert max(rc["p_b_scene"]) == pytest.approx(0.5)  # while in the control it is b's common cause


@pytest.mark.parametrize("arm", ARMS)
def test_test_split_c_independent_with_enough_positives_and_hard_negatives(arm):
    labels, scene, rows = stats(arm, "test", N_TEST)
    t = labels > 0
    for k, ((b, c), r) in enumerate(zip(PAIRS, rows)):
        assert r["n_exclusive"] >= 500 and r["n_cooccur"] >= 500
        assert r["p_c"] == pytest.approx(0.5, abs=1e-3)
        for s in range(4):
            rows_s = scene == s
            assert t[rows_s, c].mean() == pytest.approx(0.5, abs=2e-3)  # c independent of S ...
            for has_b in (False, True):  # ... and of b
                sel = rows_s & (t[:, b] == has_b)
                if sel.sum() > 50:
                    assert t[sel, c].mean() == pytest.approx(0.5, abs=0.02)
        if not scene_arm(arm).scene_free:  # b from P(b | S) as in training; c-only home-scene images as hard negatives
            assert r["p_b_scene"][k] == pytest.approx(0.5, abs=2e-3)
            assert (t[:, c] & ~t[:, b] & (scene == k)).sum() >= 500
    assert np.bincount(scene).tolist() == [N_TEST // 4] * 4  # S uniform


def test_rendered_scenes():
    d = make_scene_multilabel("15", n_train=240, n_test=120, seed=3)
    tr, te = d["train"], d["test"]
    assert tr.images.shape == (240, 48, 48, 3) and tr.images.dtype == np.uint8
    assert tr.masks.shape == (240, 48, 48) and tr.labels.shape == (240, 10)
    assert np.bincount(tr.strata).tolist() == [60] * 4 and len(te) == 120
    np.testing.assert_array_equal(tr.labels, scene_labels("15", 240, "train", seed=3)[0])
    fg = tr.masks.reshape(240, -1).mean(1) / 255
    assert fg.max() < 0.5  # the scene covers well over half of every image
    has = tr.labels.sum(1) > 0
    assert (fg[has] > 0.005).all() and (fg[~has] == 0).all()
    assert tr.labels.sum(1).max() <= GRID * GRID
    # S is visible: the mean background colour of an image tells its scene
    bg = (tr.images * (tr.masks[..., None] < 128)).reshape(240, -1, 3).sum(1) / (tr.masks < 128).reshape(240, -1).sum(1)[:, None]
    cent = np.stack([bg[tr.strata == s].mean(0) for s in range(4)])
    guess = np.argmin(((bg[:, None] - cent[None]) ** 2).sum(-1), 1)
    assert (guess == tr.strata).mean() > 0.95
    # deterministic; the arms share the seed's rendering randomness but not their labels
    again = make_scene_multilabel("15", n_train=240, n_test=120, seed=3)
    np.testing.assert_array_equal(again["train"].images, tr.images)


@pytest.mark.slow
def test_single_object_scenes_for_the_confounder_network():
    s = make_scene_singles(200, seed=1)
    assert s.labels.shape == (200,) and np.bincount(s.labels).tolist() == [20] * 10
    assert np.bincount(s.strata).tolist() == [50] * 4
    assert (s.masks.reshape(200, -1).max(1) > 0).all()
    cells = make_scene_singles(80, size=16, grid=1, seed=1, label="object_scene")  # one grid cell, (object, scene)
    assert cells.images.shape == (80, 16, 16, 3) and len(cells.classes) == 40
    obj = make_scene_singles(80, size=16, grid=1, seed=1)
    np.testing.assert_array_equal(cells.labels, obj.labels * 4 + cells.strata)
    with pytest.raises(ValueError, match="label"):
        make_scene_singles(8, label="scene")


def test_bad_arguments():
    with pytest.raises(ValueError, match="arm"):
        scene_arm("50")
    with pytest.raises(ValueError, match="scenes"):
        make_scene_multilabel("15", n_train=8, n_test=8, n_scenes=3)
    with pytest.raises(ValueError, match="shape class"):
        make_scene_multilabel("15", n_train=8, n_test=8, pairs=(("circle", "blob"),))


# the salient arm's (b, c) cells per scene, by hand: P(b) = 0.25, P(not c | b) = 0.1, P(c | not b) = 0.05 in
# training, so the cells [b][c] are 0.75 * 0.95 = 0.7125, 0.0375 / 0.025, 0.225 of a scene's rows, rounded by
# largest remainder (7600 / 4 = 1900 rows: 1353.75, 71.25, 47.5, 427.5 -> 1354, 71, 48, 427; 3000 / 4 = 750:
# 534.375, 28.125, 18.75, 168.75 -> 534, 28, 19, 169); in test b and c are independent, P(b) = 0.25 and
# P(c) = 0.5 (8000 / 4 = 2000: 750, 750, 250, 250)
@pytest.mark.parametrize("split, n, cells", [("train", 7600, [[1354, 71], [48, 427]]),
                                             ("train", 3000, [[534, 28], [19, 169]]),
                                             ("test", 8000, [[750, 750], [250, 250]])])
def test_salient_arm_exact_counts_in_every_scene(split, n, cells):
    labels, scene, overflow = scene_labels("salient", n, split)
    assert overflow <= 2  # at most 2 images had their free classes redrawn (the paired cells never are)
    t = labels > 0
    for b, c in PAIRS:
        for s in range(4):
            rows = scene == s
            got = [[int((rows & (t[:, b] == vb) & (t[:, c] == vc)).sum()) for vc in (False, True)]
                   for vb in (False, True)]
            assert got == cells, (b, c, s)  # the same in every scene: S says nothing about b or c
    r = label_statistics(labels, scene, PAIRS)[0]
    assert (r["n_exclusive"], r["n_cooccur"]) == (4 * cells[1][0], 4 * cells[1][1])
    a = scene_arm("salient")
    assert (a.exclusive, a.p_b, a.p_c, a.b_scale, a.b_alpha, a.c_copies) == pytest.approx(
        (0.1, 0.25, 0.2625, 0.9, 1.0, 3))
