"""Real photos with rough, hand-drawn object outlines, to check mask makers on photos, not only on
generated scenes (tests/data/test_saliency.py, bench/masks.py).

The photos ship inside installed wheels, nothing is downloaded: scikit-image's sample data (the
``[dev]`` extra) and, when installed, one each from scikit-learn and matplotlib (the ``[report]``
extra). The outlines are polygons drawn by eye on the original pixels, a few pixels off along the
edges (whiskers, spokes and the rocket's gantry are not followed): an IoU against them is
meaningful to about +-0.05, enough to tell a mask of the object from one of its details.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ...utils import atomic_path

Polygon = List[Tuple[float, float]]  # (x, y) in the photo's pixels

# name -> (package, loader, outline): the object a CIT user would call the photo's content
_PHOTOS: Dict[str, Tuple[str, str, Polygon]] = {
    "chelsea": ("skimage", "chelsea", [  # the cat fills the frame and touches three borders
        (0, 120), (25, 60), (40, 0), (395, 0), (380, 40), (360, 90), (368, 150), (355, 210), (340, 250),
        (345, 300), (0, 300)]),
    "coffee": ("skimage", "coffee", [  # cup, spoon and saucer
        (173, 45), (200, 22), (290, 15), (380, 25), (408, 50), (420, 68), (416, 110), (450, 140), (475, 200),
        (470, 270), (440, 320), (380, 365), (290, 388), (190, 380), (120, 345), (85, 290), (78, 220), (95, 150),
        (135, 105), (175, 85)]),
    "rocket": ("skimage", "rocket", [  # the rocket and its pad, not the towers
        (310, 140), (318, 126), (330, 135), (336, 160), (337, 350), (355, 365), (358, 405), (375, 405),
        (375, 427), (268, 427), (268, 405), (290, 400), (292, 360), (307, 345)]),
    "astronaut": ("skimage", "astronaut", [  # the astronaut with her helmet, not the flag or the model
        (160, 40), (195, 18), (250, 15), (290, 40), (300, 100), (290, 145), (300, 160), (345, 260), (360, 310),
        (365, 345), (420, 342), (480, 365), (505, 420), (512, 512), (20, 512), (22, 330), (45, 250), (110, 210),
        (120, 170), (160, 150), (152, 95)]),
    "motorcycle": ("skimage", "stereo_motorcycle", [
        (92, 200), (150, 160), (330, 130), (400, 120), (460, 130), (490, 90), (540, 95), (580, 120), (560, 200),
        (600, 270), (650, 300), (685, 380), (670, 440), (610, 445), (560, 380), (520, 330), (470, 360),
        (420, 390), (330, 410), (275, 385), (230, 395), (170, 400), (130, 360), (118, 280), (95, 240)]),
    "flower": ("sklearn", "flower.jpg", []),  # the dahlia in the centre: a circle, below
    "hopper": ("matplotlib", "grace_hopper.jpg", [(x * 512 / 410, y * 512 / 410) for x, y in [
        (150, 25), (205, 18), (265, 28), (290, 70), (298, 100), (285, 140), (290, 200), (265, 250), (330, 285),
        (380, 320), (400, 380), (410, 480), (10, 480), (20, 330), (60, 290), (160, 250), (135, 190), (120, 130),
        (125, 80)]]),
}
SKIMAGE_PHOTOS = tuple(k for k, (pkg, _, _) in _PHOTOS.items() if pkg == "skimage")


def _load(package: str, name: str) -> np.ndarray:
    if package == "skimage":
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if name == "stereo_motorcycle" else img  # (left, right, disparity)
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data(name) as f:
        return np.asarray(Image.open(f).convert("RGB"))


def _outline_mask(name: str, shape: Tuple[int, int]) -> np.ndarray:
    h, w = shape
    if name == "flower":
        yy, xx = np.mgrid[0:h, 0:w]
        return (xx - 309) ** 2 + (yy - 213) ** 2 < 138 ** 2
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).polygon(_PHOTOS[name][2], fill=255)
    return np.asarray(m) > 0


def sample_photos(names: Optional[Sequence[str]] = None, skip_missing: bool = False
                  ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """name -> (uint8 (H, W, 3) photo, bool (H, W) rough object mask). names: default all; with
    skip_missing, photos whose package is not installed are left out instead of raising ImportError."""
    out = {}
    for name in names or list(_PHOTOS):
        package, loader, _ = _PHOTOS[name]
        try:
            img = _load(package, loader)
        except ImportError:
            if skip_missing:
                continue
            raise
        img = np.ascontiguousarray(img[..., :3])
        out[name] = (img, _outline_mask(name, img.shape[:2]))
    return out


def write_photo_folder(root, per_class: int = 40, size: int = 96, seed: int = 0,
                       names: Sequence[str] = SKIMAGE_PHOTOS, quality: int = 90) -> Path:
    """A small real-photo classification set in torchvision's ImageFolder layout, ``root/<photo>/<photo>_NN.jpg``:
    ``per_class`` random crops (70-100% of each side, half of them mirrored) of each sample photo,
    resized to ``size`` x ``size`` JPEGs. Classes are the photos (astronaut, chelsea, coffee, ...); no
    masks: ``cit-fast masks root`` makes them. Deterministic in ``seed``; written atomically per file."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, (img, _) in sample_photos(names).items():
        h, w = img.shape[:2]
        for k in range(per_class):
            s = rng.uniform(0.7, 1.0)
            ch, cw = int(h * s), int(w * s)
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = img[y:y + ch, x:x + cw]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
            with atomic_path(root / name / f"{name}_{k:02d}.jpg") as tmp:
                out.save(tmp, format="JPEG", quality=quality)
    return root


__all__: Sequence[str] = ("SKIMAGE_PHOTOS", "sample_photos", "write_photo_folder")
