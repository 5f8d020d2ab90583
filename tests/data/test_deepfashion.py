"""DeepFashion's Category and Attribute Prediction Benchmark as downloaded, read through the CLI and the
registry: the K most frequent training attributes (250 by default), labels, partitions, masks, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cit_fast import checkpoint as ckpt
from cit_fast.cli import main as cli
from cit_fast.config import ConfigError, load_config
from cit_fast.data.build import build_datasets, load_split
from cit_fast.data.sources import registry

SIDE = 16
N_ATTR = 1000
# names as list_attr_cloth.txt spells them (Singh et al.'s pairs among them), then fillers with spaces
KNOWN = ["a-line", "abstract", "animal", "ankle", "batwing", "bell", "bodycon", "boyfriend", "chiffon", "crochet",
         "cut", "dark", "denim", "distressed", "embroidery", "fit", "flare", "floral", "french", "fringe", "jacquard",
         "knit", "lace", "light", "loose", "medium", "neckline", "print", "retro", "skinny", "striped", "studded",
         "suede", "sweet", "sweetheart", "tassel", "terry", "trapeze", "wash", "knit", "floral print"]
NAMES = KNOWN + [f"filler attribute {i}" for i in range(N_ATTR - len(KNOWN))]
UNIQUE = NAMES[:39] + ["knit (2)"] + NAMES[40:]  # the class names: a name listed twice is made unique
# partitions: 8 train, 2 val, 2 test images
PARTS = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
RELS = [f"img/{'Sheer_Pleated-Front_Blouse' if i % 2 else 'Floral_Maxi_Dress'}/img_{i + 1:08d}.jpg"
        for i in range(len(PARTS))]
BOX = (2, 3, 10, 12)  # x_1 y_1 x_2 y_2


def _presence() -> np.ndarray:
    """(12, 1000) bool. Training counts: print 8, floral 7, lace 6 (the top 3), 247 more columns 2..5
    (the top 250 with them), every other column 0 or 1."""
    rng = np.random.default_rng(0)
    p = np.zeros((len(PARTS), N_ATTR), bool)
    counts = np.zeros(N_ATTR, int)
    counts[rng.choice(np.arange(len(KNOWN), N_ATTR), 400, replace=False)] = 1
    top = [NAMES.index(n) for n in ("print", "floral", "lace")]
    known = [j for j in range(len(KNOWN)) if j not in top]  # Singh et al.'s pair names among the top 250
    rest = [j for j in range(len(KNOWN), N_ATTR)]
    more = np.r_[known, rng.choice(rest, 247 - len(known), replace=False)]
    counts[more] = 2 + np.arange(247) % 4
    counts[top] = (8, 7, 6)
    for j, c in enumerate(counts):
        p[rng.choice(8, c, replace=False), j] = True
    p[8:] = rng.random((4, N_ATTR)) < 0.3
    return p


PRESENCE = _presence()
TOP250 = sorted(np.argsort(-PRESENCE[:8].sum(0), kind="stable")[:250])


def write_deepfashion(root: Path, zero_one=False, bbox=True) -> Path:
    """The benchmark's layout: Anno_coarse/list_attr_cloth.txt, list_attr_img.txt (list_bbox.txt),
    Eval/list_eval_partition.txt, Img/img/<category>/img_XXXXXXXX.jpg."""
    anno = root / "Anno_coarse"
    anno.mkdir(parents=True)
    (root / "Eval").mkdir()
    (anno / "list_attr_cloth.txt").write_text(
        f"{N_ATTR}\nattribute_name  attribute_type\n" + "".join(f"{n:<31}{1 + j % 5}\n" for j, n in enumerate(NAMES)))
    neg = "0" if zero_one else "-1"
    (anno / "list_attr_img.txt").write_text(
        f"{len(RELS)}\nimage_name  attribute_labels\n" + "".join(
            f"{rel:<60}" + " ".join("1" if v else neg for v in row) + "\n" for rel, row in zip(RELS, PRESENCE)))
    (root / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(RELS)}\nimage_name  evaluation_status\n" + "".join(f"{r:<60}{s}\n" for r, s in zip(RELS, PARTS)))
    if bbox:
        (anno / "list_bbox.txt").write_text(f"{len(RELS)}\nimage_name  x_1  y_1  x_2  y_2\n" + "".join(
            f"{r:<60}{' '.join(str(v) for v in BOX)}\n" for r in RELS))
    rng = np.random.default_rng(1)
    for rel in RELS:
        (root / "Img" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(root / "Img" / rel)
    return root


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setenv("CIT_FAST_CACHE", str(tmp_path / "cache"))
    return write_deepfashion(tmp_path / "Category and Attribute Prediction Benchmark")


TINY = ["model.name=resnet8", "optim.epochs=1", "max_steps_per_epoch=1", "data.batch_size=4", "progress=false",
        "threads=1", "data.image_size=16", "intervention.plan=stratify_c"]


def test_read_through_the_cli_with_250_attributes(bench, tmp_path):
    out = tmp_path / "run"
    assert cli(["train", f"data.train={bench}", f"data.test={bench}", f"out_dir={out}", *TINY]) == 0
    assert "source: deepfashion" in (out / "config.yaml").read_text()
    ck = str(ckpt.find_latest(out / "checkpoints"))
    assert cli(["eval", "--checkpoint", ck, "--out", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())["test"]
    assert list(ev["per_class_ap"]) == [UNIQUE[j] for j in TOP250] and len(ev["per_class_ap"]) == 250
    assert ev["n"] == 2 and "top3_recall" in ev  # the test partition; DeepFashion's metric
    # Singh et al.'s 20 pairs resolve against the attribute names
    assert cli(["eval", "--checkpoint", ck, "--pairs", "deepfashion", "--out", str(tmp_path / "p.json")]) == 0
    pairs = json.loads((tmp_path / "p.json").read_text())["test"]["biased_pairs"]["pairs"]
    assert len(pairs) == 20 and (pairs[0]["b"], pairs[0]["c"]) == ("bell", "lace")


@pytest.mark.parametrize("zero_one", [False, True])
def test_labels_partitions_and_k(tmp_path, monkeypatch, zero_one):
    monkeypatch.setenv("CIT_FAST_CACHE", str(tmp_path / "cache"))
    root = write_deepfashion(tmp_path / "df", zero_one=zero_one)
    assert registry.infer_source(str(root)) == "deepfashion"
    cfg = load_config(None, [f"data.train={root}", f"data.test={root}", "data.deepfashion_attributes=3"])
    train, test = build_datasets(cfg.data)
    assert train.classes == test.classes == ["floral", "lace", "print"]  # the 3 most frequent, in file order
    assert len(train) == 8 and len(test) == 2 and test.images[0].endswith("Img/" + RELS[10])
    cols = [NAMES.index(n) for n in train.classes]
    np.testing.assert_array_equal(train.labels, PRESENCE[:8][:, cols])
    np.testing.assert_array_equal(test.labels, PRESENCE[10:][:, cols])
    alone = load_split(cfg.data, cfg.data.test, split="test")  # read alone (cross-eval's target): training's top K still
    assert alone.classes == train.classes and len(alone) == 2
    val = load_config(None, [f"data.train={root}", f"data.test={root}", "data.deepfashion_test_split=val"])
    _, v = build_datasets(val.data)
    assert len(v) == 2 and v.images[1].endswith(RELS[9])
    every = load_config(None, [f"data.train={root}", f"data.test={root}", "data.deepfashion_attributes=250"])
    tr, _ = build_datasets(every.data)
    assert tr.classes == [UNIQUE[j] for j in TOP250]
    assert set(TOP250) == set(np.nonzero(PRESENCE[:8].sum(0) >= 2)[0])  # the 250 with 2+ positives


def test_names_lower_case_stripped_and_unique(tmp_path, monkeypatch):
    monkeypatch.setenv("CIT_FAST_CACHE", str(tmp_path / "cache"))
    from cit_fast.data.sources.deepfashion import read_attr_cloth

    names = read_attr_cloth(write_deepfashion(tmp_path / "df") / "Anno_coarse" / "list_attr_cloth.txt")
    assert len(names) == N_ATTR and names[0] == "a-line" and names[40] == "floral print"
    assert names[21] == "knit" and names[39] == "knit (2)" and names[-1] == f"filler attribute {N_ATTR - 42}"


def test_masks_from_the_boxes_or_the_masks_tree(bench, tmp_path):
    cfg = load_config(None, [f"data.train={bench}", f"data.test={bench}"])
    train, _ = build_datasets(cfg.data)
    expect = np.zeros((SIDE, SIDE), bool)
    expect[BOX[1]:BOX[3], BOX[0]:BOX[2]] = True  # the clothes' box is the object
    np.testing.assert_array_equal(train.mask(3) > 127, expect)
    # `cit-fast masks ROOT/Img/img` (saliency) writes Img/img_masks/: it then is the masks
    assert cli(["masks", str(bench / "Img" / "img"), "--workers", "1"]) == 0
    train, test = build_datasets(cfg.data)
    assert train.masks[0] == str(bench / "Img" / "img_masks" / Path(RELS[0]).parent.name / "img_00000001.png")
    assert train.mask(0).shape == (SIDE, SIDE)


def test_no_masks_without_boxes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIT_FAST_CACHE", str(tmp_path / "cache"))
    root = write_deepfashion(tmp_path / "df", bbox=False)
    train, _ = build_datasets(load_config(None, [f"data.train={root}", f"data.test={root}"]).data)
    assert train.masks is None
    assert cli(["train", f"data.train={root}", f"data.test={root}", f"out_dir={tmp_path / 'run'}", *TINY]) == 2
    assert "needs object masks" in capsys.readouterr().err


# -- one-line errors, through the CLI --------------------------------------------------------------------

def _edit(path: Path, line: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


def _count(root):
    f = root / "Anno_coarse" / "list_attr_img.txt"
    _edit(f, 1, "13")
    return f"{f}, line 1: says 13 images, the file lists 12"


def _width(root):
    f = root / "Anno_coarse" / "list_attr_img.txt"
    _edit(f, 5, f.read_text().splitlines()[4].rsplit(" ", 1)[0])
    return f"{f}, line 5: 999 values, expected 1000"


def _value(root):
    f = root / "Anno_coarse" / "list_attr_img.txt"
    _edit(f, 4, f.read_text().splitlines()[3][:-2] + " 2")
    return f"{f}, line 4: value '2' is not -1, 0 or 1"


def _cloth(root):
    f = root / "Anno_coarse" / "list_attr_cloth.txt"
    _edit(f, 7, "lace")
    return f"{f}, line 7: 'lace', expected '<attribute name> <type>'"


def _partition(root):
    f = root / "Eval" / "list_eval_partition.txt"
    _edit(f, 3, f"{RELS[0]} training")
    return f"{f}, line 3: '{RELS[0]} training', expected '<image path> train|val|test'"


def _unlisted(root):
    f = root / "Eval" / "list_eval_partition.txt"
    _edit(f, 14, "img/Other/img_00000099.jpg test")
    return f"{f}, line 14: img/Other/img_00000099.jpg is not in {root / 'Anno_coarse' / 'list_attr_img.txt'}"


def _missing_image(root):
    (root / "Img" / RELS[2]).unlink()
    return f"{root / 'Img' / RELS[2]}: file not found"


@pytest.mark.parametrize("edit", [_count, _width, _value, _cloth, _partition, _unlisted, _missing_image])
def test_errors_are_one_line_naming_the_file(bench, tmp_path, capsys, edit):
    expected = edit(bench)
    assert cli(["train", f"data.train={bench}", f"data.test={bench}", f"out_dir={tmp_path / 'run'}", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_bad_k_and_a_subfolder(bench, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"data.deepfashion_attributes=1001: expected 0 \(all\) .. 1000"):
        build_datasets(load_config(None, [f"data.train={bench}", f"data.test={bench}",
                                          "data.deepfashion_attributes=1001"]).data)
    assert cli(["train", f"data.train={bench / 'Anno_coarse'}", f"out_dir={tmp_path / 'run'}", *TINY]) == 2
    assert f"a folder of a DeepFashion benchmark; name the benchmark's directory" in capsys.readouterr().err
