"""Tar shards + index (data/sources/shards.py): the round trip is byte-identical, pipelines and training read
shards exactly as they read the source (same samples, partners, crops, losses), resume works on shards, and a
truncated, corrupt or hostile shard is one error naming the shard and the member."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cit_fast.cli import main as cli
from cit_fast.config import load_config
from cit_fast.data.pipelines.contract import PipelineSpec
from cit_fast.data.pipelines.torch_pipeline import TorchPipeline
from cit_fast.data.sources import load_arrays, load_folder, load_manifest
from cit_fast.data.sources.members import ShardMember, member_bytes
from cit_fast.data.sources.records import DataError, SampleSet
from cit_fast.data.sources.shards import (INDEX, PARTS, ShardIndex, load_shards, scan_tar, verify_shards,
                                          write_shards)
from cit_fast.errors import UsageError
from tests.data.test_pipeline_contract import write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("src") / "ds", n_per_class=(5, 4, 6), size=(36, 44))


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sh") / "shards"
    write_shards(load_folder(str(folder)), out, samples_per_shard=4, source=str(folder), progress=False)
    return out


def _arrays(tmp_path, multilabel=False):
    rng = np.random.default_rng(3)
    n = 11
    labels = (rng.random((n, 4)) > 0.5).astype(np.float32) if multilabel else np.arange(n) % 3
    path = tmp_path / "a.npz"
    np.savez(path, images=rng.integers(0, 256, (n, 9, 7, 3), dtype=np.uint8),
             masks=(rng.random((n, 9, 7)) > 0.5).astype(np.uint8) * 255, labels=labels,
             strata=np.arange(n) % 2, bias=np.arange(n) % 3 - 1,
             **({"classes": np.array(list("abcd"))} if multilabel else {}))
    return path


def _same_columns(a: SampleSet, b: SampleSet):
    assert np.array_equal(a.labels, b.labels) and a.labels.dtype == b.labels.dtype
    assert np.array_equal(a.strata, b.strata) and np.array_equal(a.bias, b.bias)
    assert list(a.classes) == list(b.classes)


def test_folder_round_trip_is_byte_identical(folder, shards):
    src, got = load_folder(str(folder)), load_shards(shards)
    assert len(got) == len(src) == 15
    _same_columns(src, got)
    for i in range(len(src)):
        assert bytes(member_bytes(got.images[i])) == Path(src.images[i]).read_bytes()
        assert bytes(member_bytes(got.masks[i])) == Path(src.masks[i]).read_bytes()
        assert got.images[i].name.endswith(".jpg") and got.masks[i].name.endswith(".mask.png")
    assert verify_shards(shards, progress=False)[0].startswith("verified")
    # the WebDataset layout: key.jpg, key.mask.png, key.cls, members of one sample adjacent
    names = [n for n, _, _ in scan_tar(str(shards / "shard-000000.tar"))]
    assert names[:3] == ["000000000.jpg", "000000000.mask.png", "000000000.cls"]


@pytest.mark.parametrize("multilabel", [False, True])
def test_arrays_round_trip_pixels_labels_strata_bias(tmp_path, multilabel):
    src = load_arrays(str(_arrays(tmp_path, multilabel)))
    write_shards(src, tmp_path / "sh", shard_bytes=2048, progress=False)
    got = load_shards(tmp_path / "sh")
    _same_columns(src, got)
    assert len(ShardIndex.load(tmp_path / "sh" / INDEX).shards) > 1  # closed by size
    for i in range(len(src)):
        assert np.array_equal(got.image(i), src.images[i]) and np.array_equal(got.mask(i), src.masks[i])
    names = {n for k in range(2) for n, _, _ in scan_tar(str(tmp_path / "sh" / f"shard-00000{k}.tar"))}
    assert ("000000000.labels.json" if multilabel else "000000000.cls") in names
    assert "000000000.bias" in names and "000000000.stratum" in names
    verify_shards(tmp_path / "sh", progress=False)


def test_manifest_round_trip(folder, tmp_path):
    rows = [f"{p.relative_to(folder)},{Path('masks', *p.relative_to(folder).parts[1:]).with_suffix('.png')},"
            f"{p.parent.name}\n" for p in sorted((folder / "images").rglob("*.jpg"))]
    (folder / "m.csv").write_text("image,mask,label\n" + "".join(rows))
    src = load_manifest(str(folder / "m.csv"), str(folder))
    write_shards(src, tmp_path / "sh", samples_per_shard=6, progress=False)
    got = load_shards(tmp_path / "sh")
    _same_columns(src, got)
    assert all(bytes(member_bytes(got.images[i])) == Path(src.images[i]).read_bytes() for i in range(len(src)))


def test_interrupted_write_resumes_keeping_finished_shards(folder, shards, tmp_path):
    src = load_folder(str(folder))
    out = tmp_path / "sh"
    job = write_shards(src, out, samples_per_shard=4, source=str(folder), progress=False, stop_after_shards=2)
    assert not job.complete and (out / PARTS).is_dir() and not (out / INDEX).exists()
    with pytest.raises(DataError, match="unfinished"):
        load_shards(out)
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    (out / ".shard-000002.tar.abc.tmp").write_bytes(b"half")  # a run killed while writing shard 2
    job = write_shards(src, out, samples_per_shard=4, source=str(folder), progress=False)
    assert job.complete and job.kept == 2 and job.written == 2
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first  # not rewritten
    assert not list(out.glob(".*.tmp")) and not (out / PARTS).exists()
    for k in range(4):  # the same bytes as one uninterrupted run
        assert (out / f"shard-{k:06d}.tar").read_bytes() == (shards / f"shard-{k:06d}.tar").read_bytes()
    assert write_shards(src, out, samples_per_shard=4, source=str(folder), progress=False).written == 0
    with pytest.raises(UsageError, match="already holds a shard set"):
        write_shards(src.subset(range(3)), out, source="other", progress=False)


def _spec(**kw):
    return PipelineSpec(**{**dict(batch_size=4, plan="stratify_c", image_size=24, train_crop="random_resized",
                                  decode_reuse=True, seed=5), **kw})


@pytest.mark.parametrize("kind", ["torch", "dali"])
@pytest.mark.parametrize("world, rank, start", [(1, 0, 0), (2, 1, 1)])
def test_pipelines_read_shards_as_the_folder(folder, shards, kind, world, rank, start):
    """Same samples, partners, windows and pixels, on any rank of any world size, resumed mid-epoch."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali")
        from cit_fast.data.pipelines.dali_pipeline import DaliPipeline as P
    else:
        P = TorchPipeline
    spec = _spec(rank=rank, world_size=world, batch_size=2)
    a, b = P(load_folder(str(folder)), spec), P(load_shards(shards), spec)
    for p in (a, b):
        p.load_state_dict({"epoch": 1, "start_batch": start})
    ra, rb = list(a.raw_batches()), list(b.raw_batches())
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        for k in ("index", "partner", "window_i", "window_j", "obj", "mask", "ctx", "ctx_mask"):
            assert torch.equal(x[k], y[k]), k


SMALL = ["model.name=resnet8", "data.batch_size=4", "optim.epochs=2", "optim.milestones=[1]", "progress=false",
         "threads=1", "data.image_size=24", "data.train_crop=random_resized", "data.eval_resize=28",
         "intervention.plan=stratify_c", "data.decode_reuse=true"]


@pytest.mark.slow
def test_training_from_shards_equals_the_folder_and_resumes_mid_epoch(folder, shards, tmp_path):
    from cit_fast.train.loop import main

    def cfg(train, out, *extra):
        return load_config(None, [*SMALL, f"data.train={train}", f"data.test={train}", f"out_dir={out}", *extra])

    steps = lambda r: [x for e in r["history"] for x in e["step_losses"]]
    on_folder = main(cfg(folder, tmp_path / "f"))
    on_shards = main(cfg(shards, tmp_path / "s"))
    assert load_config(None, [f"data.train={shards}"]).data.source == "shards"
    assert steps(on_shards) == steps(on_folder) and len(steps(on_folder)) >= 4  # bitwise on the CPU
    assert on_shards["test_top1"] == on_folder["test_top1"]
    part = main(cfg(shards, tmp_path / "p"), stop_after_steps=3)  # stopped inside epoch 0
    assert part["stopped_at_step"] == 3
    resumed = main(cfg(shards, tmp_path / "p", "resume=auto"))
    assert steps(resumed)[-(len(steps(on_folder)) - 3):] == steps(on_folder)[3:]


def test_test_split_maps_labels_onto_training_classes(tmp_path):
    a = SampleSet(np.zeros((4, 2, 2, 3), np.uint8), None, np.array([0, 1, 0, 1]), ["dog", "cat"])
    write_shards(a, tmp_path / "t", progress=False)
    got = load_shards(tmp_path / "t", classes=["cat", "dog", "fox"])
    assert got.labels.tolist() == [1, 0, 1, 0] and got.classes == ["cat", "dog", "fox"] and got.masks is None
    with pytest.raises(DataError, match="not among the training classes"):
        load_shards(tmp_path / "t", classes=["cat"])


def _copy(shards: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    out.mkdir(parents=True)
    for f in shards.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def test_truncated_shard_is_one_error_naming_shard_and_member(shards, tmp_path):
    out = _copy(shards, tmp_path)
    f = out / "shard-000001.tar"
    f.write_bytes(f.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"shard .*shard-000001\.tar: truncated .*member 00000000\d\.") as e:
        load_shards(out)
    assert "\n" not in str(e.value)
    # the same shard truncated after the index was read: the read names it
    good = _copy(shards, tmp_path / "b")
    s = load_shards(good)
    f = good / "shard-000001.tar"
    f.write_bytes(f.read_bytes()[:3000])
    from cit_fast.data.sources import members
    members._MAPS.clear()
    with pytest.raises(DataError, match=r"shard-000001\.tar: image 000000007\.jpg .*truncated"):
        s.image(7)


def _rename_member(tar: Path, old: str, new: str) -> None:
    """Rewrite one member's header name in place (a valid checksum): what a hostile or mixed-up tar holds."""
    data = bytearray(tar.read_bytes())
    at = data.find(old.encode() + b"\0")
    assert at % 512 == 0
    data[at:at + 100] = new.encode().ljust(100, b"\0")
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 155] = f"{sum(data[at:at + 512]):06o}\0".encode()
    tar.write_bytes(bytes(data))


@pytest.mark.parametrize("bad", ["../000000004.jpg", "/etc/000000004.jpg"])
def test_member_named_with_dotdot_or_absolute_path_is_refused(shards, tmp_path, bad):
    out = _copy(shards, tmp_path)
    _rename_member(out / "shard-000001.tar", "000000004.jpg", bad)
    s = load_shards(out)
    with pytest.raises(DataError, match=r"shard-000001\.tar: member .* '\.\.' or an absolute path: refused"):
        s.image(4)
    with pytest.raises(DataError, match="refused"):
        list(scan_tar(str(out / "shard-000001.tar")))
    with pytest.raises(DataError, match="refused"):
        verify_shards(out, progress=False)
    assert not (tmp_path / "000000004.jpg").exists() and not Path(bad).exists()  # nothing extracted
    with pytest.raises(DataError, match="refused"):
        member_bytes(ShardMember(str(out / "shard-000000.tar"), bad, 512, 10))


def test_corrupt_header_and_corrupt_data_are_named(shards, tmp_path):
    out = _copy(shards, tmp_path)
    data = bytearray((out / "shard-000002.tar").read_bytes())
    s = load_shards(out)
    off = s.images[9].offset
    data[off - 512 + 5] ^= 0xFF  # the header of 000000009.jpg
    data[s.images[8].offset + 200] ^= 0xFF  # inside the JPEG data of 000000008.jpg
    (out / "shard-000002.tar").write_bytes(bytes(data))
    from cit_fast.data.sources import members
    members._MAPS.clear()
    with pytest.raises(DataError, match=r"shard-000002\.tar: member 000000009\.jpg: corrupt tar header"):
        s.image(9)
    fixed = data.copy()
    fixed[off - 512 + 5] ^= 0xFF
    (out / "shard-000002.tar").write_bytes(bytes(fixed))
    members._MAPS.clear()
    with pytest.raises(DataError, match=r"shard-000002\.tar: member 000000008\.jpg: CRC-32 differs"):
        verify_shards(out, progress=False)


def test_cli_shard_as_a_user(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["shard", str(folder), "out", "--samples-per-shard", "8", "--verify", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "15 samples in 2 shards" in text and "verified" in text and "data.train=out" in text
    assert cli(["shard", str(folder), "out", "--no-progress"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert cli(["shard", "missing", "out2"]) == 2
    assert "SRC missing not found" in capsys.readouterr().err
    assert cli(["shard", str(folder), "out2", "--shard-size", "lots"]) == 2
    assert "--shard-size lots" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert cli(["shard", str(folder), "full"]) == 2
    assert "holds other files" in capsys.readouterr().err and (tmp_path / "full" / "notes.txt").exists()
    assert cli(["shard", str(folder), "out", "--samples-per-shard", "5", "--overwrite", "--no-progress"]) == 0
    assert "15 samples in 3 shards" in capsys.readouterr().out
    meta = json.loads(bytes(np.load(tmp_path / "out" / INDEX)["meta"]).decode())
    assert meta["source"] == str(folder.resolve()) and meta["has_masks"]


# spawn: what a GPU run uses (CUDA is up by then); ~16 s of worker start-up on this machine
@pytest.mark.parametrize("start", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dali_reads_in_worker_processes_across_epochs(folder, shards, start, monkeypatch):
    """The parallel external source: each epoch's batches (the plan written to the shared feed before the
    epoch starts) are those of the torch pipeline, and the main process never maps a shard."""
    pytest.importorskip("nvidia.dali")
    from cit_fast.data.pipelines.dali_pipeline import DaliPipeline
    from cit_fast.data.sources import members

    spec = _spec(batch_size=3, num_workers=2)
    monkeypatch.setattr(DaliPipeline, "start_method", start)
    members._MAPS.clear()
    d, t = DaliPipeline(load_shards(shards), spec), TorchPipeline(load_folder(str(folder)), spec)
    for epoch in (0, 1, 3):
        d.set_epoch(epoch)
        t.set_epoch(epoch)
        rd, rt = list(d.raw_batches()), list(t.raw_batches())
        assert len(rd) == len(rt) >= 3
        for x, y in zip(rd, rt):
            for k in ("index", "partner", "window_i", "window_j"):
                assert torch.equal(x[k], y[k]), (epoch, k)
            assert (x["obj"].float() - y["obj"].float()).abs().mean() < 3  # DALI's decoder, PIL's resize
    assert d._pipe.py_num_workers == 2 and not members._MAPS  # read in DALI's workers only


def test_dali_names_a_truncated_shard(shards, tmp_path):
    pytest.importorskip("nvidia.dali")
    from cit_fast.data.pipelines.dali_pipeline import DaliPipeline
    from cit_fast.data.sources import members

    out = _copy(shards, tmp_path)
    s = load_shards(out)
    f = out / "shard-000003.tar"
    f.write_bytes(f.read_bytes()[:2000])
    members._MAPS.clear()
    with pytest.raises(DataError, match=r"shard-000003\.tar: image 0000000\d\d\.jpg .*truncated"):
        list(DaliPipeline(s, _spec(batch_size=4, plan="none", decode_reuse=False)).raw_batches())


def test_cli_shards_both_cifar_splits_and_trains_on_them(tmp_path, capsys):
    from tests.data.test_cifar import make_cifar

    tr, ltr, te, lte, coarse = make_cifar(tmp_path / "c100", "cifar100-python")
    d = tmp_path / "c100"
    assert cli(["shard", str(d), str(tmp_path / "tr"), "--no-progress", "data.strata=coarse"]) == 0
    assert cli(["shard", str(d), str(tmp_path / "te"), "--split", "test", "--no-progress"]) == 0
    train, test = load_shards(tmp_path / "tr"), load_shards(tmp_path / "te")
    assert np.array_equal(train.labels, ltr) and np.array_equal(train.strata, coarse[ltr])
    assert np.array_equal(test.labels, lte) and all(np.array_equal(test.image(i), te[i]) for i in range(len(te)))
    assert cli(["shard", str(d), str(tmp_path / "x"), "optim.lr=1"]) == 2
    assert "only data.* keys" in capsys.readouterr().err
