import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cit_fast.data.sources.records import DataError
from cit_fast.data.sources import load_arrays, load_manifest
from cit_fast.data.synthetic.benchmark import save_arrays
from cit_fast.data.synthetic.multilabel import make_biased_multilabel


def _write_images(root: Path, names, h=12, w=10):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / n)


# -- manifest with multi-hot labels ----------------------------------------------------------------

def test_manifest_multi_hot_names_csv_and_jsonl(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "m.csv").write_text("image,labels\nimg/a.png,dog;person\nimg/b.png,person\nimg/c.png,\n")
    s = load_manifest(str(tmp_path / "m.csv"))
    assert s.multilabel and s.classes == ["dog", "person"]
    np.testing.assert_array_equal(s.labels, [[1, 1], [0, 1], [0, 0]])  # an empty cell: no label
    assert s.labels.dtype == np.float32 and s.masks is None and (s.strata == 0).all()
    rows = [{"image": "img/a.png", "labels": ["dog", "person"]}, {"image": "img/b.png", "labels": "person"},
            {"image": "img/c.png", "labels": []}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.testing.assert_array_equal(load_manifest(str(tmp_path / "m.jsonl")).labels, s.labels)
    # a test split is read against the training classes
    (tmp_path / "t.csv").write_text("image,labels\nimg/a.png,person\n")
    t = load_manifest(str(tmp_path / "t.csv"), classes=["cat", "dog", "person"])
    np.testing.assert_array_equal(t.labels, [[0, 0, 1]])


def test_manifest_multi_hot_indices_and_masks(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png"])
    for n in ("a.png", "b.png"):
        Image.fromarray(np.full((12, 10), 255, np.uint8)).save(tmp_path / "img" / f"m_{n}")
    (tmp_path / "m.csv").write_text("image,mask,labels,stratum\nimg/a.png,img/m_a.png,0;3,1\n"
                                    "img/b.png,img/m_b.png,1;2,0\n")
    s = load_manifest(str(tmp_path / "m.csv"))
    assert s.classes == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(s.labels, [[1, 0, 0, 1], [0, 1, 1, 0]])
    assert s.strata.tolist() == [1, 0] and s.mask(0).shape == (12, 10)


@pytest.mark.parametrize("body, classes, message", [
    ("img/a.png,dog;cat\n", ["dog"], r"m.csv, row 2: label 'cat' is not a known class"),
    ("img/a.png,0;5\n", ["a", "b"], r"m.csv, row 2: label 5 is out of range \[0, 1\]"),
    (",dog\n", None, r"m.csv, row 2: empty 'image'"),
    ("img/missing.png,dog\n", None, r"missing.png: file not found"),
    ("img/a.png,dog,1\nimg/a.png,cat,\n", None, r"m.csv, row 3: column 'stratum' is filled for other rows but empty"),
])
def test_manifest_multi_hot_errors_name_file_and_row(tmp_path, body, classes, message):
    _write_images(tmp_path, ["a.png"])
    (tmp_path / "m.csv").write_text("image,labels" + (",stratum" if body.count(",") > 2 else "") + "\n" + body)
    with pytest.raises(DataError, match=message):
        load_manifest(str(tmp_path / "m.csv"), classes=classes)


def test_manifest_multi_hot_class_without_positives(tmp_path):
    _write_images(tmp_path, ["a.png"])
    (tmp_path / "m.csv").write_text("image,labels\nimg/a.png,0;2\n")
    with pytest.raises(DataError, match=r"class '1' \(index 1\) has no positive sample"):
        load_manifest(str(tmp_path / "m.csv"))
    (tmp_path / "e.csv").write_text("image,labels\nimg/a.png,\n")
    with pytest.raises(DataError, match="'labels' is empty in every row"):
        load_manifest(str(tmp_path / "e.csv"))


def test_single_label_manifest_unchanged(manifest_dataset):
    s = load_manifest(str(manifest_dataset[0]))
    assert not s.multilabel and s.classes == ["cat", "dog", "fox"]


# -- arrays with multi-hot labels ---------------------------------------------------------------------

def test_arrays_multi_hot_round_trip(tmp_path):
    d = make_biased_multilabel(n_train=40, n_test_free=10, pair_test=3, size=32, seed=1)
    save_arrays(d["train"], str(tmp_path / "train.npz"))
    s = load_arrays(str(tmp_path / "train.npz"))
    assert s.multilabel and s.classes == d["train"].classes
    np.testing.assert_array_equal(s.labels, d["train"].labels)
    np.savez(tmp_path / "bad.npz", images=s.images[:2], labels=np.array([[0, 2], [1, 0]]))
    with pytest.raises(DataError, match="bad.npz: 2-D 'labels' must be multi-hot"):
        load_arrays(str(tmp_path / "bad.npz"))


# -- COCO ----------------------------------------------------------------------------------------------

def coco_fixture(root: Path, extra_ann=None):
    """3 images (12 x 10), categories person (id 1), dog (id 18); polygons, an RLE and a box-only one."""
    _write_images(root, ["1.png", "2.png", "3.png"])
    rle = {"size": [12, 10], "counts": [24, 3, 9, 3, 81]}  # column-major runs: rows 0-2 of columns 2, 3
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 4, 1, 4, 5, 1, 5]], "bbox": [1, 1, 3, 4],
         "iscrowd": 0, "area": 12},
        {"id": 2, "image_id": 1, "category_id": 18, "segmentation": [[6, 6, 9, 6, 9, 10, 6, 10]],
         "bbox": [6, 6, 3, 4], "iscrowd": 0, "area": 12},
        {"id": 3, "image_id": 2, "category_id": 18, "segmentation": rle, "bbox": [2, 0, 2, 3], "iscrowd": 1,
         "area": 6},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 8, 2, 2], "iscrowd": 0, "area": 4},
    ] + (extra_ann or [])
    data = {"images": [{"id": i, "file_name": f"{i}.png", "height": 12, "width": 10} for i in (1, 2, 3)],
            "annotations": anns,
            "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}]}
    path = root / "annotations" / "instances_val.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_coco_labels_and_union_masks(tmp_path):
    pytest.importorskip("pycocotools")
    from cit_fast.data.sources.coco import load_coco

    ann = coco_fixture(tmp_path)
    s = load_coco(str(ann), root=str(tmp_path / "img"), mask_dir=str(tmp_path / "masks"))
    assert s.classes == ["person", "dog"]  # category id order
    np.testing.assert_array_equal(s.labels, [[1, 1], [1, 1], [0, 0]])  # image 3: no annotation
    m1 = s.mask(0) > 127
    assert m1[2:5, 2:4].all() and m1[7:10, 7:9].all()  # inside both polygons
    assert not m1[0, :].any() and not m1[:, 5].any()  # between and outside them
    m2 = s.mask(1) > 127
    assert m2[0:3, 2:4].all() and m2.sum() >= 6 + 4  # the RLE and the box-only annotation
    assert m2[8:10, 0:2].all()
    assert not s.mask(2).any()
    assert s.image(0).shape == (12, 10, 3)
    # masks are cached: a second load reads the same files
    assert load_coco(str(ann), root=str(tmp_path / "img"), mask_dir=str(tmp_path / "masks")).masks == s.masks


def test_coco_standard_layout_and_test_split(tmp_path):
    pytest.importorskip("pycocotools")
    from cit_fast.data.sources.coco import load_coco

    ann = coco_fixture(tmp_path)
    (tmp_path / "img").rename(tmp_path / "val")  # <root>/annotations/instances_val.json + <root>/val/
    s = load_coco(str(ann), mask_dir=str(tmp_path / "m"), classes=["cat", "dog", "person"])
    assert s.images[0].endswith("val/1.png")
    np.testing.assert_array_equal(s.labels[0], [0, 1, 1])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("categories"), "missing list 'categories'"),
    (lambda d: d["annotations"].append({"id": 9, "image_id": 77, "category_id": 1}), "annotation 9: image_id 77"),
    (lambda d: d["annotations"].append({"id": 8, "image_id": 1, "category_id": 5}), "annotation 8: category_id 5"),
    (lambda d: d["images"][0].pop("height"), r"images\[0\] has no 'height'"),
    (lambda d: d["images"][2].update(file_name="nope.png"), "nope.png: file not found"),
    (lambda d: d["annotations"].append({"id": 7, "image_id": 3, "category_id": 1}), "annotation 7: has neither"),
])
def test_coco_errors_name_file_and_field(tmp_path, mutate, message):
    pytest.importorskip("pycocotools")
    from cit_fast.data.sources.coco import load_coco

    ann = coco_fixture(tmp_path)
    data = json.loads(ann.read_text())
    mutate(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        load_coco(str(ann), root=str(tmp_path / "img"), mask_dir=str(tmp_path / "masks"))


def test_coco_not_json(tmp_path):
    pytest.importorskip("pycocotools")
    from cit_fast.data.sources.coco import load_coco

    p = tmp_path / "x.json"
    p.write_text("{oops")
    with pytest.raises(DataError, match="x.json: not valid JSON"):
        load_coco(str(p))


# -- the synthetic biased benchmark --------------------------------------------------------------------

def test_biased_benchmark_pairs_co_occur_in_train_only():
    d = make_biased_multilabel(n_train=300, n_test_free=60, pair_test=20, size=32, seed=3)
    tr, te = d["train"], d["test"]
    assert tr.images.shape == (300, 32, 32, 3) and tr.labels.shape == (300, 10)
    assert (tr.labels.sum(1) >= 1).all() and (tr.labels.sum(1) <= 3).all()
    for b, c in d["pairs"]:
        trb, trc = tr.labels[:, b] > 0, tr.labels[:, c] > 0
        assert trb.sum() > 10 and not (trb & ~trc).any()  # b never without c in training
        assert (trc & ~trb).sum() > 10  # c also alone
        teb, tec = te.labels[:, b] > 0, te.labels[:, c] > 0
        assert (teb & ~tec).sum() >= 20 and (teb & tec).sum() >= 20  # Exclusive and Co-occur test images
    # masks cover the objects: every scene has object pixels, and not everywhere
    frac = (tr.masks > 127).mean(axis=(1, 2))
    assert (frac > 0.02).all() and (frac < 0.9).all()
    again = make_biased_multilabel(n_train=300, n_test_free=60, pair_test=20, size=32, seed=3)
    assert np.array_equal(again["train"].images, tr.images)  # deterministic


def test_biased_benchmark_bad_pairs():
    with pytest.raises(ValueError, match="'unicorn' is not a shape class"):
        make_biased_multilabel(n_train=10, pairs=[("unicorn", "ring")])
    with pytest.raises(ValueError, match="no b may be another pair's c"):
        make_biased_multilabel(n_train=10, pairs=[("circle", "ring"), ("ring", "star")])
