"""ImageNet's validation split as distributed (a flat folder + LOC_val_solution.csv or the devkit's
ground-truth list), read directly with the training folders' class order."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cit_fast.config import load_config
from cit_fast.data.build import build_datasets
from cit_fast.data.sources.imagenet_val import load_imagenet_val
from cit_fast.data.sources.records import DataError

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark (sorted)
DEVKIT_IDS = {"n01440764": 449, "n01443537": 450, "n01484850": 442}  # their ILSVRC2012_IDs
VAL_LABELS = ["n01484850", "n01440764", "n01443537", "n01440764", "n01484850"]


def _jpg(path: Path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), 40 * k % 256, np.uint8)).save(path, format="JPEG")


def _train(root: Path) -> Path:
    for c, w in enumerate(WNIDS):
        for k in range(2):
            _jpg(root / "train" / w / f"{w}_{k}.JPEG", c + k)
    return root / "train"


def _val(root: Path, labels=VAL_LABELS) -> Path:
    for k in range(len(labels)):
        _jpg(root / f"ILSVRC2012_val_{k + 1:08d}.JPEG", k)
    return root


def _loc_csv(path: Path, labels=VAL_LABELS) -> Path:
    rows = ["ImageId,PredictionString"] + [f"ILSVRC2012_val_{k + 1:08d},{w} 10 20 30 40 {w} 1 2 3 4 "
                                           for k, w in enumerate(labels)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _ground_truth(d: Path, labels=VAL_LABELS, table: str = "txt") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    gt = d / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{DEVKIT_IDS.get(w, 999)}\n" for w in labels))
    if table == "txt":
        (d / "ILSVRC2012_id_to_wnid.txt").write_text("".join(f"{i} {w}\n" for w, i in DEVKIT_IDS.items()))
    else:
        from scipy.io import savemat

        syn = np.zeros(len(DEVKIT_IDS), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
        for k, (w, i) in enumerate(DEVKIT_IDS.items()):
            syn[k] = (i, w, "a fish")
        savemat(d / "meta.mat", {"synsets": syn})
    return gt


def _want():
    return [WNIDS.index(w) for w in VAL_LABELS]


def test_kaggle_layout_loc_csv_found_above_the_folder(tmp_path):
    val = _val(tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    _loc_csv(tmp_path / "LOC_val_solution.csv")
    s = load_imagenet_val(str(val), WNIDS)
    assert [Path(p).name for p in s.images] == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 6)]
    assert s.labels.tolist() == _want() and s.classes == WNIDS and s.masks is None


@pytest.mark.parametrize("table", ["txt", "meta.mat"])
def test_devkit_ground_truth_with_its_id_table(tmp_path, table):
    val = _val(tmp_path / "val")
    _ground_truth(tmp_path / "ILSVRC2012_devkit_t12" / "data", table=table)
    s = load_imagenet_val(str(val), WNIDS)
    assert s.labels.tolist() == _want()


def test_through_the_config_with_training_class_folders(tmp_path):
    train = _train(tmp_path)
    val = _val(tmp_path / "val")
    labels = _loc_csv(tmp_path / "elsewhere.csv")
    cfg = load_config(None, [f"data.train={train}", f"data.test={val}", f"data.test_labels={labels}"])
    tr, te = build_datasets(cfg.data)
    assert tr.classes == te.classes == WNIDS
    assert te.labels.tolist() == _want()
    # class folders stay the labels; a label file beside them is a mistake
    cfg = load_config(None, [f"data.train={train}", f"data.test={train}", f"data.test_labels={labels}"])
    with pytest.raises(DataError, match="data.test_labels=.*has class folders"):
        build_datasets(cfg.data)


def test_unknown_class_is_one_error_naming_the_line(tmp_path):
    val = _val(tmp_path / "val")
    _loc_csv(tmp_path / "LOC_val_solution.csv", VAL_LABELS[:3] + ["n09999999"] + VAL_LABELS[4:])
    with pytest.raises(DataError, match=r"LOC_val_solution.csv, line 5: class n09999999 of ILSVRC2012_val_00000004 "
                                        r"is not among the 3 training classes"):
        load_imagenet_val(str(val), WNIDS)
    gt_dir = tmp_path / "kit"
    gt = _ground_truth(gt_dir, VAL_LABELS[:1] + ["n09999999"] + VAL_LABELS[2:])
    with pytest.raises(DataError, match=r"ground_truth.txt, line 2: ILSVRC2012_ID 999 is not in the ID table"):
        load_imagenet_val(str(val), WNIDS, labels=str(gt))
    (gt_dir / "ILSVRC2012_id_to_wnid.txt").write_text("449 n01440764\n450 n01443537\n442 n01484850\n999 n09999999\n")
    with pytest.raises(DataError, match=r"ground_truth.txt, line 2: class n09999999"):
        load_imagenet_val(str(val), WNIDS, labels=str(gt))


@pytest.mark.parametrize("mistake, match", [
    ("no_labels", "no ImageNet validation labels found"),
    ("unlabelled", r"ILSVRC2012_val_00000006.JPEG: no label in .*1 image"),
    ("missing_image", r"line 6: image ILSVRC2012_val_00000005 not found"),
    ("bad_header", r"line 1: expected the header 'ImageId,PredictionString'"),
    ("bad_row", r"line 3: 'tench' is not a WordNet id"),
    ("no_table", r"ID -> WordNet id table is missing"),
])
def test_layout_mistakes_are_one_clear_error(tmp_path, mistake, match):
    val = _val(tmp_path / "val")
    csv = tmp_path / "LOC_val_solution.csv"
    if mistake == "unlabelled":
        _jpg(val / "ILSVRC2012_val_00000006.JPEG", 1)
    if mistake in ("unlabelled", "missing_image"):
        _loc_csv(csv)
    if mistake == "missing_image":
        (val / "ILSVRC2012_val_00000005.JPEG").unlink()
    if mistake == "bad_header":
        csv.write_text("id,label\n")
    if mistake == "bad_row":
        _loc_csv(csv)
        csv.write_text(csv.read_text().replace("n01440764 10", "tench 10", 1))
    if mistake == "no_table":
        _ground_truth(tmp_path / "data")
        (tmp_path / "data" / "ILSVRC2012_id_to_wnid.txt").unlink()
    with pytest.raises(DataError, match=match):
        load_imagenet_val(str(val), WNIDS)


def test_masks_in_the_sibling_tree(tmp_path):
    val = _val(tmp_path / "val")
    _loc_csv(tmp_path / "LOC_val_solution.csv")
    (tmp_path / "val_masks").mkdir()
    for k in range(1, 5):
        Image.fromarray(np.full((12, 16), 255, np.uint8)).save(tmp_path / "val_masks" / f"ILSVRC2012_val_{k:08d}.png")
    with pytest.raises(DataError, match=r"ILSVRC2012_val_00000005.png: file not found"):
        load_imagenet_val(str(val), WNIDS)
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "val_masks" / "ILSVRC2012_val_00000005.png")
    s = load_imagenet_val(str(val), WNIDS)
    assert [Path(m).stem for m in s.masks] == [Path(p).stem for p in s.images]


def test_masks_command_writes_a_flat_folders_masks_where_the_source_reads_them(tmp_path):
    from cit_fast.data.masks.job import run_masks
    from cit_fast.data.sources import load_folder

    val = _val(tmp_path / "val")
    _loc_csv(tmp_path / "LOC_val_solution.csv")
    report = run_masks(str(val), masker=lambda img: np.full(img.shape[:2], 255, np.uint8), montage=None)
    assert report.written == len(VAL_LABELS)
    s = load_imagenet_val(str(val), WNIDS)
    assert s.masks == [str(tmp_path / "val_masks" / f"{Path(p).stem}.png") for p in s.images]
    with pytest.raises(DataError, match="expected class directories"):  # a class-folder source stays one
        load_folder(str(val))


def test_test_labels_belong_to_a_folder_source(tmp_path):
    labels = _loc_csv(tmp_path / "LOC_val_solution.csv")
    cfg = load_config(None, [f"data.test_labels={labels}"])
    with pytest.raises(DataError, match="data.test_labels is for a flat folder .* not data.source=synthetic"):
        build_datasets(cfg.data)
