"""The shipped MS-COCO <-> NUS-WIDE mapping (--mapping coco-nuswide): built from the two class lists,
one-to-one, each pair saying how it matched; cross-eval reads it both ways, as the model's classes go."""
import json

import numpy as np
import pytest

from cit_fast.cli import main as cli
from cit_fast.data.mappings import derive_mapping, named_mapping, orient
from cit_fast.data.sources.nuswide import save_nuswide
from cit_fast.data.sources.records import SampleSet
from cit_fast.data.synthetic.benchmark import save_arrays
from cit_fast.data.synthetic.multilabel import make_biased_multilabel
from cit_fast import checkpoint as ckpt
from cit_fast.errors import UsageError

M = named_mapping("coco-nuswide")


def test_the_mapping_is_built_from_the_two_class_lists():
    coco, nus = M.classes
    assert len(coco) == len(set(coco)) == 80 and len(nus) == len(set(nus)) == 81 and list(nus) == sorted(nus)
    assert coco[0] == "person" and coco[-1] == "toothbrush" and "dining table" in coco and "tv" in coco
    assert list(M.pairs) == derive_mapping(coco, nus, M.synonyms)  # the file is what the rule gives
    for c, n, how in M.pairs:
        assert c in coco and n in nus
        assert {"exact": n == c, "plural": n in (c + "s", c + "es"), "synonym": M.synonyms.get(c) == n}[how], (c, n)
    assert len({n for _, n, _ in M.pairs}) == len(M.pairs) == 13  # one-to-one
    assert [(c, n) for c, n, h in M.pairs if h != "exact"] == [("car", "cars"), ("airplane", "plane"),
                                                               ("boat", "boats"), ("bird", "birds"),
                                                               ("horse", "horses")]


def test_derive_mapping_by_hand():
    assert derive_mapping(["bus", "fox", "cat", "plane"], ["buses", "foxes", "cats", "cat", "jet"],
                          {"plane": "jet"}) == [("bus", "buses", "plural"), ("fox", "foxes", "plural"),
                                                ("cat", "cat", "exact"), ("plane", "jet", "synonym")]


def test_orient_picks_the_direction_and_skips_in_one_line(capsys):
    kept, way = orient(M, ["car", "airplane", "cup"], ["cars", "plane", "sky"])
    assert (kept, way) == ({"car": "cars", "airplane": "plane"}, "MS-COCO -> NUS-WIDE")
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 of 13 pairs" in err and "person:person (the model has no 'person'; the target " \
                                                           "has no 'person')" in err
    kept, way = orient(M, list(M.classes[1]), list(M.classes[0]))
    assert way == "NUS-WIDE -> MS-COCO" and len(kept) == 13 and kept["plane"] == "airplane"
    assert capsys.readouterr().err == ""
    with pytest.raises(UsageError, match="--mapping coco-nuswide: none of its 13 pairs"):
        orient(M, ["cup"], ["sky"])


# the synthetic shapes named as one side's classes; six have a counterpart on the other side
AS_COCO = {"circle": "car", "ring": "cup", "square": "airplane", "frame": "laptop", "triangle": "boat",
           "cross": "person", "star": "horse", "crescent": "stop sign", "bar": "dog", "ell": "bed"}
COCO_TO_NUS = {"car": "cars", "airplane": "plane", "boat": "boats", "person": "person", "horse": "horses",
               "dog": "dog"}
AS_NUS = {k: COCO_TO_NUS.get(v, f"sky{i}") for i, (k, v) in enumerate(AS_COCO.items())}


def _named(s: SampleSet, names, keep=None) -> SampleSet:
    keep = list(range(len(s.classes))) if keep is None else keep
    return SampleSet(s.images, s.masks, s.labels[:, keep], [names[s.classes[k]] for k in keep], s.strata, s.bias,
                     "renamed")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_biased_multilabel(n_train=64, n_test_free=24, pair_test=4, size=32, seed=0)


@pytest.mark.parametrize("train_names, target_names, way", [(AS_COCO, AS_NUS, "MS-COCO -> NUS-WIDE"),
                                                            (AS_NUS, AS_COCO, "NUS-WIDE -> MS-COCO")])
def test_cross_eval_runs_it_both_ways(data, tmp_path, capsys, train_names, target_names, way):
    for split in ("train", "test"):
        save_arrays(_named(data[split], train_names), str(tmp_path / f"{split}.npz"))
    assert cli(["train", f"data.train={tmp_path / 'train.npz'}", f"data.test={tmp_path / 'test.npz'}",
                "model.name=resnet8", "optim.epochs=1", "max_steps_per_epoch=2", "data.batch_size=16",
                "threads=1", "progress=false", f"out_dir={tmp_path / 'run'}"]) == 0
    ck = str(ckpt.find_latest(tmp_path / "run" / "checkpoints"))
    assert cli(["eval", "--checkpoint", ck, "--out", str(tmp_path / "e.json")]) == 0
    own = json.loads((tmp_path / "e.json").read_text())["test"]["per_class_ap"]
    # the same test images under the other side's names, as NUS-WIDE folders or arrays
    keep = [i for i, c in enumerate(data["test"].classes) if c != "bar"]  # the target lacks dog, one of the six
    target = _named(data["test"], target_names, keep)
    if way.startswith("MS-COCO"):
        save_nuswide(target, str(tmp_path / "tgt"), "matrix")
        tgt = [f"data.test={tmp_path / 'tgt'}"]
    else:
        save_arrays(target, str(tmp_path / "tgt.npz"))
        tgt = [f"data.test={tmp_path / 'tgt.npz'}"]
    capsys.readouterr()
    assert cli(["cross-eval", "--checkpoint", ck, "--mapping", "coco-nuswide", *tgt, "--out",
                str(tmp_path / "x.json")]) == 0
    out = capsys.readouterr()
    rep = json.loads((tmp_path / "x.json").read_text())
    assert rep["direction"] == way and f"mapping: coco-nuswide ({way})" in out.out
    pairs = {r["source"]: r["target"] for r in rep["per_class"]}
    want = COCO_TO_NUS if way.startswith("MS-COCO") else {v: k for k, v in COCO_TO_NUS.items()}
    assert pairs == {k: v for k, v in want.items() if v in target.classes} and len(pairs) == 5
    for r in rep["per_class"]:  # the very same images: the in-domain AP of that class
        assert r["ap"] == pytest.approx(own[r["source"]], abs=1e-6)
    skip = [line for line in out.err.splitlines() if "skipped" in line]
    assert len(skip) == 1 and "5 of 13 pairs" in skip[0] and "dog:dog (the target has no 'dog')" in skip[0]
