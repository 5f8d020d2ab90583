"""The pipeline contract shared by the torch and DALI implementations.

A pipeline walks one rank's shard of an intervention plan in batches. Each raw batch holds, per
sample i with context partner j, uint8 tensors decoded and augmented on the host or GPU:
    obj (B,H,W,3), mask (B,H,W), ctx (B,H,W,3), ctx_mask (B,H,W), flip (B,) bool,
    label (B,) or (B,C), index (B,) = i, partner (B,) = j;
    with per-sample windows (``uses_windows``: random-resized training, resize + centre-crop evaluation)
    also window_i, window_j (B, 4) int64 (top, left, height, width): the object's and the context's
    window in source pixels (evaluation: in the resized image's pixels).
``compose`` then turns it into a typed batch of model inputs (data/pipelines/batch.py) with one call of
``kernels.composite`` (the Triton kernel on CUDA, the PyTorch reference elsewhere), so the blend
formula lives in one place:
    output "image":  ImageBatch.image = m_i*obj_i + (1-m_i)*ctx_j              (single-branch models)
    output "double": DoubleBatch.content = m_i*obj_i, .context = (1-m_j)*ctx_j (double-branch models)
    epochwise=True adds the original sample: .original (.original_context) beside them (Eq. 12).
The spec's ``batch_ops`` (Mixup / CutMix) then run on every composed batch, in order.
Training order, partners, crops and flips are pure functions of (seed, epoch, index), so
``state_dict`` (epoch, batches done) is all it takes to resume mid-epoch.
"""
from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from ... import kernels
from ..choices import TRAIN_CROPS
from ...errors import ConfigError
from ..plans import draws
from ..plans.balanced import make_balanced_plan
from ..spec import check_geometry, check_reuse
from .batch import DoubleBatch, ImageBatch, ModelBatch, RawBatch
from ..plans.intervention import InterventionPlan, make_plan
from ..sources.records import SampleSet



@dataclass
class PipelineSpec:
    """What a pipeline needs besides its data: everything that shapes the batches."""

    batch_size: int  # per rank
    plan: str = "none"  # intervention plan kind
    output: str = "image"  # "image" (single-branch) or "double" (content/context)
    epochwise: bool = False  # also emit the original sample (Eq. 12)
    train: bool = True  # shuffle, augment, drop the last partial batch
    image_size: int = 0  # output side in pixels; 0 = the source's own (arrays must be uniform)
    hflip: bool = True  # random horizontal flip (train only)
    crop_padding: int = 0  # random crop after reflect-padding by this many pixels (train only)
    # train geometry: "resize" (the whole image to image_size, then the crop_padding crop) or
    # "random_resized" (torchvision's RandomResizedCrop to image_size, windows from ``crop_window``)
    train_crop: str = "resize"
    crop_scale: Tuple[float, float] = (0.08, 1.0)  # random_resized: window area / image area
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)  # random_resized: window width / height
    eval_resize: int = 0  # evaluation: shorter side to this, centre crop to image_size (0: whole-image resize)
    draft: bool = True  # torch pipeline: JPEGs decoded at 1/2, 1/4, 1/8 size where every window allows
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.25, 0.25, 0.25)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    out_dtype: torch.dtype = torch.float32
    channels_last: bool = False
    decode_reuse: bool = False  # partners in the same batch, each image decoded once (plans/balanced.py)
    on_bad_sample: str = "error"  # an unreadable image: "error" (one line naming it) or "skip" (torch pipeline)
    # ops on each composed batch, in order: op(batch, epoch, step) -> batch (pipelines/mix.py: MixOp)
    batch_ops: Tuple[Callable, ...] = ()

    def __post_init__(self) -> None:
        """A spec built by hand (tests, benchmarks) meets the rules a config's met in finalize (data/spec.py)."""
        if self.train_crop not in TRAIN_CROPS:
            raise ConfigError(f"data.train_crop must be one of {', '.join(TRAIN_CROPS)}, got {self.train_crop!r}")
        check_geometry(self.train_crop, self.image_size, self.crop_padding, self.crop_scale, self.crop_ratio,
                       self.eval_resize)
        if self.output not in ("image", "double"):
            raise ValueError(f"pipeline output must be 'image' or 'double', got {self.output!r}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        check_reuse(self.decode_reuse, self.train, self.plan, self.batch_size)

    @classmethod
    def from_config(cls, cfg, *, train: bool, rank: int = 0, world_size: int = 1,
                    device: torch.device = torch.device("cpu"), output: str = "image", batch_size: int = 0,
                    out_dtype: torch.dtype = torch.float32, plan: Optional[str] = None,
                    batch_ops: Tuple[Callable, ...] = ()) -> "PipelineSpec":
        """The spec of a run's training (``train``) or evaluation pipeline: the config's data.* keys,
        its plan in training (``plan`` names another one, e.g. for the evaluation probes), and what
        only the run knows (rank, world size, device, the model's input kind and dtype)."""
        d = cfg.data
        return cls(
            batch_size=batch_size or d.batch_size,
            plan=plan or (cfg.intervention.plan if train else "none"),
            output=output,
            epochwise=cfg.intervention.epochwise if train else False,
            train=train, image_size=d.image_size, hflip=d.hflip, crop_padding=d.crop_padding,
            train_crop=d.train_crop, crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio),
            eval_resize=d.eval_resize,
            mean=tuple(d.mean), std=tuple(d.std), seed=cfg.seed, rank=rank, world_size=world_size,
            num_workers=d.num_workers, device=device, decode_reuse=d.decode_reuse, out_dtype=out_dtype,
            on_bad_sample=d.on_bad_sample if train else "error",  # evaluation keeps every sample
            batch_ops=batch_ops)


# The augmentations' streams of draws (data/plans/draws.py, beside the plans' 0, 1, 2 and 0xDEC0 + j): a
# flip is draw ``index`` of FLIP_STREAM; a crop offset (dy, dx) draws ``index`` of CROP_STREAM + 2 * role
# (+ 1); a random-resized window is cut from sample index's own stream in WINDOW_STREAM + role.
FLIP_STREAM, WINDOW_STREAM, CROP_STREAM = 0xA06, 0xA060, 0xC00


def sample_rng(seed: int, epoch: int, index: int, role: int) -> draws.Stream:
    """The stream of sample ``index``'s crop window as object (role 0) or context partner (role 1): the
    project's counter-based draws, identical on every rank, pipeline, resume and numpy version."""
    return draws.Stream(draws.sample_key(seed, epoch, WINDOW_STREAM + role, index))


def flip_flags(spec: PipelineSpec, epoch: int, index: np.ndarray) -> np.ndarray:
    if not (spec.train and spec.hflip):
        return np.zeros(len(index), bool)
    return draws.uniform_at(draws.key(spec.seed, epoch, FLIP_STREAM), index) < 0.5


def crop_offsets(spec: PipelineSpec, epoch: int, index: np.ndarray, role: int) -> np.ndarray:
    """(B, 2) int64 (dy, dx) in [0, 2*crop_padding] for the samples ``index`` as objects (role 0) or
    contexts (role 1)."""
    p = spec.crop_padding if spec.train else 0
    index = np.asarray(index, np.int64)
    if p == 0:
        return np.zeros((len(index), 2), np.int64)
    return np.stack([draws.below_at(draws.key(spec.seed, epoch, CROP_STREAM + 2 * role + d), index, 2 * p + 1)
                     for d in (0, 1)], 1)


Window = Tuple[int, int, int, int]  # (top, left, height, width) in source pixels


def random_resized_window(rng, height: int, width: int,
                          scale: Sequence[float] = (0.08, 1.0),
                          ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Window:
    """torchvision's ``RandomResizedCrop.get_params`` with draws from ``rng``: up to 10 tries of an
    area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``; then the centre crop of
    the image clamped to ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def eval_geometry(height: int, width: int, resize: int, size: int) -> Tuple[int, int, int, int]:
    """torchvision's ``Resize(resize)`` + ``CenterCrop(size)``: (resized height, resized width, crop
    top, crop left) -- the shorter side to ``resize``, the longer truncated as torchvision does."""
    if width <= height:
        rw, rh = resize, int(resize * height / width)
    else:
        rh, rw = resize, int(resize * width / height)
    return rh, rw, int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))


def uses_windows(spec: PipelineSpec) -> bool:
    """Whether each sample is cut from its own window (random-resized training, resize-and-centre-crop
    evaluation) instead of the whole image resized."""
    return (spec.train and spec.train_crop == "random_resized") or (not spec.train and spec.eval_resize > 0)


def crop_window(spec: PipelineSpec, epoch: int, index: int, role: int, height: int, width: int) -> Window:
    """The source window of sample ``index`` as object (role 0) or context partner (role 1).

    Training (random_resized): torchvision's draw from the sample's own stream (``sample_rng``), so
    every pipeline, rank and resume cuts the same window; an object and its mask share it, the
    partner (role 1) has its own. Evaluation (eval_resize): the centre crop's window, in source
    pixels, of the resized image (see ``eval_geometry``; the pipelines resize, then crop).
    """
    if spec.train:
        return random_resized_window(sample_rng(spec.seed, epoch, index, role), height, width,
                                     spec.crop_scale, spec.crop_ratio)
    rh, rw, top, left = eval_geometry(height, width, spec.eval_resize, spec.image_size)
    return top, left, spec.image_size, spec.image_size  # in the resized image's pixels


def window_uses(spec: PipelineSpec, index: np.ndarray, partner: np.ndarray):
    """What a windowed batch cuts, each (sample, role) once: (uses [(k, role)], position of each
    object in uses, of each context). In evaluation the window does not depend on the role."""
    role_j = 1 if spec.train else 0
    where: Dict[Tuple[int, int], int] = {}
    pos = []
    for k, role in [(int(i), 0) for i in index] + [(int(j), role_j) for j in partner]:
        pos.append(where.setdefault((k, role), len(where)))
    pos = np.asarray(pos, np.int64)
    return list(where), pos[:len(index)], pos[len(index):]


def _reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Source index of each padded index under numpy's 'reflect' padding (edge not repeated)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def crop_batch(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Per-sample crops of reflect-padded images back to their size, as one gather (any device).

    x: (B, H, W) or (B, H, W, C); offsets: (B, 2) int64 (dy, dx) in [0, 2*pad] from ``crop_offsets``.
    Sample b equals ``np.pad(x[b], pad, mode="reflect")[dy:dy+H, dx:dx+W]`` (CIFAR-style crop).
    """
    b, h, w = x.shape[:3]
    offsets = offsets.to(x.device)
    rows = _reflect(torch.arange(h, device=x.device)[None] + offsets[:, :1] - pad, h)  # (B, H)
    cols = _reflect(torch.arange(w, device=x.device)[None] + offsets[:, 1:] - pad, w)  # (B, W)
    return x[torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def crop_pairs(spec: PipelineSpec, epoch: int, index: np.ndarray, partner: np.ndarray, obj, mask, ctx, ctx_mask):
    """The training crops: each object with its own mask (role 0), each context with its mask (role 1)."""
    pad = spec.crop_padding if spec.train else 0
    if not pad:
        return obj, mask, ctx, ctx_mask
    off_i = torch.from_numpy(crop_offsets(spec, epoch, index, 0))
    off_j = torch.from_numpy(crop_offsets(spec, epoch, partner, 1))
    return (crop_batch(obj, pad, off_i), crop_batch(mask, pad, off_i),
            crop_batch(ctx, pad, off_j), crop_batch(ctx_mask, pad, off_j))


def decode_set(index: np.ndarray, partner: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a batch must decode, each sample once: (ids, position of each index in ids, of each partner)."""
    ids, inv = np.unique(np.concatenate([index, partner]), return_inverse=True)
    inv = inv.reshape(-1)
    return ids, inv[:len(index)], inv[len(index):]


_PLANNER: Optional[ThreadPoolExecutor] = None
_PLANNER_LOCK = threading.Lock()


def _planner() -> ThreadPoolExecutor:
    """One background thread for every pipeline of the process: next epochs' plans."""
    global _PLANNER
    with _PLANNER_LOCK:
        if _PLANNER is None:
            _PLANNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cit-fast-plan")
        return _PLANNER


class Pipeline(ABC):
    """Iterates one rank's batches of one epoch; ``set_epoch`` first (as with DistributedSampler).

    In training, building epoch e's plan starts building epoch e + 1's in a background thread
    (plans are pure functions of (seed, epoch)), so the next ``set_epoch`` finds it ready and no
    step waits on a plan (ImageNet-21k: seconds per plan).
    """

    prefetch_plans = True  # build the next epoch's plan in the background (training only)

    def __init__(self, samples: SampleSet, spec: PipelineSpec):
        self.samples = samples
        self.spec = spec
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (mid-epoch resume)
        self._plan: Optional[InterventionPlan] = None
        self._next_plan: Optional[Tuple[int, Future]] = None  # (epoch, its plan being built)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_next_plan"] = None  # a Future does not pickle; the copy builds its own
        return state

    # -- plan and sharding ----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0
            self._plan = None  # (the same epoch keeps its plan: a pure function of (seed, epoch))
        self.epoch = epoch

    def build_plan(self, epoch: int) -> InterventionPlan:
        """The plan of ``epoch`` (pure: any thread, any time)."""
        s, spec = self.samples, self.spec
        if spec.decode_reuse and spec.train:
            return make_balanced_plan(spec.plan, s.strata, spec.seed, epoch, spec.batch_size, spec.world_size,
                                      s.bias)
        return make_plan(spec.plan, s.strata, spec.seed, epoch, s.bias, shuffle=spec.train)

    @property
    def plan(self) -> InterventionPlan:
        if self._plan is None:
            ready, self._next_plan = self._next_plan, None
            if ready is not None and ready[0] == self.epoch:
                self._plan = ready[1].result()  # built while the last epoch trained
            else:
                if ready is not None:
                    ready[1].cancel()
                self._plan = self.build_plan(self.epoch)
            if self.spec.train and self.prefetch_plans:
                self._next_plan = (self.epoch + 1, _planner().submit(self.build_plan, self.epoch + 1))
        return self._plan

    def shard_indices(self) -> np.ndarray:
        """This rank's sample indices for the epoch, in visiting order."""
        if self.spec.train:
            return self.plan.shard(self.spec.rank, self.spec.world_size)
        # evaluation: every sample exactly once over all ranks (shards may differ by one)
        return self.plan.order[self.spec.rank::self.spec.world_size]

    def batch_keys(self) -> list:
        """[(indices, partners)] per batch for the rest of this epoch."""
        idx = self.shard_indices()
        bs = self.spec.batch_size
        n_batches = len(idx) // bs if self.spec.train else -(-len(idx) // bs)
        partner = self.plan.partner
        return [(idx[b * bs:(b + 1) * bs], partner[idx[b * bs:(b + 1) * bs]])
                for b in range(self.start_batch, n_batches)]

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank in training)."""
        n = len(self.shard_indices())
        return n // self.spec.batch_size if self.spec.train else -(-n // self.spec.batch_size)

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state["epoch"]) != self.epoch:
            self._plan = None
        self.epoch = int(state["epoch"])
        self.start_batch = int(state["start_batch"])

    # -- iteration --------------------------------------------------------------------------------
    @abstractmethod
    def raw_batches(self) -> Iterator[RawBatch]:
        """Raw uint8 batches (see module doc) for the rest of the epoch, on any device."""

    def model_batches(self) -> Iterator[ModelBatch]:
        """Model inputs (``compose`` of each raw batch) for the rest of the epoch. A pipeline may
        compose elsewhere (the DALI pipeline on a CPU: in a helper thread, one batch ahead)."""
        for raw in self.raw_batches():
            yield compose(raw, self.spec)

    def __iter__(self) -> Iterator[ModelBatch]:
        """The epoch's model batches, each through the spec's batch ops (Mixup / CutMix), in order."""
        for batch in self.model_batches():
            for op in self.spec.batch_ops:
                batch = op(batch, self.epoch, self.start_batch)
            self.start_batch += 1
            yield batch
        self.start_batch = 0


CPU_CHUNK_BYTES = 2 << 20  # float32 bytes per temporary of the composite reference on a CPU


def _chunked(op: Callable, dev: torch.device) -> Callable:
    """On a CPU, run the composite over cache-sized chunks of the batch and concatenate.

    The CPU path (``kernels.composite_cpu``) makes full-size float32 buffers; chunks of ~2 MB keep
    them in cache (less CPU time on a 224^2 batch), bitwise the same result (the op is per
    sample). On CUDA the Triton kernel is one pass already.
    """
    if dev.type != "cpu":
        return op

    def run(obj, *args, flip=None, **kw):
        n = obj.shape[0]
        chunk = max(1, CPU_CHUNK_BYTES // max(1, obj[0].numel() * 4))
        if n <= chunk:
            return op(obj, *args, flip=flip, **kw)
        parts = [op(obj[k:k + chunk], *(a[k:k + chunk] for a in args),
                    flip=None if flip is None else flip[k:k + chunk], **kw) for k in range(0, n, chunk)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p) for p in zip(*parts))
        return torch.cat(parts)

    return run


def compose(raw: RawBatch, spec: PipelineSpec) -> ModelBatch:
    """Raw batch -> model inputs on spec.device, through kernels.composite (one pass)."""
    dev = spec.device
    op = _chunked(kernels.composite, dev)
    t = {k: v.to(dev, non_blocking=True) for k, v in raw.items()}
    kw = dict(flip=t["flip"], mean=spec.mean, std=spec.std, out_dtype=spec.out_dtype,
              channels_last=spec.channels_last)
    common = dict(label=t["label"], index=t["index"], partner=t["partner"])
    if spec.output == "double":
        content, context = op(t["obj"], t["mask"], t["ctx"], t["ctx_mask"], mode="double", **kw)
        own = None
        if spec.epochwise:  # the object with its own context
            _, own = op(t["obj"], t["mask"], t["obj"], t["mask"], mode="double", **kw)
        return DoubleBatch(content=content, context=context, original_context=own, **common)
    if spec.plan == "none" and not spec.epochwise:
        return ImageBatch(image=op(t["obj"], t["mask"], mode="none", **kw), **common)
    if spec.epochwise:
        original, image = op(t["obj"], t["mask"], t["ctx"], mode="pair", **kw)
        return ImageBatch(image=image, original=original, **common)
    return ImageBatch(image=op(t["obj"], t["mask"], t["ctx"], mode="single", **kw), **common)
