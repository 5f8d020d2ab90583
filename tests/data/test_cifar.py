"""The cifar source on files written in each exact download layout, its restricted unpickler, and
the CIT benchmark (Table III) built from CIFAR images."""
import codecs
import os
import pickle

import numpy as np
import pytest

from cit_fast.data.sources.cifar import detect_cifar, load_cifar, python2_pickle, write_cifar
from cit_fast.data.sources.records import DataError
from cit_fast.data.sources.safe_pickle import safe_load

KINDS = ("cifar10-python", "cifar10-binary", "cifar100-python", "cifar100-binary")


def make_cifar(root, kind, per_class=2, seed=0):
    """A tiny CIFAR directory of layout `kind`: per_class training and 1 test image per class."""
    k = 100 if kind.startswith("cifar100") else 10
    rng = np.random.default_rng(seed)
    tr = rng.integers(0, 256, (per_class * k, 32, 32, 3), dtype=np.uint8)
    te = rng.integers(0, 256, (k, 32, 32, 3), dtype=np.uint8)
    ltr, lte = np.arange(per_class * k) % k, np.arange(k)[::-1].copy()
    coarse = (np.arange(k) * 7) % 20 if k == 100 else None
    write_cifar(root, kind, {"train": (tr, ltr), "test": (te, lte)}, [f"class{i}" for i in range(k)], coarse,
                [f"super{i}" for i in range(20)])
    return tr, ltr, te, lte, coarse


@pytest.mark.parametrize("kind", KINDS)
def test_reads_each_layout(tmp_path, kind):
    tr, ltr, te, lte, coarse = make_cifar(tmp_path / kind, kind)
    assert detect_cifar(tmp_path / kind).kind == kind
    train = load_cifar(str(tmp_path / kind), "train")
    test = load_cifar(str(tmp_path / kind), "test", classes=train.classes)
    assert train.images.shape == (len(ltr), 32, 32, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, tr)  # plane order R, G, B undone exactly
    np.testing.assert_array_equal(train.labels, ltr)
    np.testing.assert_array_equal(test.images, te)
    np.testing.assert_array_equal(test.labels, lte)
    assert train.classes[:2] == ["class0", "class1"] and len(train.classes) == len(set(ltr))
    np.testing.assert_array_equal(train.strata, ltr)  # default A: the class
    assert train.masks is None


@pytest.mark.parametrize("kind", ["cifar100-python", "cifar100-binary"])
def test_cifar100_coarse_strata(tmp_path, kind):
    _, ltr, _, lte, coarse = make_cifar(tmp_path, kind)
    train = load_cifar(str(tmp_path), "train", strata="coarse")
    test = load_cifar(str(tmp_path), "test", classes=train.classes, strata="coarse")
    np.testing.assert_array_equal(train.strata, coarse[ltr])
    np.testing.assert_array_equal(test.strata, coarse[lte])


def test_python_batches_are_python2_pickles(tmp_path):
    """The written batches are what the CIFAR site ships: protocol 2, bytes keys under encoding=bytes,
    numpy under numpy.core (the reader must take both numpy generations' module names)."""
    make_cifar(tmp_path, "cifar10-python")
    raw = (tmp_path / "data_batch_1").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"cnumpy.core.multiarray\n_reconstruct" in raw
    d = safe_load(tmp_path / "data_batch_1")
    assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}
    (tmp_path / "nb").write_bytes(raw.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n"))
    np.testing.assert_array_equal(safe_load(tmp_path / "nb")[b"data"], d[b"data"])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilOpen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("evil", [_Evil, _EvilOpen])
def test_pickled_callable_never_runs(tmp_path, evil, capsys):
    make_cifar(tmp_path, "cifar10-python")
    marker = tmp_path / "pwned"
    good = pickle.loads((tmp_path / "data_batch_3").read_bytes(), encoding="bytes")
    good[b"labels"] = evil(str(marker))  # the callable sits where the labels were
    (tmp_path / "data_batch_3").write_bytes(python2_pickle(good))  # as the real files: bytes are BINSTRINGs
    with pytest.raises(DataError) as e:
        load_cifar(str(tmp_path), "train")
    msg = str(e.value)
    assert "\n" not in msg and "data_batch_3" in msg and "refused" in msg
    assert ("posix.system" in msg or "os.system" in msg) if evil is _Evil else "io.open" in msg
    assert not marker.exists()


def repickle_python3(root, protocol=2):
    """Every pickle of a CIFAR python directory loaded and dumped again by Python 3's own pickle
    (``pickle.dump(protocol=2)``: its bytes keys and array buffers become ``_codecs.encode(str, 'latin1')``)."""
    for f in sorted(root.iterdir()):
        if f.suffix != ".npz" and not f.name.endswith(".png"):
            obj = pickle.loads(f.read_bytes(), encoding="bytes")
            with open(f, "wb") as fh:
                pickle.dump(obj, fh, protocol=protocol)


@pytest.mark.parametrize("kind", ["cifar10-python", "cifar100-python"])
def test_python3_protocol2_batches_read_through_the_cli(tmp_path, kind, capsys):
    from cit_fast.cli import main as cli

    root = tmp_path / kind
    tr, ltr, te, lte, _ = make_cifar(root, kind, per_class=1)
    repickle_python3(root)
    raw = (root / ("data_batch_1" if kind == "cifar10-python" else "train")).read_bytes()
    assert raw[:2] == b"\x80\x02" and b"c_codecs\nencode\n" in raw and b"latin1" in raw  # Python 3's protocol 2
    train = load_cifar(str(root), "train")
    np.testing.assert_array_equal(train.images, tr)
    np.testing.assert_array_equal(train.labels, ltr)
    np.testing.assert_array_equal(load_cifar(str(root), "test", classes=train.classes).images, te)
    assert cli(["masks", str(root), "--method", "spectral", "--no-progress"]) == 0
    n = len(ltr) + len(lte)
    assert f"{n} masks written" in capsys.readouterr().out and (root / "masks_train.npz").is_file()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_python3_pickles_of_every_protocol_up_to_4_read(tmp_path, protocol):
    """Protocols 0-2 write bytes as _codecs.encode calls (an empty bytes as bytes()), 3-4 as opcodes."""
    make_cifar(tmp_path, "cifar10-python", per_class=1)
    want = load_cifar(str(tmp_path), "train")
    repickle_python3(tmp_path, protocol)
    assert (b"c_codecs\nencode\n" in (tmp_path / "data_batch_1").read_bytes()) == (protocol < 3)
    got = load_cifar(str(tmp_path), "train")
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.labels, want.labels)
    (tmp_path / "e").write_bytes(pickle.dumps({"empty": b"", "arr": np.zeros(0, np.uint8)}, protocol=protocol))
    e = safe_load(tmp_path / "e")
    assert e["empty"] == b"" and e["arr"].shape == (0,)


class _Call:
    """A pickled call of ``fn(*args)``: what a crafted file can ask the unpickler to run."""
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.mark.parametrize("call, refused", [
    ((codecs.encode, "x" * 40, "zlib_codec"), "_codecs.encode(str, 'zlib_codec')"),  # a codec is a program
    ((codecs.encode, "eA==", "base64"), "_codecs.encode('eA==', 'base64')"),
    ((codecs.encode, "x", "utf-16"), "_codecs.encode('x', 'utf-16')"),
    ((codecs.encode, b"x", "latin1"), "_codecs.encode(bytes, 'latin1')"),  # latin-1 of a str only
    ((codecs.encode, "x"), "_codecs.encode('x')"),
    ((bytes, 10 ** 9), "bytes(int)"),  # b"" only: not a gigabyte of zeros
    ((os.system, "touch {marker}"), "system"),
])
def test_python3_protocol2_refuses_every_other_call(tmp_path, call, refused, capsys):
    from cit_fast.cli import main as cli

    root = tmp_path / "c"
    make_cifar(root, "cifar10-python", per_class=1)
    repickle_python3(root)
    marker = tmp_path / "pwned"
    fn, *args = call
    args = [a.format(marker=marker) if isinstance(a, str) else a for a in args]
    good = pickle.loads((root / "data_batch_2").read_bytes(), encoding="bytes")
    good[b"labels"] = _Call(fn, *args)
    with open(root / "data_batch_2", "wb") as fh:
        pickle.dump(good, fh, protocol=2)
    assert b"c_codecs\nencode\n" in (root / "data_batch_2").read_bytes()  # the admitted call is in it too
    assert cli(["masks", str(root), "--method", "spectral", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "data_batch_2: refused to unpickle " in err and refused in err, err
    assert "a pickle that names code to run" in err
    assert not marker.exists() and not (root / "masks_train.npz").exists()


def test_refuses_object_reconstruction_through_numpy(tmp_path):
    """An allowed global cannot be turned into a door: a REDUCE of numpy's _reconstruct with another
    class is refused at that class, and a global like builtins.eval never resolves."""
    p = tmp_path / "x"
    p.write_bytes(b"\x80\x02cbuiltins\neval\nq\x00X\x0b\x00\x00\x00__import__()\x85R.")
    with pytest.raises(DataError, match="refused to unpickle builtins.eval"):
        safe_load(p, "cifar batch")


@pytest.mark.parametrize("kind", ["cifar10-python", "cifar10-binary", "cifar100-python"])
def test_truncated_batch_is_one_line(tmp_path, kind):
    make_cifar(tmp_path, kind)
    f = {"cifar10-python": "data_batch_2", "cifar10-binary": "data_batch_2.bin", "cifar100-python": "train"}[kind]
    raw = (tmp_path / f).read_bytes()
    (tmp_path / f).write_bytes(raw[: len(raw) // 2 + 1])
    with pytest.raises(DataError) as e:
        load_cifar(str(tmp_path), "train")
    assert f in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind,meta", [("cifar10-python", "batches.meta"), ("cifar10-binary", "batches.meta.txt"),
                                       ("cifar100-python", "meta")])
def test_missing_meta_is_one_line(tmp_path, kind, meta):
    make_cifar(tmp_path, kind)
    (tmp_path / meta).unlink()
    with pytest.raises(DataError, match=f"missing {meta}"):
        load_cifar(str(tmp_path), "train")


def test_user_mistakes(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py", "cifar10-python")
    with pytest.raises(DataError, match="did you mean .*cifar-10-batches-py"):  # the parent directory
        load_cifar(str(tmp_path), "train")
    with pytest.raises(DataError, match="not found"):
        load_cifar(str(tmp_path / "nope"), "train")
    with pytest.raises(DataError, match="not a directory"):
        load_cifar(str(tmp_path / "cifar-10-batches-py" / "test_batch"), "train")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        load_cifar(str(tmp_path / "cifar-10-batches-py"), "train")
    # the test split still reads; coarse strata are CIFAR-100's
    load_cifar(str(tmp_path / "cifar-10-batches-py"), "test", classes=[f"class{i}" for i in range(10)])
    with pytest.raises(DataError, match="coarse.*CIFAR-100 only"):
        load_cifar(str(tmp_path / "cifar-10-batches-py"), "test", strata="coarse")
    # a batch that unpickles to something else
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(DataError, match="test_batch: expected a dict"):
        load_cifar(str(tmp_path / "cifar-10-batches-py"), "test")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="test_batch: not a readable pickle"):
        load_cifar(str(tmp_path / "cifar-10-batches-py"), "test")


def test_test_split_of_another_dataset(tmp_path):
    make_cifar(tmp_path / "a", "cifar10-python")
    make_cifar(tmp_path / "b", "cifar100-python")
    train = load_cifar(str(tmp_path / "a"), "train")
    with pytest.raises(DataError, match="not the training classes"):
        load_cifar(str(tmp_path / "b"), "test", classes=train.classes)


# ---------------------------------------------------------------------------------------------
# the CIT benchmark (Section V, Table III) from CIFAR images

from cit_fast.data.synthetic.benchmark import (BRIGHTNESS_VALUES, cit_assignment, load_source_images,  # noqa: E402
                                               make_cit_benchmark)

# Table III: (|A|, |B|) per version, CIFAR-10 and CIFAR-100
TABLE_III = {"cifar10": {"V1": (10, 1), "V2": (5, 2), "V3": (2, 5), "V4": (1, 10)},
             "cifar100": {"V1": (100, 1), "V2": (50, 2), "V3": (2, 50), "V4": (1, 100)}}


def border_hue_brightness(images, n_hues):
    """Per image: (hue index, brightness index) of its 4-pixel border, which must be one flat colour."""
    import colorsys

    top = images[:, :4].reshape(len(images), -1, 3)
    assert (top == top[:, :1]).all(), "the border is one flat colour per image"
    rgb = top[:, 0].astype(np.float64) / 255
    hsv = np.array([colorsys.rgb_to_hsv(*c) for c in rgb])
    hue = np.round(hsv[:, 0] * n_hues).astype(int) % n_hues
    assert np.abs(hsv[:, 0] * n_hues - np.round(hsv[:, 0] * n_hues)).max() < 0.1  # on one of the n_hues hues
    bright = np.abs(hsv[:, 2:3] - np.array(BRIGHTNESS_VALUES)[None]).argmin(1)
    assert np.abs(hsv[:, 2] - np.array(BRIGHTNESS_VALUES)[bright]).max() < 0.01
    return hue, bright


@pytest.fixture(scope="module", params=["cifar10", "cifar100"])
def cifar_source(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    make_cifar(root, "cifar10-python" if request.param == "cifar10" else "cifar100-python", per_class=2)
    return request.param, root, load_source_images(f"{request.param}:{root}")


@pytest.mark.parametrize("version", ["V1", "V2", "V3", "V4"])
def test_benchmark_from_cifar_follows_table_iii(cifar_source, version):
    name, root, src = cifar_source
    k = len(src.classes)
    n_hues = k // 2  # hue(5) for CIFAR-10, hue(50) for CIFAR-100; brig.(2) for both
    sets = make_cit_benchmark(version, None, None, seed=0, images=src)
    assign = cit_assignment(version, k, 0)
    na, nb = TABLE_III[name][version]
    assert len(set(assign.a_of_class)) == na and len(set(assign.b_of_class)) == nb
    for split in ("train", "test"):
        s = sets[split]
        x, y = src.splits[split]
        assert s.images.shape == (len(y), 40, 40, 3)
        np.testing.assert_array_equal(s.images[:, 4:36, 4:36], x)  # the original 32x32 image, untouched
        np.testing.assert_array_equal(s.labels, y)
        assert (s.masks[:, 4:36, 4:36] == 255).all() and (s.masks.sum((1, 2)) == 255 * 32 * 32).all()
        hue, bright = border_hue_brightness(s.images, n_hues)
        a, b = s.strata, s.bias
        if version == "V1":  # A: brightness & hue (one of 2 * n_hues colours per A)
            np.testing.assert_array_equal(hue, a % n_hues)
            np.testing.assert_array_equal(bright, a // n_hues)
        elif version == "V2":  # A: hue, B: brightness
            np.testing.assert_array_equal(hue, a)
            np.testing.assert_array_equal(bright, b)
        elif version == "V3":  # A: brightness, B: hue
            np.testing.assert_array_equal(bright, a)
            np.testing.assert_array_equal(hue, b)
        else:  # B: brightness & hue
            np.testing.assert_array_equal(hue, b % n_hues)
            np.testing.assert_array_equal(bright, b // n_hues)
        if split == "train":  # every colour of the version's table is used
            assert len(set(zip(hue, bright))) == {"V1": k, "V2": k, "V3": k, "V4": k}[version]
            assert len(set(hue)) == n_hues and len(set(bright)) == 2


def test_original_version_has_a_grey_border(cifar_source):
    _, _, src = cifar_source
    s = make_cit_benchmark("original", 1, 1, images=src)["train"]
    assert len(s) == len(src.classes)  # the first image of each class
    assert (s.images[:, :4] == 128).all() and (s.images[:, -4:] == 128).all()


def test_images_spec_mistakes(tmp_path):
    make_cifar(tmp_path / "c10", "cifar10-python")
    with pytest.raises(DataError, match="holds cifar10, not cifar100"):
        load_source_images(f"cifar100:{tmp_path / 'c10'}")
    with pytest.raises(DataError, match="expected cifar10:DIR or cifar100:DIR"):
        load_source_images(str(tmp_path / "c10"))
    with pytest.raises(DataError, match="not found"):
        load_source_images(f"cifar10:{tmp_path / 'nope'}")
