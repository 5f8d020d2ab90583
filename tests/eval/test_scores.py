import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cit_fast.data.sources.records import SampleSet
from cit_fast.config import load_config
from cit_fast.eval.probes import bg_challenge, table2
from cit_fast.eval.scores import (average_precision, biased_pairs, biased_pairs_recall, mean_ap, multilabel_report,
                                  parse_pairs, top_k_recall, topk_accuracy)
from cit_fast.eval.tables import format_report


# -- AP on tiny examples, by hand -------------------------------------------------------------------

def test_average_precision_by_hand():
    # ranks: + - + - +  -> precision at the positives 1/1, 2/3, 3/5
    assert average_precision(np.array([.9, .8, .7, .6, .5]), np.array([1, 0, 1, 0, 1])) == pytest.approx(
        (1 + 2 / 3 + 3 / 5) / 3)
    # a tie (0.5, 0.5) is one threshold: (R, P) = (1/3, 1), (2/3, 2/3), (1, 3/4)
    assert average_precision(np.array([.9, .5, .5, .1]), np.array([1, 1, 0, 1])) == pytest.approx(
        (1 + 2 / 3 + 3 / 4) / 3)
    assert average_precision(np.array([.2, .1]), np.array([1, 1])) == 1.0
    assert math.isnan(average_precision(np.array([.2, .1]), np.array([0, 0])))
    with pytest.raises(ValueError, match="3 scores but 2 targets"):
        average_precision(np.zeros(3), np.zeros(2))


def test_average_precision_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for n in (7, 273):
        s = np.round(rng.random(n), 2)  # rounded: many ties
        y = rng.random(n) < 0.3
        y[0] = True
        assert average_precision(s, y) == pytest.approx(metrics.average_precision_score(y, s))


def test_map_skips_classes_without_positives():
    s = np.array([[.9, .1, .3], [.2, .8, .1], [.4, .3, .2]])
    t = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    m, ap = mean_ap(s, t)
    assert math.isnan(ap[2]) and ap[0] == 100.0
    assert ap[1] == pytest.approx(100.0) and m == pytest.approx(100.0)


# -- Exclusive / Co-occur subsets ------------------------------------------------------------------

# b = class 0, c = class 1; b's score per image
PAIR_T = np.array([[1, 1], [1, 0], [0, 1], [0, 0], [1, 0], [1, 1]])
PAIR_S = np.array([[.9, 0], [.3, 0], [.8, 0], [.1, 0], [.7, 0], [.2, 0]])


def test_exclusive_and_cooccur_ap_by_hand():
    r = biased_pairs(PAIR_S, PAIR_T, [(0, 1)], classes=["b", "c"])
    row = r["pairs"][0]
    # Exclusive: b without c (images 1, 4) + no b (2, 3): ranking 2(-) 4(+) 1(+) 3(-)
    assert row["exclusive"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    # Co-occur: b with c (0, 5) + no b (2, 3): ranking 0(+) 2(-) 5(+) 3(-)
    assert row["cooccur"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    # all images: 0(+) 2(-) 4(+) 1(+) 5(+) 3(-)
    assert row["all"] == pytest.approx(100 * (1 + 2 / 3 + 3 / 4 + 4 / 5) / 4)
    assert (row["n_exclusive"], row["n_cooccur"], row["b"], row["c"]) == (2, 2, "b", "c")
    assert r["exclusive"] == row["exclusive"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exclusive_and_cooccur_match_singh_et_al_evaluate(seed):
    """Their evaluate.py: exclusive = b & ~c, cooccur = b & c, other = neither (the images without b);
    AP of b by scikit-learn over exclusive + other and cooccur + other. Scores rounded to force ties."""
    import sklearn.metrics as sk  # the [report] extra, installed by make venv
    rng = np.random.default_rng(seed)
    t = (rng.random((157, 5)) < 0.4).astype(np.float32)
    s = np.round(rng.random((157, 5)) + 0.5 * t, 1)  # ties, and b scored higher where present
    pairs = [(0, 1), (2, 4), (3, 0)]
    r = biased_pairs(s, t, pairs)
    for (b, c), row in zip(pairs, r["pairs"]):
        excl, cooc = (t[:, b] == 1) & (t[:, c] == 0), (t[:, b] == 1) & (t[:, c] == 1)
        other = ~excl & ~cooc
        assert row["exclusive"] == pytest.approx(100 * sk.average_precision_score(t[excl | other, b], s[excl | other, b]))
        assert row["cooccur"] == pytest.approx(100 * sk.average_precision_score(t[cooc | other, b], s[cooc | other, b]))
        assert row["all"] == pytest.approx(100 * sk.average_precision_score(t[:, b], s[:, b]))
    assert r["exclusive"] == pytest.approx(np.mean([row["exclusive"] for row in r["pairs"]]))


def test_top_k_recall_by_hand():
    s = np.array([[.9, .8, .7, .1], [.1, .2, .3, .9], [.5, .1, .2, .3]])
    t = np.array([[1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 0, 0]])
    # top-2 per image: {0,1}, {3,2}, {0,3}; class 0: 2/3 of its positives, class 1: 0/1, class 3: 1/2
    assert top_k_recall(s, t, k=2) == pytest.approx(100 * (2 / 3 + 0 + 1 / 2) / 3)
    rec = biased_pairs_recall(s, t, [(0, 3)], k=2)
    # b=0 with c=3: images 0, 1 -> 1/2; without c: image 2 -> 1/1
    assert rec == {"exclusive_top2_recall": 100.0, "cooccur_top2_recall": 50.0}


def test_parse_pairs():
    classes = ["person", "ski", "dog", "7"]
    assert parse_pairs("ski:person, 2:0", classes) == [(1, 0), (2, 0)]
    assert parse_pairs([("7", "dog")], classes) == [(3, 2)]  # a class named "7" wins over index 7
    with pytest.raises(ValueError, match="'cat' is not among the classes"):
        parse_pairs("cat:dog", classes)
    with pytest.raises(ValueError, match="expected 'b:c'"):
        parse_pairs("ski", classes)
    with pytest.raises(ValueError, match="out of range"):
        parse_pairs("9:0", classes)


def test_multilabel_report_and_table():
    rep = multilabel_report(PAIR_S + 0.01, PAIR_T, ["b", "c"], pairs=[(0, 1)], k=1)
    assert set(rep) >= {"mAP", "per_class_ap", "top1_recall", "biased_pairs"}
    text = format_report({"checkpoint": "x.pt", "model": "m", "task": "multilabel", "test": rep})
    assert "Exclusive" in text and "Co-occur" in text and "per-class AP" in text


def test_topk_accuracy():
    logits = np.array([[3, 2, 1], [1, 3, 2], [1, 2, 3]], float)
    assert topk_accuracy(logits, np.array([0, 2, 0]), (1, 2)) == {"top1": pytest.approx(100 / 3),
                                                                   "top2": pytest.approx(200 / 3)}


# -- Background Challenge and Table II on a probe data set ----------------------------------------

N_CLS, SIDE = 4, 8


def probe_set(n_per_class=6):
    """Object (the centre 4x4) red = 40 + 50*class; background green = 40 + 50*class; mask = centre."""
    labels = np.repeat(np.arange(N_CLS), n_per_class)
    imgs = np.zeros((len(labels), SIDE, SIDE, 3), np.uint8)
    imgs[..., 1] = (40 + 50 * labels)[:, None, None]
    imgs[:, 2:6, 2:6, :] = 0
    imgs[:, 2:6, 2:6, 0] = (40 + 50 * labels)[:, None, None]
    masks = np.zeros((len(labels), SIDE, SIDE), np.uint8)
    masks[:, 2:6, 2:6] = 255
    return SampleSet(imgs, masks, labels, [f"c{i}" for i in range(N_CLS)], name="probe")


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Reader(nn.Module):
    """Classifies by one pixel's channel value: the object centre (red) or a background corner (green)."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.dummy = nn.Parameter(torch.zeros(()))

    def read(self, x):
        v = x * STD[0] + MEAN[0]  # back to [0, 1]
        v = v[:, 0, 3, 3] if self.where == "object" else v[:, 1, 0, 0]
        return -(v[:, None] * 255 - (40 + 50 * torch.arange(N_CLS)).float()).abs()

    def forward(self, x, context=None):
        if context is None:
            return self.read(x)
        return self.read(x) if self.where == "object" else self.read(context)


def cfg():
    return load_config(None, ["data.batch_size=5", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"])


@pytest.mark.parametrize("double", [False, True])
def test_bg_challenge_separates_object_and_background_readers(double):
    s = probe_set()
    obj = bg_challenge(Reader("object"), s, cfg(), torch.device("cpu"), double)
    assert obj == {"original": 100.0, "mixed_same": 100.0, "mixed_rand": 100.0, "only_fg": 100.0, "bg_gap": 0.0}
    bg = bg_challenge(Reader("background"), s, cfg(), torch.device("cpu"), double)
    assert bg["original"] == 100.0 and bg["mixed_same"] == 100.0
    assert bg["mixed_rand"] < 60.0 and bg["only_fg"] == 25.0  # black background reads as class 0
    assert bg["bg_gap"] == pytest.approx(100.0 - bg["mixed_rand"])


def test_table2_feeds_one_branch_at_a_time():
    s = probe_set()
    obj = table2(Reader("object"), s, cfg(), torch.device("cpu"))
    assert obj == {"obj_and_bg": 100.0, "only_obj": 100.0, "only_bg": 25.0}
    bg = table2(Reader("background"), s, cfg(), torch.device("cpu"))
    assert bg == {"obj_and_bg": 100.0, "only_obj": 25.0, "only_bg": 100.0}


def test_bg_challenge_needs_masks_and_single_labels():
    s = probe_set()
    no_masks = SampleSet(s.images, None, s.labels, s.classes, name="nomask")
    with pytest.raises(ValueError, match="nomask has no object masks"):
        bg_challenge(Reader("object"), no_masks, cfg(), torch.device("cpu"), False)
    multi = SampleSet(s.images, s.masks, np.eye(N_CLS, dtype=np.float32)[s.labels], s.classes)
    with pytest.raises(ValueError, match="single-label"):
        bg_challenge(Reader("object"), multi, cfg(), torch.device("cpu"), False)
