"""The NVIDIA DALI implementation of the pipeline contract (``data.pipeline=dali``).

One DALI pipeline per DaliPipeline, fed by ``external_source`` with the samples the intervention
plan puts in each batch: DALI decodes each of them once (image and mask; nvJPEG "mixed" decoding
and GPU resizing when ``spec.device`` is CUDA, ``device_id=None`` CPU operators otherwise) and
resizes them to ``spec.image_size``. The plan's pairing, the crops (``crop_offsets``) and the flips
(``flip_flags``) are then applied on the decoded batch with index gathers, on the same device, so an
image and its own mask always share their crop and the torch and DALI pipelines agree sample for
sample. The blend stays in ``compose``.

Why ``external_source`` rather than DALI readers: independent file readers for images and masks do
not keep a shuffled image paired with its mask, and the plan, not a reader, decides the order,
the partners and each rank's shard. The batch callback gets DALI's iteration number, so batch k of
the epoch is always ``batch_keys()[k]`` however far DALI prefetches, and resuming mid-epoch is only
``start_batch`` (the keys start there).

Files and shard members are read by a *parallel* external source: the batch callback runs in DALI's
worker processes (``data.num_workers`` of them, at least one), several batches at once, never in the
main thread; each epoch's plan reaches them through a shared file (``dali_feed.py``). Whole batches
rather than DALI's per-sample mode: a batch decodes a varying number of distinct samples (each once,
object and context alike), and the per-sample mode has a fixed batch size. In-memory arrays are
sliced in the main thread (no reads to spread).
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch

from .batch import ModelBatch, RawBatch
from .contract import (Pipeline, PipelineSpec, compose, crop_pairs, crop_window, decode_set, eval_geometry,
                       flip_flags, uses_windows, window_uses)
from ..sources.members import read_bytes
from .dali_feed import SharedFeed
from ..sources.records import DataError, SampleSet, open_image
from ..spec import check_bad_samples

PREFETCH = 2  # batches DALI prepares ahead of the one being consumed


def _import_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise ImportError("data.pipeline=dali needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
                          "(or the [dali] extra of cit_fast)") from e


# A DALI pipeline owns threads; a process forked from this one (DataLoader workers) does not have
# them, and DALI's destructor would abort it. Children therefore keep every DALI pipeline of the
# parent alive, never destroying them (their workers leave through os._exit).
_PIPES: "weakref.WeakSet" = weakref.WeakSet()
_KEPT_IN_CHILD: list = []
os.register_at_fork(after_in_child=lambda: _KEPT_IN_CHILD.extend(_PIPES))


@dataclass
class _BatchFeed:
    """What DALI decodes for one batch, and where each sample's object and context come from."""

    index: np.ndarray  # (B,) object samples i
    partner: np.ndarray  # (B,) context samples j
    ids: np.ndarray  # (U,) distinct samples to decode (U <= 2B; U = B with decode reuse)
    pos_i: np.ndarray  # (B,) position of each i in ids
    pos_j: np.ndarray  # (B,) position of each j in ids
    roles: Optional[np.ndarray] = None  # (U,) with crop windows: the role (0 object, 1 context) of each cut
    windows: Optional[np.ndarray] = None  # (U, 4) the cuts' windows, set when DALI asks for the batch


class _Source:
    """The external_source batch callback: the encoded files (or arrays) of batch ``iteration``.

    A separate object, so that the DALI pipeline does not point back at its DaliPipeline: dropping
    a DaliPipeline frees its DALI threads at once, without waiting for the cyclic garbage collector.
    """

    def __init__(self, samples: SampleSet, files: bool, spec: Optional[PipelineSpec] = None,
                 shared: Optional[SharedFeed] = None):
        self.samples, self.files = samples, files
        self.spec = spec  # set when each cut has its own window (``uses_windows``)
        self.epoch = 0
        self.feed: List[_BatchFeed] = []
        self.shared = shared  # parallel reads: the feed comes from the main process through this file
        self._sizes: dict = {}  # sample -> (height, width), from the file header, read once

    def _size(self, k: int):
        if k not in self._sizes:
            s = self.samples
            if isinstance(s.images, np.ndarray):
                self._sizes[k] = s.images[k].shape[:2]
            else:
                with open_image(s.images[k], "image") as im:
                    self._sizes[k] = (im.size[1], im.size[0])
        return self._sizes[k]

    def _geometry(self, feed: _BatchFeed):
        """Per cut: the window (set on the feed) and what the graph's slice/resize inputs need."""
        spec = self.spec
        wins, anchors, shapes, resized = [], [], [], []
        for k, role in zip(feed.ids, feed.roles):
            h, w = self._size(int(k))
            win = crop_window(spec, self.epoch, int(k), int(role), h, w)
            wins.append(win)
            anchors.append(np.array([win[1], win[0]], np.float32))  # (x, y): axis_names "WH"
            shapes.append(np.array([win[3], win[2]], np.float32))
            if not spec.train:
                rh, rw, _, _ = eval_geometry(h, w, spec.eval_resize, spec.image_size)
                resized.append(np.array([rh, rw], np.float32))  # resize's `size`: (H, W) of an HWC image
        feed.windows = np.asarray(wins, np.int64)
        return anchors, shapes, resized

    def __call__(self, info):
        if self.shared is not None:  # in a DALI worker process
            self.epoch = self.shared.wait(info.epoch_idx)
            self.feed = self.shared
        if info.iteration >= len(self.feed):
            raise StopIteration
        feed = self.feed[info.iteration]
        ids = feed.ids
        s = self.samples
        if self.files:
            read = {}  # a file cut twice (object and context) is read once
            images = [read.setdefault(("i", k), _read(s.images[k], "image")) if ("i", k) not in read
                      else read[("i", k)] for k in ids]
            masks = None if s.masks is None else [
                read.setdefault(("m", k), _read(s.masks[k], "mask")) if ("m", k) not in read else read[("m", k)]
                for k in ids]
        else:
            images = [s.images[k] for k in ids]
            masks = None if s.masks is None else [s.masks[k][..., None] for k in ids]
        out = (images,) if masks is None else (images, masks)
        if self.spec is not None:
            anchors, shapes, resized = self._geometry(feed)
            out += (anchors, shapes) + ((resized,) if resized else ())
        return out


def _read(path: str, kind: str) -> np.ndarray:
    """Encoded bytes of a file or shard member as uint8, or a DataError naming it."""
    return read_bytes(path, kind)


class DaliPipeline(Pipeline):
    """Same batches as TorchPipeline (same plan, crops, flips); DALI decodes and resizes.

    DALI runs ``max(1, spec.num_workers)`` threads. Decoding errors name the file: a file that
    DALI cannot decode is decoded again with PIL to find it (see ``_diagnose``).
    """

    start_method = ""  # DALI's worker processes: "" = fork on the CPU, spawn on a GPU

    def __init__(self, samples: SampleSet, spec: PipelineSpec):
        check_bad_samples("dali", spec.on_bad_sample)  # a config met it in finalize; a spec built by hand here
        _import_dali()
        super().__init__(samples, spec)
        self._pipe = None  # built on first use; dropped after an error or an abandoned epoch
        self._files = not samples.in_memory
        self._windows = uses_windows(spec)
        # files and shard members are read in DALI's worker processes (parallel external source), whole
        # batches at a time: a batch holds a varying number of distinct samples (decode reuse), which
        # DALI's per-sample mode (a fixed batch size) cannot express
        self._parallel = self._files
        self._shared = None
        if self._parallel:
            n_batches = -(-len(samples) // max(1, spec.batch_size)) + 1
            self._shared = SharedFeed(n_batches, 2 * spec.batch_size * n_batches)
        self._dali_epoch = 0  # epochs the current DALI pipeline has finished (its BatchInfo.epoch_idx)
        self._source = _Source(samples, self._files, spec if self._windows else None, shared=self._shared)
        if self._files and (isinstance(samples.images, np.ndarray) or isinstance(samples.masks, np.ndarray)):
            raise DataError(f"{samples.name}: images and masks must both be files or both arrays")

    # -- the DALI graph ----------------------------------------------------------------------------
    @property
    def _gpu(self) -> bool:
        return self.spec.device.type == "cuda"

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        spec, s = self.spec, self.samples
        has_masks = s.masks is not None
        n_in = 2 if has_masks else 1
        size = spec.image_size
        device_id = (spec.device.index if spec.device.index is not None else torch.cuda.current_device()) \
            if self._gpu else None

        workers = dict(py_num_workers=max(1, spec.num_workers),
                       # CUDA is initialised by now on a GPU: its workers cannot be forked
                       py_start_method=self.start_method or ("spawn" if self._gpu else "fork")) \
            if self._parallel else {}

        @pipeline_def(batch_size=2 * spec.batch_size, num_threads=max(1, spec.num_workers),
                      device_id=device_id, prefetch_queue_depth=PREFETCH, **workers)
        def graph():
            if self._windows:
                return self._window_graph(fn, types, n_in)
            if self._files:
                enc = fn.external_source(source=self._source, num_outputs=n_in, batch=True, batch_info=True,
                                         dtype=types.UINT8, parallel=self._parallel)
                dec = "mixed" if self._gpu else "cpu"
                # EXIF orientation is ignored, as PIL does in the torch pipeline: a mask is drawn on
                # the stored pixels, and rotating only the image would misalign them
                outs = [fn.decoders.image(enc[0], device=dec, output_type=types.RGB, adjust_orientation=False)]
                if has_masks:
                    outs.append(fn.decoders.image(enc[1], device=dec, output_type=types.GRAY,
                                                  adjust_orientation=False))
                shapes = [fn.peek_image_shape(e, adjust_orientation=False) for e in enc]  # (H, W, C), header only
            else:
                arr = fn.external_source(source=self._source, num_outputs=n_in, batch=True, batch_info=True,
                                         dtype=types.UINT8, layout=["HWC"] * n_in)
                outs = [a.gpu() if self._gpu else a for a in arr]
                shapes = []
            if size:
                # linear with antialiasing: PIL's BILINEAR filter (within a level), like the torch pipeline
                outs = [fn.resize(o, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR,
                                  antialias=True) for o in outs]
            return tuple(outs) + tuple(shapes)

        pipe = graph()
        pipe.build()
        _PIPES.add(pipe)
        return pipe

    def _window_graph(self, fn, types, n_in: int):
        """Each cut from its own window (``crop_window``), resized to image_size.

        Training: the window decoded alone (ROI decoding, ``fn.decoders.image_slice`` with the
        window's absolute anchor and shape: nvJPEG on the GPU, libjpeg-turbo's cropped decode on
        the CPU), then resized. Evaluation: torchvision's order, the whole image resized (shorter
        side to eval_resize), then the centre window sliced out.
        """
        spec = self.spec
        size = spec.image_size
        n_geo = 2 if spec.train else 3
        dtypes = [types.UINT8] * n_in + [types.FLOAT] * n_geo
        ext = dict(source=self._source, num_outputs=n_in + n_geo, batch=True, batch_info=True, dtype=dtypes,
                   parallel=self._parallel)
        if not self._files:
            ext["layout"] = ["HWC"] * n_in + [""] * n_geo
        inp = fn.external_source(**ext)
        enc, geo = inp[:n_in], inp[n_in:]
        anchor, shape = geo[0], geo[1]
        window = dict(axis_names="WH", normalized_anchor=False, normalized_shape=False)
        dec = "mixed" if self._gpu else "cpu"
        kinds = [types.RGB, types.GRAY][:n_in]
        resize = dict(interp_type=types.INTERP_LINEAR, antialias=True)
        outs, shapes = [], []
        for e, kind in zip(enc, kinds):
            if self._files:
                shapes.append(fn.peek_image_shape(e, adjust_orientation=False))
            if spec.train:
                if self._files:
                    o = fn.decoders.image_slice(e, anchor, shape, device=dec, output_type=kind,
                                                adjust_orientation=False, **window)
                else:
                    o = fn.slice(e.gpu() if self._gpu else e, anchor, shape, **window)
                o = fn.resize(o, resize_x=size, resize_y=size, **resize)
            else:
                if self._files:
                    o = fn.decoders.image(e, device=dec, output_type=kind, adjust_orientation=False)
                else:
                    o = e.gpu() if self._gpu else e
                o = fn.resize(o, size=geo[2], **resize)
                o = fn.slice(o, anchor, shape, **window)
            outs.append(o)
        return tuple(outs) + tuple(shapes)

    # -- iteration -----------------------------------------------------------------------------------
    def model_batches(self) -> Iterator[ModelBatch]:
        """On a CPU, batch k is composed in a helper thread while DALI hands over batch k + 1 (the
        main thread would otherwise alternate between them; PyTorch's ops release the GIL). On a
        GPU the Triton composite is asynchronous already."""
        if self._gpu:
            yield from super().model_batches()
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cit-fast-compose") as pool:
            pending = None
            for raw in self.raw_batches():
                job = pool.submit(compose, raw, self.spec)
                if pending is not None:
                    yield pending.result()
                pending = job
            if pending is not None:
                yield pending.result()

    def raw_batches(self) -> Iterator[RawBatch]:
        keys = self.batch_keys()
        if not keys:
            return
        if self._windows:
            feeds = []
            for i, j in keys:
                uses, pi, pj = window_uses(self.spec, i, j)
                ids = np.array([k for k, _ in uses], np.int64)
                feeds.append(_BatchFeed(i, j, ids, pi, pj, roles=np.array([r for _, r in uses], np.int64)))
        else:
            feeds = [_BatchFeed(i, j, *decode_set(i, j)) for i, j in keys]
        self._source.feed = feeds
        self._source.epoch = self.epoch
        if self._pipe is None:
            self._dali_epoch = 0
        if self._shared is not None:  # before DALI asks its workers for the epoch's first batch
            self._shared.write(feeds, self.epoch, self._dali_epoch)
        if self._pipe is None:
            self._pipe = self._build()
        pipe = self._pipe
        done = False
        try:
            for k, feed in enumerate(feeds):
                try:
                    outs = pipe.run()
                except (DataError, StopIteration):
                    self._pipe = None
                    raise
                except Exception as e:  # DALI reports decoding errors as RuntimeError, without the file
                    self._pipe = None
                    self._diagnose(feeds[k:k + PREFETCH + 1], e)
                yield self._assemble(feed, outs)
            try:  # the source is exhausted: DALI ends its epoch, ready for the next one
                pipe.run()
                raise RuntimeError("DALI pipeline produced more batches than the plan has")
            except StopIteration:
                pipe.reset()
                self._dali_epoch += 1
            done = True
        finally:
            if not done:  # an abandoned epoch leaves prefetched batches behind: rebuild next time
                self._pipe = None

    def _to_torch(self, tl, what: str, feed: _BatchFeed) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if not tl.is_dense_tensor():
            shapes = sorted({tuple(sh) for sh in tl.shape()})
            raise DataError(f"{self.samples.name}: {what}s of different sizes {shapes} in one batch; "
                            f"set data.image_size to resize them")
        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=torch.uint8, device=self.spec.device if self._gpu else "cpu")
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(out.device) if self._gpu else None)
        return out

    def _check_sizes(self, feed: _BatchFeed, img_shapes, msk_shapes) -> None:
        """A mask must match its image pixel for pixel (before resizing), or the blend is wrong."""
        s = self.samples
        ih = np.array(img_shapes.as_array())[:, :2]
        mh = np.array(msk_shapes.as_array())[:, :2]
        bad = np.nonzero((ih != mh).any(1))[0]
        if len(bad):
            k = int(feed.ids[bad[0]])
            raise DataError(f"mask {s.masks[k]}: size {mh[bad[0], 1]}x{mh[bad[0], 0]} does not match its "
                            f"image {s.images[k]} ({ih[bad[0], 1]}x{ih[bad[0], 0]})")

    def _assemble(self, feed: _BatchFeed, outs) -> RawBatch:
        spec, s = self.spec, self.samples
        has_masks = s.masks is not None
        if self._files and has_masks:
            self._check_sizes(feed, outs[2], outs[3])
        if self._windows and self._parallel:  # the cuts' windows, again, from the headers DALI peeked
            hw = np.array(outs[2 if has_masks else 1].as_array())[:, :2]
            feed.windows = np.asarray([crop_window(spec, self.epoch, int(k), int(r), int(h), int(w))
                                       for k, r, (h, w) in zip(feed.ids, feed.roles, hw)], np.int64)
        imgs = self._to_torch(outs[0], "image", feed)  # (U, H, W, 3)
        if has_masks:
            msks = self._to_torch(outs[1], "mask", feed)[..., 0]  # (U, H, W)
        else:
            msks = torch.full(imgs.shape[:3], 255, dtype=torch.uint8, device=imgs.device)
        dev = imgs.device
        pi = torch.from_numpy(feed.pos_i).to(dev)
        pj = torch.from_numpy(feed.pos_j).to(dev)
        obj, mask, ctx, ctx_mask = crop_pairs(spec, self.epoch, feed.index, feed.partner,
                                              imgs[pi], msks[pi], imgs[pj], msks[pj])
        extra = {}
        if feed.windows is not None:
            extra = {"window_i": torch.from_numpy(feed.windows[feed.pos_i]),
                     "window_j": torch.from_numpy(feed.windows[feed.pos_j])}
        return {**extra, "obj": obj, "mask": mask, "ctx": ctx, "ctx_mask": ctx_mask,
                "flip": torch.from_numpy(flip_flags(spec, self.epoch, feed.index)),
                "label": torch.from_numpy(np.ascontiguousarray(s.labels[feed.index])),
                "index": torch.from_numpy(feed.index.astype(np.int64)),
                "partner": torch.from_numpy(feed.partner.astype(np.int64))}

    def _diagnose(self, pending: Sequence[_BatchFeed], err: Exception) -> None:
        """Turn a DALI decoding error into a DataError naming the file.

        DALI's message names the sample's place in a batch, not the file, and the failing batch may
        be one of those prefetched; PIL decodes the files of those batches again to find it.
        """
        s = self.samples
        if not self._files:
            raise err
        files: List[str] = []
        for feed in pending:
            for k in feed.ids:
                k = int(k)
                files.append(s.images[k])
                try:
                    s.image(k)  # raises a DataError naming the file if it cannot be decoded
                    if s.masks is not None:
                        files.append(s.masks[k])
                        s.mask(k)
                except DataError as e:
                    raise DataError(f"{e} (sample {k})") from err
        first = next((ln.strip() for ln in str(err).splitlines() if "decode" in ln.lower()),
                     str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise DataError(f"{s.name}: DALI could not decode one of {len(files)} files ({', '.join(files[:4])}"
                        f"{', ...' if len(files) > 4 else ''}), which PIL reads: {first}") from err
