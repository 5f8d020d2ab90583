import json

import numpy as np
import pytest
from PIL import Image

from cit_fast.data.sources.records import DataError
from cit_fast.data.sources import apply_strata_file, load_arrays, load_folder, load_manifest
from tests.conftest import write_arrays


# -- arrays --------------------------------------------------------------------------------------

def test_arrays_loads_columns(arrays_file):
    s = load_arrays(str(arrays_file))
    assert len(s) == 12 and s.num_classes == 3 and s.images.shape == (12, 12, 10, 3)
    assert s.masks.dtype == np.uint8 and set(np.unique(s.masks)) <= {0, 255}
    assert (s.strata == s.labels).all() and (s.bias == -1).all()  # defaults: stratum = class, B unknown


def test_arrays_grey_and_float_masks(tmp_path):
    rng = np.random.default_rng(0)
    p = write_arrays(tmp_path / "g.npz", grey=True, masks=rng.random((12, 12, 10)).astype(np.float32))
    s = load_arrays(str(p))
    assert s.images.shape == (12, 12, 10, 3)
    assert (s.images[..., 0] == s.images[..., 2]).all()
    assert s.masks.dtype == np.uint8 and s.masks.max() <= 255


@pytest.mark.parametrize("extra, message", [
    (dict(masks=np.zeros((12, 11, 10), np.uint8)), "'masks' must have shape [12, 12, 10]"),
    (dict(labels=np.array([0, 1, 5] * 4), classes=np.array(["a", "b", "c"])),
     "label 5 of sample 2 is out of range [0, 2]"),
    (dict(labels=np.array([0, 2] * 6)), "class 1 has no samples"),
    (dict(labels=np.arange(11) % 3), "'labels' has 11 entries but 'images' has 12"),
    (dict(images=np.zeros((12, 12, 10, 3), np.float32)), "'images' must be uint8"),
    (dict(masks=np.full((12, 12, 10), 2.0)), "float masks must lie in [0, 1]"),
    (dict(strata=np.zeros(5, np.int64)), "'strata' must be an integer array of shape [12]"),
    (dict(labels=None), "missing array 'labels'"),
])
def test_arrays_bad_input_names_the_field(tmp_path, extra, message):
    p = write_arrays(tmp_path / "bad.npz", **extra)
    with pytest.raises(DataError) as e:
        load_arrays(str(p))
    assert message in str(e.value) and "bad.npz" in str(e.value)


def test_arrays_empty_class_against_training_classes(tmp_path):
    p = write_arrays(tmp_path / "t.npz", labels=np.zeros(12, np.int64))
    s = load_arrays(str(p), classes=["a", "b"])
    assert s.num_classes == 2  # a test split may lack a class


def test_arrays_missing_and_unreadable(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_arrays(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a readable .npz"):
        load_arrays(str(tmp_path / "junk.npz"))


# -- folder --------------------------------------------------------------------------------------

def test_folder_loads(folder_dataset):
    s = load_folder(str(folder_dataset))
    assert s.classes == ["cat", "dog", "fox"] and len(s) == 12
    assert s.image(0).shape == (20, 16, 3) and s.mask(0).shape == (20, 16)
    assert list(np.bincount(s.labels)) == [4, 4, 4]


def test_folder_missing_mask(folder_dataset):
    (folder_dataset / "masks" / "dog" / "dog2.png").unlink()
    with pytest.raises(DataError, match=r"mask .*dog2\.png: file not found"):
        load_folder(str(folder_dataset))


def test_folder_unreadable_image(folder_dataset):
    (folder_dataset / "images" / "cat" / "cat1.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"image .*cat1\.png: cannot read"):
        load_folder(str(folder_dataset))


def test_folder_mask_size_mismatch(folder_dataset):
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(folder_dataset / "masks" / "fox" / "fox0.png")
    with pytest.raises(DataError, match=r"fox0\.png: size 7x7 does not match image"):
        load_folder(str(folder_dataset))


def test_folder_empty_class(folder_dataset):
    (folder_dataset / "images" / "emu").mkdir()
    with pytest.raises(DataError, match="class 'emu' is empty"):
        load_folder(str(folder_dataset))


def test_folder_test_split_with_unknown_class(folder_dataset):
    with pytest.raises(DataError, match="not among the training classes"):
        load_folder(str(folder_dataset), classes=["cat", "dog"])


# -- manifest ------------------------------------------------------------------------------------

def test_manifest_csv_and_jsonl_agree(manifest_dataset):
    csv_path, jsonl_path = manifest_dataset
    a, b = load_manifest(str(csv_path)), load_manifest(str(jsonl_path))
    assert a.classes == b.classes == ["cat", "dog", "fox"]
    assert (a.labels == b.labels).all() and a.images == b.images
    assert a.image(5).shape == (20, 16, 3)


def test_manifest_optional_columns(folder_dataset, manifest_dataset):
    _, jsonl = manifest_dataset
    rows = [json.loads(l) for l in jsonl.read_text().splitlines()]
    for i, r in enumerate(rows):
        r["stratum"], r["bias"] = i % 2, i % 3
    p = folder_dataset / "sb.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = load_manifest(str(p))
    assert list(s.strata[:4]) == [0, 1, 0, 1] and list(s.bias[:4]) == [0, 1, 2, 0]


@pytest.mark.parametrize("column", ["stratum", "bias"])
def test_manifest_column_filled_for_some_rows_names_the_first_empty_row(folder_dataset, column):
    p = folder_dataset / "part.csv"
    p.write_text(f"image,mask,label,{column}\nimages/cat/cat1.png,masks/cat/cat1.png,0,1\n"
                 "images/dog/dog1.png,masks/dog/dog1.png,1,0\nimages/fox/fox1.png,masks/fox/fox1.png,2,\n")
    with pytest.raises(DataError, match=rf"part.csv, row 4: column '{column}' is filled for other rows but empty here"):
        load_manifest(str(p))


@pytest.mark.parametrize("line, message", [
    ("images/cat/cat0.png,masks/cat/cat0.png,7", "label 7 is out of range"),
    ("images/cat/cat0.png,masks/cat/nope.png,1", "nope.png: file not found"),
    ("images/cat/gone.png,masks/cat/cat0.png,1", "gone.png: file not found"),
])
def test_manifest_bad_rows(tmp_path, folder_dataset, line, message):
    p = folder_dataset / "bad.csv"
    p.write_text("image,mask,label\nimages/cat/cat1.png,masks/cat/cat1.png,0\n"
                 "images/dog/dog1.png,masks/dog/dog1.png,2\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        load_manifest(str(p), classes=["cat", "dog", "fox"])


def test_manifest_empty_class_when_classes_inferred(folder_dataset):
    p = folder_dataset / "gap.csv"
    p.write_text("image,mask,label\nimages/cat/cat1.png,masks/cat/cat1.png,0\n"
                 "images/dog/dog1.png,masks/dog/dog1.png,2\n")
    with pytest.raises(DataError, match=r"gap.csv, row 3: label 2 makes 3 classes, but label\(s\) 1 never occur"):
        load_manifest(str(p))


def test_manifest_missing_column_and_unknown_class(folder_dataset):
    p = folder_dataset / "nolabel.csv"
    p.write_text("image,mask\nimages/cat/cat1.png,masks/cat/cat1.png\n")
    with pytest.raises(DataError, match="missing column 'label'"):
        load_manifest(str(p))
    p2 = folder_dataset / "unknown.csv"
    p2.write_text("image,mask,label\nimages/cat/cat1.png,masks/cat/cat1.png,cat\n")
    with pytest.raises(DataError, match="row 2: label 'cat' is not a known class"):
        load_manifest(str(p2), classes=["dog"])


def test_strata_file(folder_dataset, tmp_path):
    s = load_folder(str(folder_dataset))
    f = tmp_path / "groups.yaml"
    f.write_text("cat: pet\ndog: pet\nfox: wild\n")
    s = apply_strata_file(s, str(f))
    assert (s.strata[s.labels == 0] == s.strata[s.labels == 1][0]).all()
    assert s.strata[s.labels == 2][0] != s.strata[s.labels == 0][0]
    f.write_text("cat: pet\nowl: wild\n")
    with pytest.raises(DataError, match=r"unknown class\(es\) \['owl'\]"):
        apply_strata_file(s, str(f))
