"""Biased-pair presets (Singh et al.'s 20 per dataset), pairs files and hand-typed lists, resolved
against class lists; then through the CLI: eval --pairs and model.biased_pairs of feature splitting."""
import json

import numpy as np
import pytest

from cit_fast.data.pairs import presets, read_pairs_file, resolve_pairs
from cit_fast.errors import UsageError

# COCO-Stuff's labels.txt names (ids 1-182) without the 11 unannotated ids: Singh et al.'s 171 classes
COCO_STUFF_171 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood"]

# the 40 single-word attributes of Singh et al.'s DeepFashion pairs, among multi-word ones that contain them
DEEPFASHION_WORDS = sorted({w for pair in presets()["deepfashion"] for w in pair})
DEEPFASHION_LIKE = DEEPFASHION_WORDS + ["bell sleeve", "lace dress", "cut-out", "skinny jeans", "french terry top",
                                        "a-line", "floral"]


def test_coco_stuff_preset_resolves_all_20_against_the_171():
    assert len(COCO_STUFF_171) == 171 and len(set(COCO_STUFF_171)) == 171
    pairs = resolve_pairs("coco-stuff", COCO_STUFF_171)
    names = [(COCO_STUFF_171[b], COCO_STUFF_171[c]) for b, c in pairs]
    assert len(pairs) == 20 and names[0] == ("cup", "dining table") and names[-1] == ("baseball glove", "person")
    assert ("clock", "building-other") in names and ("toaster", "ceiling-other") in names
    assert ("hair drier", "towel") in names and ("sports ball", "person") in names
    assert len({b for b, _ in pairs}) == 20  # every b once


def test_deepfashion_preset_matches_whole_attribute_names_only(capsys):
    assert len(presets()["deepfashion"]) == 20 and len(DEEPFASHION_WORDS) == 35  # flare, crochet, chiffon, skinny, wash twice
    pairs = resolve_pairs("deepfashion", DEEPFASHION_LIKE)
    names = [(DEEPFASHION_LIKE[b], DEEPFASHION_LIKE[c]) for b, c in pairs]
    assert len(names) == 20 and names[0] == ("bell", "lace") and ("dark", "wash") in names
    assert capsys.readouterr().err == ""  # nothing skipped
    # without the single-word 'bell' and 'fit' the pairs that need them are skipped: 'bell sleeve' is not 'bell'
    classes = [c for c in DEEPFASHION_LIKE if c not in ("bell", "fit")]
    pairs = resolve_pairs("deepfashion", classes, "--pairs")
    assert len(pairs) == 18 and "bell sleeve" not in [classes[b] for b, _ in pairs]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["--pairs deepfashion: skipped 2 of 20 pairs whose classes the data lacks: bell:lace (no 'bell'), "
                   "flare:fit (no 'fit')"]


def test_a_preset_on_other_data_skips_in_one_line_or_fails_when_nothing_is_left(capsys):
    classes = ["person", "cup", "dining table", "car", "toaster", "unicorn"]
    pairs = resolve_pairs("coco-stuff", classes, "--pairs")
    assert pairs == [(1, 2)]
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "skipped 19 of 20 pairs" in err
    assert "wine glass:person (no 'wine glass')" in err and "toaster:ceiling-other (no 'ceiling-other')" in err
    assert "apple:fruit (no 'apple' or 'fruit')" in err
    with pytest.raises(UsageError, match=r"--pairs deepfashion: none of its 20 pairs has both classes among the "
                                         r"data's 6 classes \(person, cup"):
        resolve_pairs("deepfashion", classes, "--pairs")


@pytest.mark.parametrize("name, text", [
    ("pairs.txt", "# biased pairs\ncup:dining table\n\n  car : road  # a comment\n"),
    ("pairs.yaml", "cup: dining table\ncar: road\n"),
    ("pairs.yml", "pairs:\n  - [cup, dining table]\n  - car:road\n"),
    ("pairs.json", '[["cup", "dining table"], ["car", "road"]]'),
])
def test_pairs_files(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert resolve_pairs(str(tmp_path / name), COCO_STUFF_171) == [(COCO_STUFF_171.index("cup"),
                                                                     COCO_STUFF_171.index("dining table")),
                                                                    (2, COCO_STUFF_171.index("road"))]
    assert [p[:2] for p in read_pairs_file(tmp_path / name)] == [("cup", "dining table"), ("car", "road")]


@pytest.mark.parametrize("name, text, message", [
    ("p.txt", "cup:dining table\ncar road\n", r"pairs file .*p.txt, line 2: 'car road': expected 'b:c'"),
    ("p.txt", "cup:dining table\ncar:roads\n", r"pairs file .*p.txt, line 2: class 'roads' is not among the classes"),
    ("p.txt", "# nothing\n", r"pairs file .*p.txt: no pair"),
    ("p.yaml", "- [cup]\n", r"pairs file .*p.yaml, entry 1: expected 'b:c' or \[b, c\]"),
    ("p.yaml", "cup: [a, b]\n", r"pairs file .*p.yaml: pair \('cup', \['a', 'b'\]\): expected two class names"),
    ("p.yaml", "cup: dining table\nunicorn: person\n", r"pairs file .*p.yaml, pair unicorn:person: class 'unicorn'"),
    ("p.json", "{not json", r"pairs file .*p.json: not valid YAML/JSON"),
    ("p.txt", "car:car\n", r"line 1: b and c must differ"),
])
def test_bad_pairs_files_are_one_line_naming_the_file(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UsageError, match=message) as e:
        resolve_pairs(str(tmp_path / name), COCO_STUFF_171)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec, message", [
    ("cup:unicorn", r"--pairs: pair 'cup:unicorn': class 'unicorn' is not among the classes"),
    ("cup:dining table,sports ball:persons", "class 'persons' is not among"),
    ("coco", r"--pairs 'coco': expected 'b:c' pairs .* a preset \(coco-stuff, deepfashion\) or a pairs file"),
    ("missing/pairs.txt", "pairs file missing/pairs.txt: not found"),
    ("cup:cup", "b and c must differ"),
])
def test_hand_typed_unknown_names_stay_an_error(spec, message):
    with pytest.raises(UsageError, match=message):
        resolve_pairs(spec, COCO_STUFF_171, "--pairs")


def test_hand_typed_names_and_indices():
    assert resolve_pairs("cup:dining table, 0:road", COCO_STUFF_171) == [
        (COCO_STUFF_171.index("cup"), COCO_STUFF_171.index("dining table")), (0, COCO_STUFF_171.index("road"))]


# -- through the CLI -----------------------------------------------------------------------------

# the synthetic shapes renamed: four of the coco-stuff preset's pairs are among them, its other 16 are not
AS_COCO_STUFF = {"circle": "cup", "ring": "dining table", "square": "wine glass", "frame": "person",
                 "triangle": "car", "cross": "road", "star": "spoon", "crescent": "bowl", "bar": "toaster",
                 "ell": "clock"}


@pytest.fixture(scope="module")
def coco_named(tmp_path_factory):
    from cit_fast.data.sources.records import SampleSet
    from cit_fast.data.synthetic.benchmark import save_arrays
    from cit_fast.data.synthetic.multilabel import make_biased_multilabel

    d = tmp_path_factory.mktemp("pairs")
    sets = make_biased_multilabel(n_train=64, n_test_free=24, pair_test=4, size=32, seed=0)
    for split in ("train", "test"):
        s = sets[split]
        save_arrays(SampleSet(s.images, s.masks, s.labels, [AS_COCO_STUFF[c] for c in s.classes], s.strata, s.bias, split),
                    str(d / f"{split}.npz"))
    return d


def test_feature_split_and_eval_take_the_preset(coco_named, tmp_path, capsys):
    from cit_fast import checkpoint as ckpt
    from cit_fast.cli import main

    d = coco_named
    assert main(["train", f"data.train={d / 'train.npz'}", f"data.test={d / 'test.npz'}", "model.name=decoder_resnet8",
                 "model.feature_split=true", "model.biased_pairs=coco-stuff", "model.embed_dim=16",
                 "model.num_heads=2", "data.batch_size=16", "optim.epochs=1", "max_steps_per_epoch=2", "threads=1",
                 "progress=false", f"out_dir={tmp_path / 'run'}", "optim.optimizer=adamw", "optim.lr=0.001"]) == 0
    cap = capsys.readouterr()
    split_line = next(line for line in cap.out.splitlines() if line.startswith("feature split:"))
    assert [p.split(" (")[0] for p in split_line[len("feature split: "):].split("), ")] == [
        "cup:dining table", "wine glass:person", "car:road", "spoon:bowl"]
    skip = [line for line in cap.err.splitlines() if "skipped" in line]
    assert len(skip) == 1 and skip[0].startswith("model.biased_pairs coco-stuff: skipped 16 of 20 pairs")

    ck = str(ckpt.find_latest(tmp_path / "run" / "checkpoints"))
    (tmp_path / "pairs.txt").write_text("cup:dining table\ncar:road\n")
    for spec, want in (("coco-stuff", ["cup", "wine glass", "car", "spoon"]), (str(tmp_path / "pairs.txt"), ["cup", "car"])):
        assert main(["eval", "--checkpoint", ck, "--pairs", spec, "--out", str(tmp_path / "e.json")]) == 0
        bp = json.loads((tmp_path / "e.json").read_text())["test"]["biased_pairs"]
        assert [p["b"] for p in bp["pairs"]] == want
        assert bp["exclusive"] == pytest.approx(np.nanmean([p["exclusive"] for p in bp["pairs"]]))
    err = capsys.readouterr().err
    assert err.count("skipped 16 of 20") == 1 and "--pairs coco-stuff: skipped" in err  # the preset, not the file
    assert main(["eval", "--checkpoint", ck, "--pairs", "cup:dining tables"]) == 2
    assert "class 'dining tables' is not among the classes" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", ck, "--pairs", "deepfashion"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--pairs deepfashion: none of its 20 pairs has both classes" in err and "\n" not in err
