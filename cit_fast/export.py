"""``cit-fast export RUN --format F``: a trained model out of the project, in a format other tools read.

Formats and what they hold:

- ``torchvision``: a plain state dict that ``torchvision.models.resnet18/34/50(num_classes=N)`` loads
  as it is (``stem.0/1`` renamed back to ``conv1``/``bn1``); single-branch ImageNet ResNets only
  (``resnet*``, and the Only-Obj / Only-Bg ablations, which are such a ResNet fed one image).
- ``safetensors``: every weight under the project's names, the run's facts in its metadata; any model.
- ``onnx``: the forward pass, dynamic batch and image size; a double-branch model takes two inputs
  (``content``, ``context``). Checked with onnxruntime when it is installed.
- ``torchscript``: ``torch.jit.trace`` of the forward pass (``torch.jit.load`` reads it without cit_fast).

Every export is read back by its consumer and compared with the checkpoint's model on a random batch
before the command reports success; a JSON sidecar (``<out>.json``) holds the classes and the
preprocessing (mean, std, sizes), and a short usage snippet is printed. Files are written atomically.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .errors import UsageError
from .utils import atomic_path, atomic_write_json

# torch and the model code are imported inside the functions: the CLI's parser reads FORMATS
if TYPE_CHECKING:
    import torch

    from .eval.run import Run

FORMATS = ("torchvision", "safetensors", "onnx", "torchscript")
SUFFIX = {"torchvision": ".pth", "safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")
TOLERANCE = 1e-4  # max |logit difference| accepted, relative to the largest |logit| (at least 1)


@dataclass
class Export:
    path: Path
    sidecar: Path
    fmt: str
    max_diff: float  # read back by its consumer vs the checkpoint's model, same random batch
    scale: float  # the largest |logit| of that batch
    checked_with: str
    snippet: str

    def lines(self) -> List[str]:
        return [f"wrote {self.path} ({self.fmt}) and {self.sidecar.name}",
                f"checked with {self.checked_with}: max |logit difference| {self.max_diff:.2e} vs the checkpoint's "
                f"model (logits up to {self.scale:.3g})",
                "usage:", *("    " + ln for ln in self.snippet.splitlines())]


# -- what the run's model is -----------------------------------------------------------------------
def _torchvision_net(run: Run) -> Tuple[Optional[Any], str]:
    """(the torchvision-shaped ResNet inside the model, its arch) or (None, why not)."""
    from .models.double_branch import SingleInputOfTwo
    from .models.resnet_imagenet import TorchvisionResNet

    m = run.model
    name = run.cfg.model.name
    if isinstance(m, SingleInputOfTwo):
        m = m.net
    if isinstance(m, TorchvisionResNet):
        arch = name.split("_")[-1]
        if arch in TORCHVISION_ARCHS:
            return m, arch
    if run.task == "double" and not isinstance(run.model, SingleInputOfTwo):
        return None, f"{name} takes two inputs (content, context) and torchvision's ResNet one"
    if run.task == "multilabel" and not isinstance(m, TorchvisionResNet):
        return None, f"{name} is a multi-label model with its own heads, not a torchvision ResNet"
    return None, f"{name} is not one of torchvision's ResNet-18/34/50 (a CIFAR ResNet or another architecture)"


def _inputs_of(run: Run) -> Tuple[str, ...]:
    from .models.double_branch import SingleInputOfTwo

    if run.task == "double" and not isinstance(run.model, SingleInputOfTwo):
        return ("content", "context")
    return ("image",)


def _exportable(run: Run):
    """The module whose forward the traced formats record (inputs as in ``_inputs_of``)."""
    from .models.double_branch import DoubleBranchResNet, SingleInputOfTwo

    if isinstance(run.model, SingleInputOfTwo):  # Only Obj / Only Bg: the ResNet inside, fed its one image
        return run.model.net
    if isinstance(run.model, DoubleBranchResNet) and run.model.shared_low:
        return _SplitByHalves(run.model)
    return run.model


def _SplitByHalves(model):
    """A shared-trunk double-branch model whose batch split survives tracing.

    Its forward splits the shared low blocks' output at ``len(content)``, a Python int that a trace
    records as a constant: the export would then accept only the traced batch size. Both halves are
    always equally long, so ``chunk(2)`` says the same without a constant (the read-back check
    compares with the model itself, on another batch size).
    """
    import torch
    import torch.nn as nn

    class SplitByHalves(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, content, context):
            m = self.m
            low_c, low_x = m.low_content(torch.cat([content, context])).chunk(2)
            return m.forward_head((m.high_content(low_c), m.high_context(low_x)))

    return SplitByHalves(model)


def _image_size(run: Run) -> int:
    d = run.cfg.data
    return d.image_size or (32 if run.cfg.model.name.split("_")[-1] in ("resnet8", "resnet20", "resnet32", "resnet56")
                            else 224)


def _facts(run: Run, fmt: str) -> Dict[str, Any]:
    d = run.cfg.data
    from .models.double_branch import SingleInputOfTwo

    facts = {"format": fmt, "model": run.cfg.model.name, "task": run.task, "inputs": list(_inputs_of(run)),
             "num_classes": _num_classes(run), "classes": list(run.classes) if run.classes else None,
             "image_size": _image_size(run), "eval_resize": d.eval_resize,
             "mean": list(d.mean), "std": list(d.std), "pixels": "RGB in [0, 1], then (x - mean) / std",
             "checkpoint": str(run.checkpoint), "epoch": run.epoch}
    if isinstance(run.model, SingleInputOfTwo):
        facts["input_is"] = ("the object-only image (mask * image, background at zero pixels)"
                             if run.model.which == "content" else
                             "the background-only image ((1 - mask) * image, object at zero pixels)")
    return facts


def _num_classes(run: Run) -> int:
    import torch

    with torch.no_grad():
        return int(_reference(run, 1)[1].shape[-1])


def _reference(run: Run, batch: int = 2, seed: int = 0):
    """A random batch in the model's input layout and the checkpoint model's logits on it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    s = _image_size(run)
    xs = tuple(torch.randn(batch, 3, s, s, generator=g) for _ in _inputs_of(run))
    model = _exportable(run).cpu().eval()
    with torch.no_grad():
        out = model(*xs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    return xs, out


def _check_batch(run: Run):
    """The batch an export is checked on: 3 samples, where it was traced with 2."""
    return _reference(run, batch=3, seed=1)


def _logits(out) -> torch.Tensor:
    import torch

    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    return torch.as_tensor(out)


# -- the formats -------------------------------------------------------------------------------------
def _write_torchvision(run: Run, path: Path) -> Tuple[float, str]:
    import torch

    import torchvision

    net, arch = _torchvision_net(run)
    if net is None:
        raise UsageError(f"--format torchvision: {arch}; use --format safetensors, onnx or torchscript")
    state = {}
    for k, v in net.state_dict().items():
        if k.startswith("stem.0."):
            k = "conv1." + k[len("stem.0."):]
        elif k.startswith("stem.1."):
            k = "bn1." + k[len("stem.1."):]
        state[k] = v.detach().cpu().clone()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    xs, want = _check_batch(run)
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=want.shape[-1]).eval()
    tv.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict: every key
    with torch.no_grad():
        got = tv(*xs)
    return float((got - want).abs().max()), f"torchvision.models.{arch}"


def _write_safetensors(run: Run, path: Path) -> Tuple[float, str]:
    import torch

    from safetensors.torch import load_file, save_file

    state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    # tied weights (a shared low trunk) are one tensor under two names: safetensors stores each once
    seen: Dict[int, str] = {}
    for k, v in list(state.items()):
        ptr = v.data_ptr() if v.numel() else -id(v)
        if ptr in seen and state[seen[ptr]].shape == v.shape:
            state[k] = v.clone()  # stored twice; loading fills the one parameter from either
        else:
            seen[ptr] = k
    meta = {k: json.dumps(v) for k, v in _facts(run, "safetensors").items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    loaded = load_file(str(path))
    from .models import build_model

    fresh = build_model(_fresh_model_cfg(run), _num_classes(run)).eval()
    fresh.load_state_dict(loaded)
    xs, want = _check_batch(run)
    with torch.no_grad():
        got = _logits((fresh.net if hasattr(fresh, "which") else fresh)(*xs))
    return float((got - want).abs().max()), "safetensors.torch.load_file + cit_fast's model"


def _fresh_model_cfg(run: Run):
    import copy

    m = copy.deepcopy(run.cfg.model)
    m.init = m.init_single = ""
    return m


def _write_torchscript(run: Run, path: Path) -> Tuple[float, str]:
    import torch

    xs, _ = _reference(run)
    model = _exportable(run).cpu().eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
            traced = torch.jit.trace(model, xs, check_trace=False, strict=False)
    except Exception as e:
        raise UsageError(f"--format torchscript: {run.cfg.model.name} could not be traced ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); use --format safetensors") from None
    extra = {"cit_fast.json": json.dumps(_facts(run, "torchscript"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still read everywhere
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files=extra)
        loaded = torch.jit.load(str(path), map_location="cpu")
    ys, want = _check_batch(run)  # another batch size than the traced one
    with torch.no_grad():
        got = _logits(loaded(*ys))
    return float((got - want).abs().max()), "torch.jit.load"


def _write_onnx(run: Run, path: Path) -> Tuple[float, str]:
    import torch

    try:
        import onnx
    except ImportError:
        raise UsageError("--format onnx needs the onnx package: pip install onnx onnxruntime "
                         "(or the [export] extra of cit_fast)") from None
    xs, _ = _reference(run)
    model = _exportable(run).cpu().eval()
    names = list(_inputs_of(run))
    dyn = {n: {0: "batch", 2: "height", 3: "width"} for n in names}
    dyn["logits"] = {0: "batch"}
    with tempfile.TemporaryDirectory() as td:
        raw = Path(td) / "model.onnx"
        try:
            # nn.MultiheadAttention's fused eval path (multi-label models) has no ONNX form: the plain one
            fast = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's notes on constants and shape inference
                torch.onnx.export(model, xs, str(raw), input_names=names, output_names=["logits"],
                                  dynamic_axes=dyn, opset_version=17, dynamo=False)
        except Exception as e:
            torch.backends.mha.set_fastpath_enabled(fast)
            raise UsageError(f"--format onnx: {run.cfg.model.name} could not be exported ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); use --format torchscript or safetensors") from None
        torch.backends.mha.set_fastpath_enabled(fast)
        proto = onnx.load(str(raw))
        for k, v in _facts(run, "onnx").items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"cit_fast.{k}", json.dumps(v)
        onnx.checker.check_model(proto)
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))
    try:
        import onnxruntime as ort
    except ImportError:  # the graph is checked; its numbers cannot be without a runtime
        return float("nan"), "onnx.checker (onnxruntime not installed: outputs not compared)"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ys, want = _check_batch(run)  # another batch size than the exported one
    got = torch.from_numpy(sess.run(None, {n: y.numpy() for n, y in zip(names, ys)})[0])
    return float((got - want).abs().max()), "onnxruntime"


WRITERS = {"torchvision": _write_torchvision, "safetensors": _write_safetensors, "onnx": _write_onnx,
           "torchscript": _write_torchscript}


# -- usage snippets --------------------------------------------------------------------------------
def _snippet(run: Run, fmt: str, path: Path, facts: Dict[str, Any]) -> str:
    s, r = facts["image_size"], facts["eval_resize"]
    pre = (f"# input: RGB, shorter side to {r}, centre {s}x{s}" if r else f"# input: RGB resized to {s}x{s}") + \
          f", x/255 then (x - {facts['mean']}) / {facts['std']}"
    if "input_is" in facts:
        pre += f"\n# the image is {facts['input_is']}"
    head = "torch.sigmoid(logits)  # multi-label" if run.task == "multilabel" else "logits.softmax(-1)"
    n = facts["num_classes"]
    args = ", ".join(facts["inputs"])
    p = str(path)
    if fmt == "torchvision":
        arch = _torchvision_net(run)[1]
        return (f"import torch, torchvision\nmodel = torchvision.models.{arch}(num_classes={n})\n"
                f"model.load_state_dict(torch.load({p!r}))\nmodel.eval()\n{pre}\n"
                f"probs = {head.replace('logits', 'model(image)')}")
    if fmt == "safetensors":
        return (f"from safetensors.torch import load_file\nfrom cit_fast.models import build_model\n"
                f"from cit_fast.config import ModelConfig\n"
                f"model = build_model(ModelConfig(name={facts['model']!r}), {n})\n"
                f"model.load_state_dict(load_file({p!r})); model.eval()\n{pre}\nlogits = model({args})")
    if fmt == "torchscript":
        return f"import torch\nmodel = torch.jit.load({p!r})\n{pre}\nlogits = model({args})"
    feeds = ", ".join(f"{a!r}: {a}.numpy()" for a in facts["inputs"])
    return (f"import onnxruntime as ort\nsess = ort.InferenceSession({p!r})\n{pre}  (float32, NCHW)\n"
            f"logits = sess.run(None, {{{feeds}}})[0]")


# -- the command -------------------------------------------------------------------------------------
def default_out(run: Run, fmt: str) -> Path:
    return Path(run.cfg.out_dir) / "export" / f"{run.cfg.model.name}_e{run.epoch:04d}{SUFFIX[fmt]}"


def export_run(run_path: str, fmt: str, out: str = "", overrides: Sequence[str] = ()) -> Export:
    """Export the model of ``run_path`` (a run directory or checkpoint, as load_run reads it) to ``fmt``."""
    from .eval.run import load_run

    if fmt not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    n = _classes_in_weights(run_path, overrides)
    if n:  # the weights tell the class count: the data need not be read (nor be on this machine)
        run = load_run(run_path, [*overrides, f"model.num_classes={n}"], device="cpu", datasets=False)
    else:
        run = load_run(run_path, overrides, device="cpu")
    if fmt == "torchvision" and _torchvision_net(run)[0] is None:  # refused before anything is written
        raise UsageError(f"--format torchvision: {_torchvision_net(run)[1]}; use --format safetensors, onnx or "
                         f"torchscript")
    path = Path(out) if out else default_out(run, fmt)
    if path.is_dir() or out.endswith(("/", "\\")):  # a directory, existing or to be made
        path = path / default_out(run, fmt).name
    if path.suffix.lower() != SUFFIX[fmt]:
        if path.suffix:
            raise UsageError(f"--out {out}: --format {fmt} writes a {SUFFIX[fmt]} file")
        path = path.with_suffix(SUFFIX[fmt])
    max_diff, checked = WRITERS[fmt](run, path)
    scale = float(_check_batch(run)[1].abs().max())
    if max_diff > TOLERANCE * max(1.0, scale):  # our bug: the export does not compute what the model does
        path.unlink(missing_ok=True)
        raise RuntimeError(f"export {fmt}: read back with {checked}, the logits differ by {max_diff:.3g} "
                           f"(logits up to {scale:.3g}); nothing kept")
    facts = _facts(run, fmt)
    sidecar = path.with_name(path.name + ".json")
    atomic_write_json(sidecar, facts)
    return Export(path, sidecar, fmt, max_diff, scale, checked, _snippet(run, fmt, path, facts))


def _classes_in_weights(run_path: str, overrides: Sequence[str]) -> int:
    """The model's class count from its classifier's weights; 0 when they do not tell (or an
    override names it: load_run then takes the override)."""
    from .checkpoint import load_checkpoint
    from .eval.run import checkpoint_of

    if any(o.startswith("model.num_classes=") for o in overrides):
        return 0
    try:
        ck = checkpoint_of(Path(run_path))
        if ck.is_dir():  # DeepSpeed: load_run consolidates the shards; the data tell the classes
            return 0
        weights = load_checkpoint(ck).get("model", {})
    except Exception:
        return 0  # load_run says what is wrong, in its own words
    for key in ("fc.weight", "net.fc.weight"):
        if key in weights and weights[key].ndim == 2:
            return int(weights[key].shape[0])
    return 0
