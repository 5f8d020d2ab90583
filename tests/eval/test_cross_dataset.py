"""Cross-dataset evaluation: a model trained on synthetic multi-label arrays, scored on NUS-WIDE-style
folders whose classes are renamed, partly missing and partly extra."""
import json

import numpy as np
import pytest

from cit_fast.cli import main as cli
from cit_fast.eval.cross_dataset import common_class_ap, match_classes
from cit_fast.data.sources.nuswide import save_nuswide
from cit_fast.data.sources.records import DataError, SampleSet
from cit_fast.data.synthetic.benchmark import save_arrays
from cit_fast.data.synthetic.multilabel import make_biased_multilabel
from cit_fast import checkpoint as ckpt
from cit_fast.config import load_config
from cit_fast.train.loop import main

# source class -> target class; the target calls them differently, lacks ring/frame/... and adds "sunset"
RENAME = {"circle": "round", "square": "box", "triangle": "wedge", "star": "asterisk", "cross": "plus",
          "bar": "stick"}


def _rename(s: SampleSet, rng, extra=True) -> SampleSet:
    keep = [s.classes.index(c) for c in RENAME]
    labels = s.labels[:, keep]
    names = [RENAME[c] for c in RENAME]
    if extra:
        labels = np.concatenate([labels, (rng.random((len(s), 1)) < 0.4).astype(np.float32)], 1)
        names.append("sunset")
    return SampleSet(s.images, None, labels, names, name="renamed")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cross")
    sets = make_biased_multilabel(n_train=96, n_test_free=24, pair_test=4, size=32, seed=0)
    save_arrays(sets["train"], str(d / "train.npz"))
    save_arrays(sets["test"], str(d / "test.npz"))
    cfg = load_config(None, ["data.source=arrays", f"data.train={d / 'train.npz'}", f"data.test={d / 'test.npz'}",
                             "model.name=causal_resnet8", "model.embed_dim=16", "model.num_heads=2",
                             "model.num_confounders=4", "model.confounder_tokens=4", "model.dropout=0",
                             "optim.lr=0.02", "optim.epochs=1", "optim.milestones=[1]", "progress=false",
                             "threads=1", "data.batch_size=16", f"out_dir={d / 'run'}",
                             "data.root=/nonexistent"])  # unused by arrays; must not leak to the target
    main(cfg)
    (d / "map.yaml").write_text("".join(f"{s}: {t}\n" for s, t in RENAME.items()))
    return d, sets, str(ckpt.find_latest(d / "run" / "checkpoints"))


@pytest.mark.parametrize("source", [["data.source=nuswide"], []], ids=["named", "inferred"])
def test_same_images_renamed_give_the_in_domain_ap(trained, tmp_path, source):
    d, sets, ck = trained
    save_nuswide(_rename(sets["test"], np.random.default_rng(0)), str(tmp_path / "tgt"), "matrix")
    assert cli(["eval", "--checkpoint", ck, "--out", str(tmp_path / "e.json")]) == 0
    assert cli(["cross-eval", "--checkpoint", ck, "--mapping", str(d / "map.yaml"), "--source-too",
                *source, f"data.test={tmp_path / 'tgt'}", "--out", str(tmp_path / "x.json")]) == 0
    own = json.loads((tmp_path / "e.json").read_text())["test"]["per_class_ap"]
    rep = json.loads((tmp_path / "x.json").read_text())
    assert rep["common_classes"] == 6 and rep["target_classes"] == 7 and rep["n"] == len(sets["test"])
    assert [r["target"] for r in rep["per_class"]] == list(RENAME.values())
    for r in rep["per_class"]:  # the PNG round trip is lossless: the very same scores
        assert r["ap"] == pytest.approx(own[r["source"]], abs=1e-6) and r["source_ap"] == pytest.approx(r["ap"])
    assert rep["mAP"] == pytest.approx(np.mean([own[s] for s in RENAME]), abs=1e-6)
    assert rep["unmapped_source"] == ["ring", "frame", "crescent", "ell"] and rep["unmapped_target"] == ["sunset"]


def test_other_dataset_tags_layout_other_size(trained, tmp_path, capsys):
    d, _, ck = trained
    other = make_biased_multilabel(n_train=4, n_test_free=30, pair_test=2, size=40, seed=3)["test"]
    save_nuswide(_rename(other, np.random.default_rng(1)), str(tmp_path / "tgt"), "tags")
    assert cli(["cross-eval", "--checkpoint", ck, "--mapping", str(d / "map.yaml"), "data.source=nuswide",
                f"data.test={tmp_path / 'tgt'}"]) == 0
    text = capsys.readouterr().out
    assert "mAP (common classes)" in text and "round" in text and "common classes: 6" in text
    mapped = json.dumps({"circle": "round", "star": "asterisk"})
    (tmp_path / "m.json").write_text(mapped)
    assert cli(["cross-eval", "--checkpoint", ck, "--mapping", str(tmp_path / "m.json"), "--json",
                "data.source=nuswide", f"data.test={tmp_path / 'tgt'}"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["common_classes"] == 2
    assert rep["mAP"] == pytest.approx(np.mean([r["ap"] for r in rep["per_class"] if r["ap"] is not None]))
    assert rep["target_data"]["image_size"] == 32  # resized to the training side (40 -> 32)


def test_mapping_with_unknown_classes_is_an_error_listing_them(trained, tmp_path, capsys):
    d, sets, ck = trained
    save_nuswide(_rename(sets["test"], np.random.default_rng(0)), str(tmp_path / "tgt"), "matrix")
    (tmp_path / "bad.yaml").write_text("circle: round\nunicorn: box\nstar: asterisk\nsquare: hexagon\nbar: blob\n")
    assert cli(["cross-eval", "--checkpoint", ck, "--mapping", str(tmp_path / "bad.yaml"), "data.source=nuswide",
                f"data.test={tmp_path / 'tgt'}"]) == 2
    err = capsys.readouterr().err
    assert "unknown source class(es) ['unicorn']" in err and "unknown target class(es) ['hexagon', 'blob']" in err
    assert "the target's classes: round, box" in err


def test_a_missing_target_is_one_line_naming_data_test(trained, tmp_path, capsys):
    d, _, ck = trained
    assert cli(["cross-eval", "--checkpoint", ck, "--mapping", str(d / "map.yaml"),
                f"data.test={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"data.test {tmp_path / 'nowhere'}: not found") and "\n" not in err, err


def test_match_classes_and_common_ap_by_hand():
    with pytest.raises(DataError, match="mapped from several source classes"):
        match_classes({"a": "x", "b": "x"}, ["a", "b"], ["x"])
    pairs = match_classes({"b": "y", "a": "x"}, ["a", "b", "c"], ["x", "y"])
    assert pairs == [(1, 1), (0, 0)]
    scores = np.array([[0.9, 0.1, 5], [0.2, 0.8, 5], [0.4, 0.3, 5]])
    targets = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    rep = common_class_ap(scores, targets, pairs, ["a", "b", "c"], ["x", "y"])
    # b->y: scores 0.1, 0.8, 0.3 for targets 0, 1, 1 -> AP 100; a->x: 0.9 (1), 0.4 (1), 0.2 (0) -> 100
    assert [r["ap"] for r in rep["per_class"]] == [100.0, 100.0] and rep["mAP"] == 100.0
    rep = common_class_ap(-scores, targets, pairs, ["a", "b", "c"], ["x", "y"])
    assert rep["per_class"][0]["ap"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)  # y ranked 2nd and 3rd
