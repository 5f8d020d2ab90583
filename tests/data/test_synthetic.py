import numpy as np
import pytest

from cit_fast.data.synthetic.benchmark import SHAPE_CLASSES, cit_assignment, make_cit_benchmark, make_shapes


def border_colors(s, pad=4):
    return s.images[:, :pad, :, :].reshape(len(s), -1, 3).mean(1)  # (N, 3) mean top-border colour


def n_distinct(colors, tol=10.0):
    """Number of distinct colours, up to the border's pixel noise (greedy clustering)."""
    centres = []
    for c in colors:
        if not any(np.abs(c - k).max() < tol for k in centres):
            centres.append(c)
    return len(centres)


def test_shapes_masks_are_exact_and_classes_balanced():
    images, masks, labels = make_shapes(6, size=24, seed=0)
    assert images.shape == (60, 24, 24, 3) and masks.shape == (60, 24, 24)
    assert list(np.bincount(labels)) == [6] * len(SHAPE_CLASSES)
    frac = (masks > 127).mean(axis=(1, 2))
    assert (frac > 0.03).all() and (frac < 0.8).all()  # an object, never the whole image
    again = make_shapes(6, size=24, seed=0)
    assert (again[0] == images).all()


@pytest.fixture(scope="module")
def benchmark():
    return {v: make_cit_benchmark(v, 20, 20, seed=0) for v in ("original", "V1", "V2", "V3", "V4")}


def test_mask_is_the_interior(benchmark):
    s = benchmark["V2"]["train"]
    assert s.images.shape[1:] == (32, 32, 3)
    assert (s.masks[:, 4:28, 4:28] == 255).all() and s.masks[:, :4].sum() == 0


def test_table_iii_cardinalities():
    # |A| and |B| per version (CIFAR-10 column of Table III)
    expect = {"V1": (10, 1), "V2": (5, 2), "V3": (2, 5), "V4": (1, 10)}
    for v, (na, nb) in expect.items():
        a = cit_assignment(v)
        assert len(set(a.a_of_class)) == na and len(set(a.b_of_class)) == nb
        # within one A group, B tells the classes apart in training
        for g in set(a.a_of_class):
            assert len(set(a.b_of_class[a.a_of_class == g])) == (a.a_of_class == g).sum() or nb == 1


def test_train_border_encodes_class_and_test_border_does_not(benchmark):
    for v in ("V2", "V3", "V4"):
        tr, te = benchmark[v]["train"], benchmark[v]["test"]
        col = border_colors(tr)
        for c in range(10):  # one colour per class in training
            assert n_distinct(col[tr.labels == c]) == 1
        assert n_distinct(col) == 10
        # in test, B is re-drawn: some samples carry another class's border
        assert (te.bias != cit_assignment(v).b_of_class[te.labels]).mean() > 0.3
        # but A (the common sense) is kept: strata equal the class's A
        assert (te.strata == cit_assignment(v).a_of_class[te.labels]).all()


def test_v1_and_original(benchmark):
    tr, te = benchmark["V1"]["train"], benchmark["V1"]["test"]
    assert n_distinct(border_colors(tr)) == 10
    assert (border_colors(te)[te.labels == 3].std(0) < 8).all()  # test keeps the class's context
    o = benchmark["original"]["train"]
    assert n_distinct(border_colors(o)) == 1


def test_misleading_test_bias_never_matches_training():
    te = make_cit_benchmark("V4", 5, 10, seed=0, test_bias="misleading")["test"]
    assert (te.bias != cit_assignment("V4").b_of_class[te.labels]).all()
