"""The NUS-WIDE-style source: every label layout, test splits against training classes, errors."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cit_fast.data.build import build_datasets
from cit_fast.data.sources.nuswide import load_nuswide, save_nuswide
from cit_fast.data.sources.records import DataError, SampleSet
from cit_fast.config import load_config

CLASSES = ["sky", "water", "animal"]
LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1], [0, 0, 0]], np.float32)


def _images(d: Path, n=5, sub="images", size=(10, 12)):
    rng = np.random.default_rng(0)
    (d / sub / "a").mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(n):
        rel = f"a/{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / sub / rel)
        rels.append(rel)
    return rels


def _matrix_split(d: Path, labels=LABELS, classes=CLASSES, windows=False):
    rels = _images(d, len(labels))
    sep = "\\" if windows else "/"
    (d / "ImageList.txt").write_text("".join(r.replace("/", sep) + "\r\n" for r in rels))
    (d / "Concepts81.txt").write_text("\n".join(classes) + "\n")
    (d / "AllLabels81.txt").write_text("".join(" ".join(str(int(v)) for v in row) + "\n" for row in labels))
    return d


def test_matrix_layout_with_windows_paths(tmp_path):
    s = load_nuswide(str(_matrix_split(tmp_path, windows=True)))
    assert s.multilabel and s.classes == CLASSES and len(s) == 5 and s.masks is None
    np.testing.assert_array_equal(s.labels, LABELS)
    assert s.images[1].endswith("images/a/1.jpg") and s.image(1).shape == (10, 12, 3)
    assert (s.mask(0) == 255).all()  # no masks: every pixel is object
    # the image list itself may be given; rows may be comma-separated
    (tmp_path / "AllLabels81.txt").write_text("".join(",".join(str(int(v)) for v in r) + "\n" for r in LABELS))
    np.testing.assert_array_equal(load_nuswide(str(tmp_path / "ImageList.txt")).labels, LABELS)


def test_tags_layout_and_per_concept_folder(tmp_path):
    a = tmp_path / "tags"
    rels = _images(a)
    (a / "ImageList.txt").write_text("\n".join(rels) + "\n")
    (a / "tags.txt").write_text("sky\nsky, water\nanimal\nwater animal\n\n")  # last image: no tag
    s = load_nuswide(str(a))
    assert s.classes == sorted(CLASSES)
    np.testing.assert_array_equal(s.labels, LABELS[:, [2, 0, 1]])  # animal, sky, water
    b = tmp_path / "orig"  # the original Groundtruth/AllLabels/Labels_<concept>.txt files
    rels = _images(b)
    (b / "ImageList.txt").write_text("\n".join(rels))
    (b / "AllLabels").mkdir()
    for j, c in enumerate(CLASSES):
        (b / "AllLabels" / f"Labels_{c}.txt").write_text("".join(f"{int(v)}\n" for v in LABELS[:, j]))
    (b / "Concepts81.txt").write_text("\n".join(CLASSES))
    np.testing.assert_array_equal(load_nuswide(str(b)).labels, LABELS)


def test_test_split_against_training_classes_and_masks(tmp_path):
    d = _matrix_split(tmp_path / "t", LABELS[:, [2, 0]], ["animal", "sky"])
    (d / "masks" / "a").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((10, 12), 255 * (i % 2), np.uint8)).save(d / "masks" / "a" / f"{i}.png")
    s = load_nuswide(str(d), classes=CLASSES)
    assert s.classes == CLASSES
    np.testing.assert_array_equal(s.labels, LABELS * [1, 0, 1])  # water: absent from the split
    assert s.mask(1).max() == 255 and s.mask(0).max() == 0
    with pytest.raises(DataError, match=r"concept\(s\) \['animal'\] are not among the training classes"):
        load_nuswide(str(d), classes=["sky", "water"])


def test_registered_as_data_source(tmp_path):
    _matrix_split(tmp_path / "train")
    _matrix_split(tmp_path / "test", LABELS[:3])
    cfg = load_config(None, ["data.source=nuswide", f"data.train={tmp_path / 'train'}", f"data.test={tmp_path / 'test'}"])
    train, test = build_datasets(cfg.data)
    assert train.classes == test.classes == CLASSES and len(test) == 3


def test_save_nuswide_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    s = SampleSet(rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8), None, LABELS, CLASSES)
    for layout in ("matrix", "tags"):
        back = load_nuswide(str(save_nuswide(s, str(tmp_path / layout), layout)), classes=CLASSES)
        np.testing.assert_array_equal(back.labels, LABELS)
        np.testing.assert_array_equal(back.image(3), s.image(3))


def _err(tmp_path, edit):
    d = _matrix_split(tmp_path)
    edit(d)
    with pytest.raises(DataError) as e:
        load_nuswide(str(d))
    return str(e.value)


def test_count_mismatch_names_both_files(tmp_path):
    msg = _err(tmp_path, lambda d: (d / "AllLabels81.txt").write_text("1 0 0\n0 1 0\n"))
    assert "ImageList.txt lists 5 images" in msg and "AllLabels81.txt has 2 rows" in msg


def test_bad_row_names_file_and_line(tmp_path):
    msg = _err(tmp_path, lambda d: (d / "AllLabels81.txt").write_text("1 0 0\n1 0\n0 0 1\n0 1 1\n0 0 0\n"))
    assert "AllLabels81.txt, line 2: 2 values, expected 3 (Concepts81.txt lists 3 concepts)" in msg
    msg = _err(tmp_path / "b", lambda d: (d / "AllLabels81.txt").write_text("1 0 0\n1 0 0\n0 0 2\n0 1 1\n0 0 0\n"))
    assert "AllLabels81.txt, line 3: value '2' in column 3 is not 0 or 1" in msg


def test_unknown_tag_names_file_and_line(tmp_path):
    def edit(d):
        (d / "AllLabels81.txt").unlink()
        (d / "tags.txt").write_text("sky\nsky water\nanimal\nwater zebra\n\n")
    msg = _err(tmp_path, edit)
    assert "tags.txt, line 4: unknown tag 'zebra'" in msg


def test_unreadable_image_names_list_line(tmp_path):
    msg = _err(tmp_path, lambda d: (d / "images" / "a" / "2.jpg").write_bytes(b"not an image"))
    assert "ImageList.txt, line 3 (a/2.jpg)" in msg and "2.jpg: cannot read" in msg
    msg = _err(tmp_path / "b", lambda d: (d / "images" / "a" / "4.jpg").unlink())
    assert "ImageList.txt, line 5 (a/4.jpg)" in msg and "file not found" in msg


def test_missing_labels_and_list(tmp_path):
    assert "no labels: expected AllLabels81.txt" in _err(tmp_path, lambda d: (d / "AllLabels81.txt").unlink())
    with pytest.raises(DataError, match="no ImageList.txt"):
        load_nuswide(str(tmp_path / "images"))
    with pytest.raises(DataError, match="not found"):
        load_nuswide(str(tmp_path / "nowhere"))
