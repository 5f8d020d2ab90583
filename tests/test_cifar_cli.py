"""CIFAR directories through the config, training, `cit-fast masks` (sidecars) and `cit-fast table4 --images`."""
import numpy as np
import pytest

from cit_fast.cli import main as cli
from cit_fast.config import load_config
from cit_fast.data.build import build_datasets
from cit_fast.data.masks.arrays import generate_array_masks
from cit_fast.data.sources.records import DataError
from cit_fast.errors import ConfigError
from cit_fast.table4 import PAPER_TABLE4, format_paper_table, shortened_recipe
from tests.data.test_cifar import make_cifar


def square_masker(img):
    m = np.zeros(img.shape[:2], np.uint8)
    m[8:24, 8:24] = 255
    return m


@pytest.fixture
def c10(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py", "cifar10-python", per_class=2)
    return tmp_path / "cifar-10-batches-py"


def test_config_infers_cifar_from_the_directory(tmp_path, c10):
    cfg = load_config(None, [f"data.train={c10}", f"data.test={c10}"])
    assert cfg.data.source == "cifar"
    train, test = build_datasets(cfg.data)
    assert len(train) == 20 and len(test) == 10 and train.classes == test.classes
    with pytest.raises(ConfigError, match="holds the CIFAR directory .*cifar-10-batches-py"):
        load_config(None, [f"data.train={tmp_path}"])  # the parent the archive was unpacked into
    with pytest.raises(ConfigError, match="data.strata"):
        load_config(None, [f"data.train={c10}", "data.strata=fine"])


def test_coarse_strata_through_the_config(tmp_path):
    _, ltr, _, _, coarse = make_cifar(tmp_path / "c100", "cifar100-python", per_class=1)
    cfg = load_config(None, [f"data.train={tmp_path / 'c100'}", f"data.test={tmp_path / 'c100'}", "data.strata=coarse"])
    train, test = build_datasets(cfg.data)
    np.testing.assert_array_equal(train.strata, coarse[ltr])
    with pytest.raises(ConfigError, match="keep one"):
        load_config(None, [f"data.train={tmp_path / 'c100'}", "data.strata=coarse", "data.strata_file=x.yaml"])


@pytest.mark.parametrize("kind", ["cifar", "npz"])
def test_masks_sidecar_is_picked_up_by_training(tmp_path, c10, kind, capsys):
    from cit_fast.train.loop import main as train

    if kind == "cifar":
        src, overrides = c10, [f"data.train={c10}", f"data.test={c10}"]
    else:  # an .npz without masks
        from cit_fast.data.sources.cifar import load_cifar

        s = load_cifar(str(c10), "train")
        np.savez(tmp_path / "train.npz", images=s.images, labels=s.labels)
        src, overrides = tmp_path / "train.npz", [f"data.train={tmp_path / 'train.npz'}",
                                                 f"data.test={tmp_path / 'train.npz'}"]
    overrides += ["intervention.plan=stratify_c", "optim.epochs=1", "data.batch_size=8", "progress=false",
                  f"out_dir={tmp_path / 'run'}", "model.name=resnet20"]
    with pytest.raises(DataError, match="needs object masks.*cit-fast masks"):
        train(load_config(None, overrides))
    report = generate_array_masks(src, square_masker, progress=False)
    assert report.written == (30 if kind == "cifar" else 20) and report.montage.is_file()
    sidecars = [c10 / "masks_train.npz", c10 / "masks_test.npz"] if kind == "cifar" else [tmp_path / "train.masks.npz"]
    assert report.sidecars == sidecars and all(p.is_file() for p in sidecars)
    cfg = load_config(None, overrides)
    train_set, _ = build_datasets(cfg.data)
    assert train_set.masks is not None and (train_set.masks[:, 8:24, 8:24] == 255).all()
    assert train_set.masks.sum() == 255 * 16 * 16 * len(train_set)
    res = train(cfg)  # stratify_c now has its masks
    assert res["test_top1"] is not None
    # again: kept, unless --overwrite
    assert generate_array_masks(src, square_masker, progress=False).written == 0


def test_stale_sidecar_is_refused(tmp_path, c10):
    generate_array_masks(c10, square_masker, progress=False, montage=None)
    make_cifar(c10, "cifar10-python", per_class=2, seed=1)  # other images, same shapes
    cfg = load_config(None, [f"data.train={c10}", f"data.test={c10}"])
    with pytest.raises(DataError, match="masks_train.npz: computed on other images"):
        build_datasets(cfg.data)


def test_masks_cli_on_a_cifar_directory(tmp_path, capsys):
    make_cifar(tmp_path / "c", "cifar10-binary", per_class=1)
    assert cli(["masks", str(tmp_path / "c"), "--method", "spectral", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "20 masks written" in out and "coverage of the image over 20 masks" in out and "masks_montage.png" in out
    assert (tmp_path / "c" / "masks_train.npz").is_file() and (tmp_path / "c" / "masks_test.npz").is_file()
    assert cli(["masks", str(tmp_path / "c"), str(tmp_path / "out")]) == 2
    assert "OUT is for folder datasets" in capsys.readouterr().err


def test_paper_table_layout():
    acc = {f"cifar10/{p}-{v}": 50.0 for p in ("none", "stratify_b", "stratify_c") for v in ("V1", "V2", "V3", "V4")}
    acc["cifar10/none-original"] = 90.0
    acc["cifar10/stratify_b-V2"] = 51.5
    table = format_paper_table(acc, ["cifar10", "cifar100"])
    lines = table.splitlines()
    assert lines[0].startswith("| Training method | CIFAR-10 V1 |") and "CIFAR-100 V4 |" in lines[0]
    assert lines[2].startswith("| Baseline on Ori. | 90.00 (91.92) | 90.00 (91.92)") and "- | - | - | - |" in lines[2]
    assert "| 50.00 (0.7) |" in lines[3]  # baseline on Syn., V4, the paper's 0.7 beside ours
    assert lines[-1].startswith("| Stratify B - Stratify C\\|A | +0.00 (+0.06) | +1.50 (-0.02)")
    assert PAPER_TABLE4["cifar100"]["stratify_c"] == (98.15, 95.03, 74.83, 67.52)


def test_shortened_recipe_keeps_the_drops_at_half_and_three_quarters():
    assert shortened_recipe(160) == ["optim.epochs=160", "optim.milestones=[80,120]"]
    assert shortened_recipe(8) == ["optim.epochs=8", "optim.milestones=[4,6]"]
    assert shortened_recipe(1) == ["optim.epochs=1", "optim.milestones=[1,2]"]


def test_table4_images_estimate_and_mistakes(tmp_path, c10, capsys):
    rc = cli(["table4", "--images", f"cifar10:{c10}", "--out-dir", str(tmp_path / "t4"), "--estimate",
              "data.batch_size=4"])
    out = capsys.readouterr().out
    assert rc == 0 and "estimated time on CPU" in out and "160 epochs" in out and "--estimate: stopping" in out
    for v in ("original", "V1", "V2", "V3", "V4"):
        assert (tmp_path / "t4" / "cifar10" / "data" / v / "train.npz").is_file()
    assert cli(["table4", "--epochs", "5"]) == 2  # a flag for --images runs only: never silently ignored
    assert "--epochs: for Table IV from CIFAR images" in capsys.readouterr().err
    assert cli(["table4", "--images", f"cifar100:{c10}", "--estimate"]) == 2
    assert "holds cifar10, not cifar100" in capsys.readouterr().err
    assert cli(["table4", "--images", f"cifar10:{c10}", "--images", f"cifar10:{c10}", "--estimate"]) == 2
    assert "each dataset once" in capsys.readouterr().err


@pytest.mark.slow
def test_table4_images_runs_both_halves(tmp_path, capsys):
    make_cifar(tmp_path / "c10", "cifar10-python", per_class=2)
    make_cifar(tmp_path / "c100", "cifar100-python", per_class=1)
    rc = cli(["table4", "--images", f"cifar10:{tmp_path / 'c10'}", "--images", f"cifar100:{tmp_path / 'c100'}",
              "--epochs", "1", "--out-dir", str(tmp_path / "t4"), "--results-md", str(tmp_path / "R.md"),
              "data.batch_size=16", "eval_every=1"])
    out = capsys.readouterr().out
    assert rc == 0 and "26 runs" in out
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert len(table) == 6 and "(68.01)" in table[1] and "-" not in table[1].split("|")[2]
    assert "CIT Table IV from CIFAR-format images" in (tmp_path / "R.md").read_text()
