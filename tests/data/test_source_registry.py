"""The source registry: a source declared in one place is recognised, listed and loaded; config.py is untouched."""
from pathlib import Path

import numpy as np
import pytest

from cit_fast.cli import main as cli
from cit_fast.config import ConfigError, config_yaml, load_config
from cit_fast.data.build import build_datasets
from cit_fast.data.sources import registry
from cit_fast.data.sources.records import SampleSet

TOY_SIDE = 8


def _load_toy(d, path, split, classes):
    """A directory with toy.txt: one line per image, 'R G B label' (a solid TOY_SIDE x TOY_SIDE image)."""
    rows = [line.split() for line in (Path(path) / "toy.txt").read_text().splitlines() if line.strip()]
    images = np.stack([np.full((TOY_SIDE, TOY_SIDE, 3), [int(v) for v in r[:3]], np.uint8) for r in rows])
    names = sorted({r[3] for r in rows}) if classes is None else list(classes)
    labels = np.array([names.index(r[3]) for r in rows], np.int64)
    masks = np.zeros((len(rows), TOY_SIDE, TOY_SIDE), np.uint8)
    masks[:, 2:6, 2:6] = 255
    return SampleSet(images, masks, labels, names, name=f"toy {path}")


@pytest.fixture
def toy_source():
    src = registry.register(registry.Source(
        "toy", "a directory with toy.txt", lambda p: p.is_dir() and (p / "toy.txt").is_file(), _load_toy,
        priority=5))  # above the folder catch-all, which would otherwise take the directory
    yield src
    registry.unregister("toy")


def _toy_dir(root: Path, n=8) -> Path:
    root.mkdir(parents=True)
    (root / "toy.txt").write_text("".join(f"{30 * k} {200 - 20 * k} 9 {'ab'[k % 2]}\n" for k in range(n)))
    return root


def test_a_registered_source_is_recognised_listed_and_loaded(toy_source, tmp_path):
    d = _toy_dir(tmp_path / "toy")
    assert "toy" in registry.source_names()
    assert registry.infer_source(str(d)) == "toy"
    cfg = load_config(None, [f"data.train={d}", f"data.test={d}"])
    assert cfg.data.source == "toy"
    train, test = build_datasets(cfg.data)
    assert train.classes == test.classes == ["a", "b"] and len(train) == 8
    np.testing.assert_array_equal(train.labels, [0, 1] * 4)
    assert train.image(3)[0, 0].tolist() == [90, 140, 9]
    # named explicitly: accepted; the config lists it with what it recognises
    assert load_config(None, ["data.source=toy", f"data.train={d}"]).data.source == "toy"
    text = config_yaml()
    assert "| toy" in next(l for l in text.splitlines() if l.strip().startswith("source:"))
    assert "#   toy: a directory with toy.txt" in text


def test_a_registered_source_trains_through_the_cli(toy_source, tmp_path):
    d = _toy_dir(tmp_path / "toy")
    assert cli(["train", f"data.train={d}", f"data.test={d}", "model.name=resnet8", "optim.epochs=1",
                "max_steps_per_epoch=1", "data.batch_size=4", "progress=false", "threads=1",
                "intervention.plan=stratify_c", f"out_dir={tmp_path / 'run'}"]) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "source: toy" in saved


def test_without_the_registration_the_directory_is_a_folder_and_toy_is_no_choice(tmp_path):
    d = _toy_dir(tmp_path / "toy")
    assert registry.infer_source(str(d)) == "folder"
    with pytest.raises(ConfigError, match="^data.source: expected one of auto, synthetic, arrays, "):
        load_config(None, ["data.source=toy", f"data.train={d}"])


def test_a_name_is_registered_once(toy_source):
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(registry.Source("toy", "x", lambda p: False, _load_toy))
    with pytest.raises(ValueError, match="built in"):
        registry.register(registry.Source("synthetic", "x", lambda p: False, _load_toy))


@pytest.mark.parametrize("name, expected", [
    ("x.npz", "arrays"), ("x.csv", "manifest"), ("x.jsonl", "manifest"), ("x.json", "coco"),
    ("ImageList.txt", "nuswide")])
def test_files_are_recognised_by_their_source(tmp_path, name, expected):
    (tmp_path / name).write_text("")
    assert registry.infer_source(str(tmp_path / name)) == expected


def test_an_unknown_file_lists_what_every_source_recognises(tmp_path):
    (tmp_path / "x.bin").write_text("")
    with pytest.raises(ConfigError) as e:
        registry.infer_source(str(tmp_path / "x.bin"))
    msg = str(e.value)
    assert msg.startswith(f"data.train {tmp_path / 'x.bin'}: cannot tell its data.source from the name")
    for s in registry.sources():
        assert f"({s.name})" in msg
