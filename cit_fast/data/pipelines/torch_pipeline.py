"""The PyTorch implementation of the pipeline contract: Dataset + DataLoader, PIL decode, workers.

The DataLoader's sampler yields whole batches of (index, partner) keys and the dataset fetches a
batch per key, so in-memory data is gathered with one fancy-index per column and files
are decoded in worker processes, each sample of a batch once even when it is both an object and a
context (with ``decode_reuse`` that is every sample).

Where the blend runs: after the loader, in ``compose``, on every device: on a GPU the Triton
kernel (one pass over the uint8 batch that crossed the bus), on a CPU ``kernels.composite_cpu``.
Composing inside the workers was tried on the CPU and measured slower (bench/pipeline.py, 960
images, 2 workers: 1.81x the naive loader vs 2.52x after it): the workers then hand over float32
model inputs, four times the bytes of the uint8 batch, and the shared-memory hand-over (new pages
in both processes every batch) cost more than the composite itself.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .batch import RawBatch
from .contract import (Pipeline, PipelineSpec, crop_pairs, crop_window, decode_set, eval_geometry, flip_flags,
                       uses_windows, window_uses)
from ..sources.records import DataError, SampleSet, named_decode_errors, open_image

DRAFT_FACTORS = (8, 4, 2)  # the JPEG decoder's DCT scalings (PIL's Image.draft)


def _resize(images: List[np.ndarray], masks: List[np.ndarray], size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(H,W,3) images and their (H,W) masks, sizes may differ -> (U,size,size,3), (U,size,size) uint8.

    torch's uint8 antialiased bilinear, batched over images of one size: it matches PIL's BILINEAR
    (and DALI's linear resize) within a level at a fraction of PIL's cost, and with more than one
    image in channels-last layout it writes (U,S,S,3) directly, no transposition.
    """
    out_i = np.empty((len(images), size, size, 3), np.uint8)
    out_m = np.empty((len(images), size, size), np.uint8)
    groups: Dict[tuple, List[int]] = {}
    for k, im in enumerate(images):
        groups.setdefault(im.shape, []).append(k)
    for shape, ks in groups.items():
        imgs, msks = np.stack([images[k] for k in ks]), np.stack([masks[k] for k in ks])
        if shape[:2] == (size, size):
            out_i[ks], out_m[ks] = imgs, msks
            continue
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2)  # (N,3,H,W) channels-last view
        out_i[ks] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False).permute(0, 2, 3, 1).numpy()
        out_m[ks] = F.interpolate(torch.from_numpy(msks)[:, None], size=(size, size), mode="bilinear",
                                  antialias=True, align_corners=False)[:, 0].numpy()
    return out_i, out_m


def _decoded(im, path: str, kind: str, mode: str):
    """``im`` decoded to ``mode``; a DataError naming the file if it cannot be."""
    with named_decode_errors(kind, path):
        return im.convert(mode)


def draft_factor(windows, size: int) -> int:
    """The largest DCT scaling (1/8, 1/4, 1/2) at which every window keeps at least twice ``size``
    pixels on both sides, 1 (full size) otherwise. With the 2x margin the antialiased resize still
    does most of the reduction: measured against DALI's full decode on photos, 0.15-0.3 grey levels
    mean difference (0.1 without drafting); decoding right down to ``size`` gave 0.7-1.3."""
    short = min(min(h, w) for _, _, h, w in windows)
    return next((f for f in DRAFT_FACTORS if short >= 2 * f * size), 1)


def _hwc_tensor(a: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 array (a PIL image's, read-only) -> (1, C, H, W) channels-last view of a copy."""
    return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None]


def _resized_crop(x: torch.Tensor, window, size: int) -> np.ndarray:
    """(1, C, H, W) uint8 -> the window (top, left, height, width) cut and resized to (size, size, C), as
    torchvision's ``resized_crop`` (crop, then antialiased bilinear): torch's uint8 kernel, vectorised for a
    contiguous channels-last crop; within a grey level of PIL's (tested)."""
    top, left, h, w = window
    crop = x[:, :, top:top + h, left:left + w].contiguous(memory_format=torch.channels_last)
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def _draft(im, factor: int) -> int:
    """Ask PIL's JPEG decoder for 1/factor of the size; the factor it applied (1 if none)."""
    if factor == 1 or im.format != "JPEG":
        return 1
    w, h = im.size
    im.draft("RGB", (w // factor, h // factor))
    for f in (8, 4, 2):
        if im.size == (-(-w // f), -(-h // f)):
            return f
    return 1


class CompositeDataset(Dataset):
    """Fetches batches of (object, its mask, context partner, the partner's mask) by key."""

    def __init__(self, samples: SampleSet, spec: PipelineSpec, epoch: int):
        self.samples, self.spec, self.epoch = samples, spec, epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """Decoded image (H,W,3) and mask (H,W) of sample i, uint8."""
        s = self.samples
        img = s.image(i)
        msk = s.mask(i) if s.masks is not None else np.full(img.shape[:2], 255, np.uint8)
        if img.shape[:2] != msk.shape[:2]:
            where = s.masks[i] if isinstance(s.masks, list) else f"{s.name}, sample {i}"
            raise DataError(f"mask {where}: size {msk.shape[1]}x{msk.shape[0]} does not match its image "
                            f"({img.shape[1]}x{img.shape[0]})")
        return img, msk

    def _fast_path(self) -> bool:
        s, spec = self.samples, self.spec
        return s.in_memory and not spec.image_size and not (spec.train and spec.crop_padding)

    def __getitem__(self, key: Tuple[np.ndarray, np.ndarray]) -> Dict[str, np.ndarray]:
        return self._fetch(key)

    def _fetch(self, key: Tuple[np.ndarray, np.ndarray]) -> Dict[str, np.ndarray]:
        """``_fetch_samples`` of the batch; a sample that cannot be read stops the run with one
        DataError naming its file and index (on_bad_sample=error), or (skip) is left out with the
        samples paired with it ("bad": the unreadable ones, "bad_dropped": how many samples left),
        every other sample keeping its partner, flip and crop."""
        index, partner = key
        bad: List[int] = []
        n = len(index)
        while True:
            try:
                out = self._fetch_samples((index, partner))
                break
            except DataError as e:
                k = _culprit(self.samples, str(e), np.concatenate([index, partner]))
                if k is None:
                    raise
                if self.spec.on_bad_sample != "skip":
                    raise DataError(f"{e} (sample {k}); data.on_bad_sample=skip trains on without it") from None
                keep = (index != k) & (partner != k)
                if not keep.any():
                    raise DataError(f"{e} (sample {k}): no sample of its batch is left to train on") from None
                bad.append(k)
                index, partner = index[keep], partner[keep]
        if bad:
            out.update(bad=np.array(bad, np.int64), bad_dropped=np.int64(n - len(index)))
        return out

    def _fetch_samples(self, key: Tuple[np.ndarray, np.ndarray]) -> Dict[str, np.ndarray]:
        """key = (indices, partners) of one whole batch.

        In-memory data without resizing or cropping: the raw batch itself. Otherwise the batch's
        distinct samples, each decoded (and resized) once -- "images" (U,H,W,3), "masks" (U,H,W)
        and where each index/partner sits among them ("pos_i", "pos_j") -- which ``_assemble``
        turns into the raw batch after the loader: half the transfer when partners share the batch.
        """
        index, partner = key
        s = self.samples
        out = {"flip": flip_flags(self.spec, self.epoch, index), "label": s.labels[index],
               "index": index, "partner": partner}
        if uses_windows(self.spec):
            return dict(out, **self._fetch_windows(index, partner))
        if self._fast_path():
            obj, ctx = s.images[index], s.images[partner]
            if s.masks is None:
                mask = np.full(obj.shape[:3], 255, np.uint8)
                ctx_mask = mask
            else:
                mask, ctx_mask = s.masks[index], s.masks[partner]
            return dict(out, obj=obj, mask=mask, ctx=ctx, ctx_mask=ctx_mask)
        ids, pos_i, pos_j = decode_set(index, partner)
        loaded = [self._load(int(k)) for k in ids]  # each sample decoded once
        if self.spec.image_size:
            imgs, msks = _resize([im for im, _ in loaded], [m for _, m in loaded], self.spec.image_size)
        else:
            shapes = {im.shape for im, _ in loaded}
            if len(shapes) > 1:
                raise DataError(f"{s.name}: images of different sizes {sorted(shapes)} in one batch; "
                                f"set data.image_size to resize them")
            imgs, msks = np.stack([im for im, _ in loaded]), np.stack([m for _, m in loaded])
        return dict(out, images=imgs, masks=msks, pos_i=pos_i, pos_j=pos_j)


    def _pil(self, k: int):
        """Sample k as (lazily decoded PIL image, PIL mask or None, source path or '')."""
        from PIL import Image

        s = self.samples
        if isinstance(s.images, np.ndarray):
            im, path = Image.fromarray(s.images[k]), ""
        else:
            path = s.images[k]
            im = open_image(path, "image")
        if s.masks is None:
            return im, None, path
        if isinstance(s.masks, np.ndarray):
            return im, Image.fromarray(s.masks[k]), path
        return im, open_image(s.masks[k], "mask"), path

    def _fetch_windows(self, index: np.ndarray, partner: np.ndarray) -> Dict[str, np.ndarray]:
        """Each (sample, role) of the batch cut from its window and resized to image_size (antialiased
        bilinear, as torchvision's resized_crop: torch's uint8 kernel in training, PIL's in evaluation, exact
        to torchvision's Resize + CenterCrop there): training uses random-resized windows (``crop_window``),
        evaluation resizes the shorter side to eval_resize and cuts the centre. Each file is decoded
        once; a JPEG at 1/2, 1/4 or 1/8 size (``draft``) when all its windows stay at least image_size
        there, the window then scaled to the decoded pixels (the same region of the image).
        """
        from PIL import Image

        spec, s = self.spec, self.samples
        size = spec.image_size
        uses, pos_i, pos_j = window_uses(spec, index, partner)
        by_sample: Dict[int, List[int]] = {}
        for u, (k, _) in enumerate(uses):
            by_sample.setdefault(k, []).append(u)
        n = len(uses)
        imgs = np.empty((n, size, size, 3), np.uint8)
        msks = np.empty((n, size, size), np.uint8)
        windows = np.zeros((n, 4), np.int64)
        for k, us in by_sample.items():
            im, mk, path = self._pil(k)
            w_full, h_full = im.size
            if mk is not None and mk.size != im.size:
                where = s.masks[k] if isinstance(s.masks, list) else f"{s.name}, sample {k}"
                raise DataError(f"mask {where}: size {mk.size[0]}x{mk.size[1]} does not match its image "
                                f"({w_full}x{h_full})")
            wins = [crop_window(spec, self.epoch, k, uses[u][1], h_full, w_full) for u in us]
            windows[us] = wins
            if spec.train:
                f = _draft(im, draft_factor(wins, size)) if spec.draft else 1
                im = _decoded(im, path, "image", "RGB")
                mk = None if mk is None else _decoded(mk, s.masks[k] if isinstance(s.masks, list) else "", "mask", "L")
                # torch's uint8 antialiased kernel (crop, then resize: torchvision's resized_crop), 4x PIL's
                # resize on RGB; a drafted JPEG is at 1/f of the mask's pixels: PIL cuts its window from the
                # scaled pixels. Masks are never drafted: the same bytes either way.
                img_t = _hwc_tensor(np.asarray(im)) if f == 1 else None
                msk_t = None if mk is None else _hwc_tensor(np.asarray(mk)[..., None])
                for u, win in zip(us, wins):
                    if img_t is not None:
                        imgs[u] = _resized_crop(img_t, win, size)
                    else:
                        top, left, h, w = win
                        box = (left / f, top / f, (left + w) / f, (top + h) / f)
                        imgs[u] = np.asarray(im.resize((size, size), Image.BILINEAR, box=box))
                    msks[u] = 255 if msk_t is None else _resized_crop(msk_t, win, size)[..., 0]
            else:  # torchvision's Resize(eval_resize) then CenterCrop(image_size)
                rh, rw, top, left = eval_geometry(h_full, w_full, spec.eval_resize, size)
                im = _decoded(im, path, "image", "RGB").resize((rw, rh), Image.BILINEAR)
                imgs[us] = np.asarray(im)[top:top + size, left:left + size]
                if mk is None:
                    msks[us] = 255
                else:
                    mk = _decoded(mk, s.masks[k] if isinstance(s.masks, list) else "", "mask", "L")
                    msks[us] = np.asarray(mk.resize((rw, rh), Image.BILINEAR))[top:top + size, left:left + size]
        return dict(images=imgs, masks=msks, pos_i=pos_i, pos_j=pos_j,
                    window_i=windows[pos_i], window_j=windows[pos_j])


def _assemble(b: RawBatch, spec: PipelineSpec, epoch: int) -> RawBatch:
    """Distinct decoded samples -> the raw batch: pair each object and context with its mask, crop."""
    if "images" not in b:
        return b
    imgs, msks, pi, pj = b.pop("images"), b.pop("masks"), b.pop("pos_i"), b.pop("pos_j")
    if imgs.is_cuda:  # gather on the GPU: only the distinct images crossed the bus
        pi, pj = pi.to(imgs.device), pj.to(imgs.device)
        obj, mask, ctx, ctx_mask = imgs[pi], msks[pi], imgs[pj], msks[pj]
    else:  # np.take copies whole rows (memcpy); torch's uint8 advanced indexing is far slower here
        i, m, pi, pj = imgs.numpy(), msks.numpy(), pi.numpy(), pj.numpy()
        obj, mask, ctx, ctx_mask = (torch.from_numpy(np.take(a, p, axis=0)) for a, p in ((i, pi), (m, pi), (i, pj), (m, pj)))
    obj, mask, ctx, ctx_mask = crop_pairs(spec, epoch, b["index"].numpy(), b["partner"].numpy(),
                                          obj, mask, ctx, ctx_mask)
    return dict(b, obj=obj, mask=mask, ctx=ctx, ctx_mask=ctx_mask)


def _culprit(samples: SampleSet, message: str, ids: np.ndarray) -> Optional[int]:
    """The sample among ``ids`` whose image or mask file ``message`` names (the longest name that
    matches), or which it names as ``<set>, sample k``; None if none."""
    found, longest = None, 0
    for k in np.unique(ids).tolist():
        names = [str(files[k]) for files in (samples.images, samples.masks) if isinstance(files, (list, tuple))]
        names.append(f"{samples.name}, sample {k})")
        for name in names:
            if len(name) > longest and name in message + ")":
                found, longest = k, len(name)
    return found


def _to_tensors(batch):
    """A raw batch's arrays as tensors."""
    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
            for k, v in batch.items()}


class TorchPipeline(Pipeline):
    bad_samples = 0  # samples left out of training batches (data.on_bad_sample=skip)

    def _left_out(self, bad: List[int], dropped: int) -> None:
        """Count the samples a batch left out; log each unreadable file once."""
        import sys

        self.bad_samples += dropped
        seen = self.__dict__.setdefault("_bad_logged", set())
        for k in bad:
            if k not in seen:
                seen.add(k)
                files = self.samples.images
                name = f" ({files[k]})" if isinstance(files, (list, tuple)) else ""
                print(f"warning: data.on_bad_sample=skip: sample {k}{name} cannot be read; the samples whose "
                      f"object or context it is are left out ({self.bad_samples} so far)", file=sys.stderr)

    def _loader(self, keys) -> DataLoader:
        ds = CompositeDataset(self.samples, self.spec, self.epoch)
        return DataLoader(ds, batch_size=None, sampler=keys, collate_fn=_to_tensors,
                          num_workers=self.spec.num_workers,
                          pin_memory=self.spec.device.type == "cuda",
                          prefetch_factor=4 if self.spec.num_workers else None,
                          # its own generator: drawing worker seeds from the global RNG would
                          # shift a resumed run's dropout stream by one draw
                          generator=torch.Generator().manual_seed(self.spec.seed * 1000003 + self.epoch))

    def raw_batches(self) -> Iterator[RawBatch]:
        keys = self.batch_keys()
        if not keys:
            return
        loader = self._loader(keys)
        gpu = self.spec.device.type == "cuda"
        for b in loader:
            if "bad" in b:
                self._left_out(b.pop("bad").tolist(), int(b.pop("bad_dropped")))
            if gpu and "images" in b:
                b["images"] = b["images"].to(self.spec.device, non_blocking=True)
                b["masks"] = b["masks"].to(self.spec.device, non_blocking=True)
            yield _assemble(b, self.spec, self.epoch)
