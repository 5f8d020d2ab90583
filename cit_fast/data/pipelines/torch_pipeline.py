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

from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .batch import RawBatch
from .contract import Pipeline, PipelineSpec, crop_pairs, decode_set, flip_flags
from ..sources.records import DataError, SampleSet


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


def _to_tensors(batch):
    """A raw batch's arrays as tensors."""
    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
            for k, v in batch.items()}


class TorchPipeline(Pipeline):
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
            if gpu and "images" in b:
                b["images"] = b["images"].to(self.spec.device, non_blocking=True)
                b["masks"] = b["masks"].to(self.spec.device, non_blocking=True)
            yield _assemble(b, self.spec, self.epoch)
