"""COCO-Stuff as downloaded: the label-map layout (2017 and COCO-2014 image names) and the COCO-format
JSON pair, read through the CLI and the registry: 171 classes, labels, thing masks, splits, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cit_fast import checkpoint as ckpt
from cit_fast.cli import main as cli
from cit_fast.config import load_config
from cit_fast.data.build import build_datasets
from cit_fast.data.sources import registry
from cit_fast.data.sources.cocostuff import KEPT_IDS, LABEL_NAMES, UNANNOTATED

SIDE = 16
CLASSES_171 = [LABEL_NAMES[i] for i in KEPT_IDS]
TINY = ["model.name=resnet8", "optim.epochs=1", "max_steps_per_epoch=1", "data.batch_size=4", "progress=false",
        "threads=1", "data.image_size=16", "intervention.plan=stratify_c"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIT_FAST_CACHE", str(tmp_path / "cache"))


def _map_of(ids, thing_block=True) -> np.ndarray:
    """A SIDE x SIDE map holding class ``ids`` (pixel = id - 1), the rest unlabeled (255)."""
    a = np.full(SIDE * SIDE, 255, np.uint8)
    a[:len(ids)] = np.asarray(ids) - 1
    return a.reshape(SIDE, SIDE)


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(path)


TRAIN_IDS = [list(KEPT_IDS[k::4]) for k in range(4)]  # 4 maps hold every kept class between them
VAL_IDS = [[1, 149, 157], [67, 47, 96, 182]]  # person, road, sky-other; dining table, cup, building-other, wood


def write_cocostuff(root: Path, labels_txt=None) -> Path:
    """The cocostuff README's layout: labels.txt, dataset/images/<split>2017/*.jpg, dataset/annotations/..."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text(labels_txt if labels_txt is not None else
                                     "".join(f"{i}: {n}\n" for i, n in enumerate(LABEL_NAMES)))
    for split, maps, first in (("train2017", TRAIN_IDS, 9), ("val2017", VAL_IDS, 139)):
        for k, ids in enumerate(maps):
            stem = f"{first + k:012d}"
            _image(root / "dataset" / "images" / split / f"{stem}.jpg", first + k)
            m = root / "dataset" / "annotations" / split / f"{stem}.png"
            m.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_map_of(ids)).save(m)
    return root


def _labels_of(s, row):
    return sorted(c for c, v in zip(s.classes, s.labels[row]) if v)


def test_label_maps_read_through_the_cli(tmp_path, capsys):
    root = write_cocostuff(tmp_path / "cocostuff")
    out = tmp_path / "run"
    assert cli(["train", f"data.train={root}", f"data.test={root}", f"out_dir={out}", *TINY]) == 0
    assert "source: cocostuff" in (out / "config.yaml").read_text()
    ck = str(ckpt.find_latest(out / "checkpoints"))
    assert cli(["eval", "--checkpoint", ck, "--out", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())["test"]
    assert list(ev["per_class_ap"]) == CLASSES_171 and ev["n"] == 2  # val2017's two maps
    assert {"dining table", "building-other", "ceiling-other", "hair drier"} <= set(ev["per_class_ap"])
    assert not {LABEL_NAMES[i] for i in UNANNOTATED} & set(ev["per_class_ap"])
    # Singh et al.'s 20 pairs resolve against the class names
    assert cli(["eval", "--checkpoint", ck, "--pairs", "coco-stuff", "--out", str(tmp_path / "p.json")]) == 0
    pairs = json.loads((tmp_path / "p.json").read_text())["test"]["biased_pairs"]["pairs"]
    assert len(pairs) == 20 and (pairs[0]["b"], pairs[0]["c"]) == ("cup", "dining table")
    assert pairs[0]["n_cooccur"] == 1  # val2017's second map holds both


def test_labels_masks_and_splits(tmp_path):
    root = write_cocostuff(tmp_path / "cocostuff")
    cfg = load_config(None, [f"data.train={root}", f"data.test={root}"])
    assert cfg.data.source == "cocostuff"
    train, test = build_datasets(cfg.data)
    assert train.classes == test.classes == CLASSES_171 and len(CLASSES_171) == 171
    assert len(train) == 4 and len(test) == 2 and train.images[0].endswith("train2017/000000000009.jpg")
    for row, ids in enumerate(TRAIN_IDS):
        assert _labels_of(train, row) == sorted(LABEL_NAMES[i] for i in ids)
    assert _labels_of(test, 0) == ["person", "road", "sky-other"]
    assert _labels_of(test, 1) == ["building-other", "cup", "dining table", "wood"]
    # the masks: thing pixels (ids 1-91) are object, stuff and unlabeled pixels context
    for s, maps in ((train, TRAIN_IDS), (test, VAL_IDS)):
        for row, ids in enumerate(maps):
            expect = np.zeros(SIDE * SIDE, bool)
            expect[:len(ids)] = np.asarray(ids) <= 91
            np.testing.assert_array_equal(s.mask(row).ravel() > 127, expect)
    # the second start reads the cached scan (masks and labels unchanged)
    again, _ = build_datasets(cfg.data)
    assert again.masks == train.masks
    np.testing.assert_array_equal(again.labels, train.labels)


def test_coco_2014_names_matched_to_the_2017_maps_by_id(tmp_path):
    root = write_cocostuff(tmp_path / "cocostuff")
    # COCO-2014 train images are in 2017's train maps, 2014 val images in either folder
    for split, ids in (("train2014", (9, 10, 11, 12, 139)), ("val2014", (140, 9))):
        for i in ids:
            _image(root / "dataset" / "images" / split / f"COCO_{split}_{i:012d}.jpg", i)
    images = root / "dataset" / "images"
    cfg = load_config(None, [f"data.train={images / 'train2014'}", f"data.test={images / 'val2014'}"])
    assert cfg.data.source == "cocostuff"
    train, test = build_datasets(cfg.data)
    assert len(train) == 5 and train.images[4].endswith("COCO_train2014_000000000139.jpg")
    assert _labels_of(train, 4) == ["person", "road", "sky-other"]  # val2017's map of image 139
    assert _labels_of(test, 0) == sorted(LABEL_NAMES[i] for i in TRAIN_IDS[0])  # image 9: train2017's map
    assert _labels_of(test, 1) == ["building-other", "cup", "dining table", "wood"]  # 140: val2017's
    (images / "val2014" / "COCO_val2014_000000000777.jpg").write_bytes((images / "val2014" /
                                                                        "COCO_val2014_000000000009.jpg").read_bytes())
    with pytest.raises(Exception, match=r"COCO_val2014_000000000777.jpg: no label map 000000000777.png"):
        build_datasets(cfg.data)


# -- the COCO-format pair -----------------------------------------------------------------------------

def write_stuff_json(root: Path, split="train2017", with_instances=True, n=4) -> Path:
    """stuff_<split>.json + instances_<split>.json (annotations/) and the images in <root>/<split>/."""
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    images = [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": SIDE, "width": SIDE} for i in range(n)]
    for im in images:
        _image(root / split / im["file_name"], im["id"])
    things = [i for i in KEPT_IDS if i <= 91]
    stuff = [i for i in KEPT_IDS if i > 91]
    inst_anns = [{"id": k + 1, "image_id": 1 + k % n, "category_id": c, "bbox": [k % 8, 0, 2, 3], "iscrowd": 0,
                  "area": 6} for k, c in enumerate(things)]
    stuff_anns = [{"id": 10000 + k, "image_id": 1 + k % n, "category_id": c, "segmentation": {}, "iscrowd": 0,
                   "bbox": [0, 0, SIDE, SIDE], "area": 1} for k, c in enumerate(stuff + [183])]
    cat = lambda i, sc: {"id": i, "name": LABEL_NAMES[i] if i < 183 else "other", "supercategory": sc}
    (ann_dir / f"stuff_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": stuff_anns, "categories": [cat(i, "stuff") for i in stuff + [183]]}))
    if with_instances:
        (ann_dir / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": inst_anns, "categories": [cat(i, "thing") for i in things]}))
    return ann_dir / f"stuff_{split}.json"


def test_stuff_json_merged_with_instances(tmp_path):
    pytest.importorskip("pycocotools")
    path = write_stuff_json(tmp_path / "coco")
    assert registry.infer_source(str(path)) == "cocostuff"
    cfg = load_config(None, [f"data.train={path}", f"data.test={path}"])
    train, _ = build_datasets(cfg.data)
    assert train.classes == CLASSES_171 and "other" not in train.classes and len(train) == 4
    assert train.images[0].endswith("train2017/000000000001.jpg")
    things = [i for i in KEPT_IDS if i <= 91]
    stuff = [i for i in KEPT_IDS if i > 91]
    expect = sorted([LABEL_NAMES[c] for k, c in enumerate(things) if k % 4 == 1]
                    + [LABEL_NAMES[c] for k, c in enumerate(stuff) if k % 4 == 1])
    assert _labels_of(train, 1) == expect
    # masks: the thing boxes only (the stuff annotations cover the whole image)
    expect_mask = np.zeros((SIDE, SIDE), bool)
    for k in range(0, len(things), 4):  # image 1's thing boxes [k % 8, 0, 2, 3]
        expect_mask[0:3, k % 8:k % 8 + 2] = True
    np.testing.assert_array_equal(train.mask(0) > 127, expect_mask)


def test_stuff_json_through_the_cli(tmp_path):
    pytest.importorskip("pycocotools")
    path = write_stuff_json(tmp_path / "coco")
    out = tmp_path / "run"
    assert cli(["train", f"data.train={path}", f"data.test={path}", f"out_dir={out}", *TINY]) == 0
    assert json.loads((out / "results.json").read_text())["task"] == "multilabel"


# -- one-line errors, through the CLI --------------------------------------------------------------------

def _map(root, split, stem):
    return root / "dataset" / "annotations" / split / f"{stem:012d}.png"


def _drop_image(root):
    (root / "dataset" / "images" / "train2017" / "000000000010.jpg").unlink()
    return "map {}: no image {}".format(_map(root, "train2017", 10),
                                        root / "dataset" / "images" / "train2017" / "000000000010.jpg")


def _bad_pixel(root):
    a = _map_of(TRAIN_IDS[1])
    a[15, 15] = 200
    Image.fromarray(a).save(_map(root, "train2017", 10))
    return f"map {_map(root, 'train2017', 10)}: pixel value 200 (1 pixels): expected 0-181 (class id - 1) or 255"


def _short_labels(root):
    (root / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(LABEL_NAMES[:182])))
    return f"{root / 'labels.txt'}: 182 lines, expected 183"


def _bad_label_line(root):
    lines = [f"{i}: {n}" for i, n in enumerate(LABEL_NAMES)]
    lines[5] = "6: airplane"
    (root / "labels.txt").write_text("\n".join(lines))
    return f"{root / 'labels.txt'}, line 6: '6: airplane', expected '5: <class name>'"


def _extra_image(root):
    _image(root / "dataset" / "images" / "train2017" / "000000000099.jpg", 99)
    return f"image {root / 'dataset' / 'images' / 'train2017' / '000000000099.jpg'}: no label map"


@pytest.mark.parametrize("edit", [_drop_image, _bad_pixel, _short_labels, _bad_label_line, _extra_image])
def test_errors_are_one_line_naming_the_file(tmp_path, capsys, edit):
    root = write_cocostuff(tmp_path / "cocostuff")
    expected = edit(root)
    assert cli(["train", f"data.train={root}", f"data.test={root}", f"out_dir={tmp_path / 'run'}", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_json_without_instances_and_the_dataset_folder(tmp_path, capsys):
    path = write_stuff_json(tmp_path / "coco", with_instances=False)
    assert cli(["train", f"data.train={path}", f"out_dir={tmp_path / 'run'}", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: no instances_train2017.json beside it" in err
    root = write_cocostuff(tmp_path / "cocostuff")
    assert cli(["train", f"data.train={root / 'dataset'}", f"out_dir={tmp_path / 'run'}", *TINY]) == 2
    assert f"COCO-Stuff's dataset/ folder; name the directory above it" in capsys.readouterr().err
