"""Content/context separation, the paper's function g: the mask makers, image (H, W, 3) uint8 ->
mask (H, W) uint8 (255 = object/content, 0 = context). ``cit-fast masks`` runs them over a dataset
(job.py: workers, ranks, restarts; outputs.py: where masks go and the report). Mask makers:

- ``SaliencyMasker`` (no weights), ``method``:
  - ``grabcut`` (the default): robust-background saliency (below) refined with GrabCut (Rother et
    al. 2004) under a border-is-background prior: the saliency map seeds GrabCut's colour models
    (very salient = object, salient = probably object, the rest = probably context, a thin image
    border outside the salient region = context) and GrabCut snaps the mask to colour edges.
  - ``rbd``: saliency optimisation from robust background detection (Zhu, Liang, Wei & Sun, CVPR
    2014) over SLIC superpixels (Achanta et al. 2012): a region is background in proportion to how
    much of it, measured along geodesic colour paths, touches the image border; contrast against
    the background and a smoothness term give the map; thresholded with Otsu.
  - ``spectral`` (Hou & Zhang, CVPR 2007) and ``fine_grained`` (Montabone & Soto, 2010): OpenCV's
    static saliency, Otsu and clean-up. Kept for comparison:
    on photos they mark edges and small bright details (eyes, a rim, lamps), see bench/RESULTS.md.
- ``TorchMasker``: a segmentation/saliency model from a local checkpoint, never downloaded: a
  TorchScript file, or a state dict for a torchvision segmentation architecture.
- ``cam.CamMasker`` (``--method cam``): the class activation map of the user's own classifier
  (``eval.cam`` loads it), refined with the same ``grabcut_refine``.

The image primitives (SLIC, GrabCut, blur, Otsu, morphology, connected components) are OpenCV's
with its contrib modules, the ``masks`` extra; without it a mask maker is one error line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image

from ...errors import DataError, UsageError

WORK_SIDE = 256  # pixels: the longer side at which spectral / fine-grained saliency is computed and cleaned
RBD_SIDE = (64, 192)  # pixels: rbd / grabcut work with the longer side in this range (small images upscaled)
SALIENCY_METHODS = ("grabcut", "rbd", "spectral", "fine_grained")
DEFAULT_METHOD = "grabcut"
SEGMENTATION_ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                      "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large")

Masker = Callable[[np.ndarray], np.ndarray]  # uint8 (H, W, 3) RGB -> uint8 (H, W) in {0, 255}


def opencv():
    """cv2 with its contrib modules (saliency, ximgproc); a UsageError line naming the extra without it."""
    try:
        import cv2

        cv2.saliency, cv2.ximgproc  # noqa: B018 -- the contrib modules
        return cv2
    except (ImportError, AttributeError):
        raise UsageError("object masks need OpenCV with its contrib modules: pip install 'cit_fast[masks]' "
                         "(opencv-contrib-python-headless)") from None


# ---------------------------------------------------------------------------------------------
# image primitives


def otsu_threshold(x: np.ndarray) -> int:
    """Otsu's threshold of a uint8 array: the level that maximises the between-class variance
    (values above it are the upper class)."""
    cv2 = opencv()
    t, _ = cv2.threshold(np.ascontiguousarray(x if x.ndim == 2 else x.reshape(1, -1)), 0, 255,
                         cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return int(t)


def rgb_to_lab(img: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) sRGB -> float64 (h, w, 3) CIE L*a*b* (D65), L in [0, 100].

    In float64: OpenCV's float32 conversion differs by up to ~0.3 units, which moves superpixel
    colours and so the masks."""
    c = img.astype(np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    rgb_to_xyz = np.array([[0.412453, 0.357580, 0.180423],
                           [0.212671, 0.715160, 0.072169],
                           [0.019334, 0.119193, 0.950227]])
    xyz = c @ rgb_to_xyz.T / np.array([0.950456, 1.0, 1.088754])  # relative to the D65 white
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    L = np.where(xyz[..., 1] > 0.008856, 116 * f[..., 1] - 16, 903.3 * xyz[..., 1])
    return np.stack([L, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def superpixels(img: np.ndarray, n_segments: int = 200) -> np.ndarray:
    """int (h, w) labels 0..n-1 of OpenCV's SLICO superpixels (Achanta et al. 2012), connected."""
    cv2 = opencv()
    h, w = img.shape[:2]
    step = max(2, int(np.sqrt(h * w / n_segments)))
    sp = cv2.ximgproc.createSuperpixelSLIC(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB),
                                           cv2.ximgproc.SLICO, step, 10.0)
    sp.iterate(10)
    sp.enforceLabelConnectivity(25)
    return np.unique(sp.getLabels(), return_inverse=True)[1].reshape(h, w)


def robust_background_saliency(img: np.ndarray, n_segments: int = 200, clip: float = 0.5, sigma_clr: float = 10.0, sigma_bnd: float = 1.0,
                               sigma_spa: float = 0.25, mu: float = 0.1) -> np.ndarray:
    """Saliency optimisation from robust background detection (Zhu et al., CVPR 2014).

    uint8 (h, w, 3) RGB -> float (h, w) in [0, 1]. Over superpixels (nodes): the geodesic colour
    distance between regions (shortest paths over adjacent regions; all border regions linked) gives
    each region its spanning area and the length of border it reaches; boundary connectivity
    BndCon = length / sqrt(area) is large for background, small for an object even when it touches
    the border a little. Background weights from BndCon, background-weighted contrast as foreground
    weights, and a smoothness term between neighbours: the saliency s solves one linear system
    (the paper's Eq. 8: min sum w_bg s^2 + w_fg (s - 1)^2 + sum w_ij (s_i - s_j)^2).

    clip: steps shorter than `clip` x the mean nearest-neighbour colour distance cost nothing on a
    geodesic path (the weight clipping of Wei et al., ECCV 2012), so a smooth gradient (a sky)
    does not add up to a barrier.
    """
    lab = rgb_to_lab(img)
    h, w = lab.shape[:2]
    labels = superpixels(img, n_segments)
    n = int(labels.max()) + 1
    flat = labels.ravel()
    count = np.bincount(flat, minlength=n).astype(np.float64)
    colour = np.stack([np.bincount(flat, lab[..., j].ravel(), n) for j in range(3)], 1) / count[:, None]  # (n, 3)
    if n < 2 or np.ptp(colour, axis=0).max() < 1.0:  # one colour (within 1 Lab unit): nothing stands out
        return np.zeros((h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    centre = np.stack([np.bincount(flat, (yy / h).ravel(), n), np.bincount(flat, (xx / w).ravel(), n)], 1) \
        / count[:, None]  # (n, 2), in [0, 1]
    adj = np.zeros((n, n), bool)
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        adj[a.ravel(), b.ravel()] = adj[b.ravel(), a.ravel()] = True
    np.fill_diagonal(adj, False)
    border = np.zeros(n, bool)
    border[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    d_app = np.sqrt(((colour[:, None] - colour[None]) ** 2).sum(-1))  # (n, n) Lab distance
    step = d_app
    if clip > 0 and adj.any():
        nearest = np.where(adj, d_app, np.inf).min(1)
        step = np.maximum(d_app - clip * nearest[np.isfinite(nearest)].mean(), 0)
    linked = adj.copy()
    linked[np.ix_(border, border)] = True
    np.fill_diagonal(linked, False)
    geo = np.where(linked, step, np.inf)
    np.fill_diagonal(geo, 0)
    for k in range(n):  # Floyd-Warshall: all geodesic distances (n is a few hundred)
        np.minimum(geo, geo[:, k:k + 1] + geo[k:k + 1, :], out=geo)
    span = np.exp(-geo ** 2 / (2 * sigma_clr ** 2))  # (n, n) soft "same region"
    bnd_con = span[:, border].sum(1) / np.sqrt(span.sum(1))
    w_bg = 1 - np.exp(-bnd_con ** 2 / (2 * sigma_bnd ** 2))
    w_spa = np.exp(-((centre[:, None] - centre[None]) ** 2).sum(-1) / (2 * sigma_spa ** 2))
    w_ctr = (d_app * w_spa * w_bg[None]).sum(1)  # background-weighted contrast
    w_fg = (w_ctr - w_ctr.min()) / (np.ptp(w_ctr) + 1e-12)
    smooth = np.where(adj, np.exp(-d_app ** 2 / (2 * sigma_clr ** 2)) + mu, 0)
    system = np.diag(w_bg + w_fg + smooth.sum(1)) - smooth  # diag(w_bg + w_fg) + graph Laplacian
    sal = np.linalg.solve(system, w_fg)
    if np.ptp(sal) < 1e-6:
        return np.zeros((h, w))
    sal = (sal - sal.min()) / np.ptp(sal)
    return sal[labels]


# ---------------------------------------------------------------------------------------------
# GrabCut refinement (saliency or a class activation map as the prior)


def grabcut_seeds(prior: np.ndarray, border: float = 0.02) -> np.ndarray:
    """float (h, w) prior in [0, 1] -> uint8 (h, w) GrabCut labels (cv2.GC_BGD=0, GC_FGD=1,
    GC_PR_BGD=2, GC_PR_FGD=3).

    Above Otsu's threshold t: probably object; above t + (1 - t) / 2: object; below t: probably
    context; the image border (`border` x the longer side) below t: context, the border-is-background
    prior (only where the prior does not say object, so an object touching the border is kept).
    """
    h, w = prior.shape
    p8 = np.round(np.clip(prior, 0, 1) * 255).astype(np.uint8)
    t = otsu_threshold(p8) if p8.max() > p8.min() else 255
    salient = p8 > t
    seeds = np.where(salient, 3, 2).astype(np.uint8)
    seeds[p8 > t + (255 - t) / 2] = 1
    bw = max(1, round(border * max(h, w)))
    edge = np.zeros((h, w), bool)
    edge[:bw], edge[-bw:], edge[:, :bw], edge[:, -bw:] = True, True, True, True
    seeds[edge & ~salient] = 0
    return seeds


def grabcut_refine(img: np.ndarray, prior: np.ndarray, iters: int = 4, border: float = 0.02) -> np.ndarray:
    """uint8 (h, w, 3) RGB + float (h, w) prior in [0, 1] -> bool (h, w) object mask (OpenCV GrabCut).

    The prior seeds GrabCut (``grabcut_seeds``); GrabCut fits colour models to object and context
    and cuts along colour edges. When the seeds hold only one side (a flat prior) the prior's own
    Otsu split is returned.
    """
    cv2 = opencv()
    seeds = grabcut_seeds(prior, border)
    fg = (seeds == 1) | (seeds == 3)
    if fg.all() or not fg.any():
        return fg
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models by k-means on OpenCV's global RNG: same image, same mask
    try:
        cv2.grabCut(np.ascontiguousarray(img[..., ::-1]), seeds, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate colour models (e.g. a flat image): keep the prior's split
        return fg
    return (seeds == 1) | (seeds == 3)


def resize_long_side(img: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Resize so that the longer side lies in [lo, hi] (bicubic when enlarging, bilinear when shrinking)."""
    h, w = img.shape[:2]
    side = max(h, w)
    target = min(max(side, lo), hi)
    if target == side:
        return img
    s = target / side
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC if s > 1 else Image.BILINEAR))


# ---------------------------------------------------------------------------------------------
# the built-in detector


def _odd(x: float) -> int:
    k = max(3, int(round(x)))
    return k if k % 2 else k + 1


def clean_mask(binary: np.ndarray, keep_ratio: float = 0.3, morph: float = 0.03) -> np.ndarray:
    """bool (h, w) -> bool: opening and closing, components of >= keep_ratio x the largest, holes filled.

    morph: the structuring element's side as a fraction of the longer image side.
    """
    cv2 = opencv()
    h, w = binary.shape
    k = _odd(morph * max(h, w))
    m = binary.astype(np.uint8) * 255
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    areas[0] = 0
    if areas.max(initial=0) == 0:
        return np.zeros((h, w), bool)
    keep = areas >= keep_ratio * areas.max()
    keep[0] = False
    obj = keep[labels]
    # holes: background not connected to the border
    n, lab, _, _ = cv2.connectedComponentsWithStats((~obj).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    holes = (~obj) & ~np.isin(lab, border)
    return obj | holes


@dataclass
class SaliencyMasker:
    """A mask from a saliency map, needing no weights (see the module doc). method: one of
    SALIENCY_METHODS."""

    method: str = DEFAULT_METHOD
    keep_ratio: float = 0.3  # keep components at least this fraction of the largest
    blur: float = 0.01  # Gaussian smoothing of the saliency map, sigma as a fraction of the longer side
    morph: float = 0.02  # opening/closing element, as a fraction of the longer side
    n_segments: int = 200  # rbd / grabcut: SLIC superpixels per image

    def __post_init__(self) -> None:
        if self.method not in SALIENCY_METHODS:
            raise UsageError(f"--method: expected one of {', '.join(SALIENCY_METHODS)} (or cam), got {self.method!r}")
        self._cv2 = opencv()

    def describe(self) -> str:
        """One line for the run's log: what computes the masks."""
        what = {"grabcut": "robust-background saliency refined with GrabCut",
                "rbd": "robust-background saliency (superpixels) + Otsu",
                "spectral": "spectral-residual saliency + Otsu",
                "fine_grained": "fine-grained saliency + Otsu"}[self.method]
        return f"masks by {self.method}: {what}"

    def _rbd(self, work: np.ndarray) -> np.ndarray:
        return robust_background_saliency(work, self.n_segments)

    def _object(self, img: np.ndarray) -> np.ndarray:
        """rbd / grabcut: uint8 (H, W, 3) -> bool (h, w) at the working size."""
        work = resize_long_side(img, *RBD_SIDE)
        sal = self._rbd(work)
        if self.method == "grabcut":
            binary = grabcut_refine(work, sal)
        else:
            s8 = np.round(sal * 255).astype(np.uint8)
            binary = s8 > otsu_threshold(s8) if s8.max() > s8.min() else np.zeros(s8.shape, bool)
        return clean_mask(binary, self.keep_ratio, morph=self.morph)

    def saliency(self, img: np.ndarray) -> np.ndarray:
        """spectral / fine_grained: uint8 (H, W, 3) -> float32 (h, w) in [0, 1] at the working size
        (longer side <= WORK_SIDE); rbd / grabcut: the robust-background map at their working size."""
        if self.method in ("rbd", "grabcut"):
            return self._rbd(resize_long_side(img, *RBD_SIDE)).astype(np.float32)
        h, w = img.shape[:2]
        scale = min(1.0, WORK_SIDE / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        work = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR)) if scale < 1 else img
        cv2 = self._cv2
        bgr = np.ascontiguousarray(work[..., ::-1])
        det = (cv2.saliency.StaticSaliencySpectralResidual_create() if self.method == "spectral"
               else cv2.saliency.StaticSaliencyFineGrained_create())
        ok, sal = det.computeSaliency(bgr)
        if not ok:
            return np.zeros(work.shape[:2], np.float32)
        sal = sal.astype(np.float32)
        sigma = self.blur * max(sal.shape)
        sal = cv2.GaussianBlur(sal, (_odd(6 * sigma),) * 2, sigma)
        lo, hi = float(sal.min()), float(sal.max())
        return ((sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)).astype(np.float32)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.method in ("rbd", "grabcut"):
            return upsample_mask(self._object(img), img.shape[:2])
        sal = self.saliency(img)
        s8 = np.round(sal * 255).astype(np.uint8)
        if s8.max() == s8.min():
            binary = np.zeros(s8.shape, bool)
        else:
            binary = s8 > otsu_threshold(s8)
        m = clean_mask(binary, self.keep_ratio, morph=self.morph)
        return upsample_mask(m, img.shape[:2])


def upsample_mask(m: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """bool (h, w) -> uint8 (H, W) in {0, 255}, smooth edges thresholded at half."""
    im = Image.fromarray(m.astype(np.uint8) * 255)
    if im.size != (hw[1], hw[0]):
        im = im.resize((hw[1], hw[0]), Image.BILINEAR)
    return np.where(np.asarray(im) >= 128, 255, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# a model from a local checkpoint


class TorchMasker:
    """Object masks from a local segmentation/saliency model (never downloaded).

    checkpoint: a TorchScript file, or a state dict (optionally under "state_dict"/"model") for
    ``arch``, one of SEGMENTATION_ARCHS built without pretrained weights. The model sees the image
    resized to input_size x input_size with ImageNet normalisation. A one-channel output is a
    saliency/foreground map (logits, or probabilities in [0, 1]) thresholded at ``threshold``;
    several channels are classes, and every pixel whose argmax is not ``background`` is object.
    """

    def __init__(self, checkpoint: str, arch: str = "", num_classes: int = 0, input_size: int = 320,
                 threshold: float = 0.5, background: int = 0, device: str = "", clean: bool = True):
        import torch

        p = Path(checkpoint)
        if not p.is_file():
            raise DataError(f"mask model {checkpoint}: file not found (models are only loaded from local files)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.input_size, self.threshold, self.background, self.clean = input_size, threshold, background, clean
        if clean:
            opencv()  # clean_mask's primitives: one error line now, not at the first image
        self.model = self._load(p, arch, num_classes).to(self.device).eval()
        self.what = f"{arch or 'TorchScript'} model {p.name}"

    def describe(self) -> str:
        return f"masks by --model: {self.what} at {self.input_size} px on {self.device}"

    @staticmethod
    def _load(p: Path, arch: str, num_classes: int):
        import torch

        try:
            return torch.jit.load(str(p), map_location="cpu")
        except Exception as jit_error:  # not TorchScript: a state dict for a known architecture
            if not arch:
                raise DataError(f"mask model {p}: not a TorchScript file ({type(jit_error).__name__}); for a "
                                f"state dict give its architecture with --arch ({', '.join(SEGMENTATION_ARCHS)})") from None
        if arch not in SEGMENTATION_ARCHS:
            raise DataError(f"mask model {p}: unknown --arch {arch!r}; known: {', '.join(SEGMENTATION_ARCHS)}")
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(f"mask model {p}: cannot load a state dict ({type(e).__name__}: {e})") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise DataError(f"mask model {p}: expected a state dict, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if not num_classes:  # from the final classifier layer
            head = "classifier.high_classifier.weight" if arch.startswith("lraspp") else "classifier.4.weight"
            if head not in state:
                raise DataError(f"mask model {p}: no {head!r} in the state dict to infer the number of "
                                f"classes from; give --num-classes (or check --arch {arch})")
            num_classes = int(state[head].shape[0])
        import torchvision.models.segmentation as seg

        kw = dict(weights=None, weights_backbone=None, num_classes=num_classes)
        if "aux_classifier." in "".join(state):
            kw["aux_loss"] = True
        model = getattr(seg, arch)(**kw)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise DataError(f"mask model {p}: state dict does not fit {arch} with {num_classes} classes: "
                            f"{str(e).splitlines()[0]}") from None
        return model

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return self.batch([img])[0]

    def batch(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """The masks of ``images`` (uint8 (H, W, 3), any sizes) from one forward pass: each resized to
        input_size, the outputs resized back to each image's size; uint8 0/255 of the image's size each."""
        import torch
        import torch.nn.functional as F

        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device)[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device)[:, None, None]
        x = torch.cat([F.interpolate(torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1)[None]
                                     .float() / 255, size=(self.input_size, self.input_size), mode="bilinear",
                                     antialias=True, align_corners=False) for img in images])
        with torch.inference_mode():
            out = self.model((x - mean) / std)
        if isinstance(out, dict):
            out = out["out"]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        masks = []
        for b, img in enumerate(images):
            h, w = img.shape[:2]
            o = F.interpolate(out[b:b + 1].float(), size=(h, w), mode="bilinear", align_corners=False)[0]  # (C, H, W)
            if o.shape[0] == 1:
                prob = o[0] if (o.min() >= 0 and o.max() <= 1) else torch.sigmoid(o[0])
                m = (prob > self.threshold).cpu().numpy()
            else:
                m = (o.argmax(0) != self.background).cpu().numpy()
            if self.clean:
                m = clean_mask(m)
            masks.append(m.astype(np.uint8) * 255)
        return masks


def make_masker(method: str = DEFAULT_METHOD, model: str = "", arch: str = "", num_classes: int = 0,
                input_size: int = 320, threshold: float = 0.5, device: str = "") -> Masker:
    """A saliency method (no weights) or, with ``model``, a local segmentation/saliency model.
    (``--method cam`` is built by ``eval.cam.make_cam_masker``: it loads the user's classifier.)"""
    if model:
        return TorchMasker(model, arch, num_classes, input_size, threshold, device=device)
    return SaliencyMasker(method)
