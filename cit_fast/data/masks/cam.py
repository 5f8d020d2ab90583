"""``--method cam``: an object mask from a class activation map, the paper's "g = a pre-trained
model" (Eq. 8) when no saliency network is at hand.

The map (any callable: image [+ its class name] -> map in [0, 1] at the image's size; the command
layer builds one from the user's classifier) is the prior that ``saliency.grabcut_refine`` turns
into a mask, exactly as the default method refines its saliency map: Otsu's split of the map seeds
GrabCut's colour models, GrabCut snaps the cut to colour edges.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
from PIL import Image

from .saliency import RBD_SIDE, clean_mask, grabcut_refine, opencv, resize_long_side, upsample_mask

# uint8 (H, W, 3) image, its class name or None -> (float (H, W) map in [0, 1], the class it shows)
ClassMap = Callable[[np.ndarray, Optional[str]], Tuple[np.ndarray, int]]


class CamMasker:
    """uint8 (H, W, 3) image [+ its folder's class name] -> uint8 (H, W) mask in {0, 255}."""

    uses_class = True  # the mask job passes the image's class folder name

    def __init__(self, cam: ClassMap, what: str):
        opencv()  # GrabCut and the clean-up: one error line without OpenCV, before any image
        self.cam = cam
        self.what = what  # the map, for the log (e.g. "Grad-CAM of a resnet18 state dict ...")

    def describe(self) -> str:
        return f"masks by cam: {self.what}, refined with GrabCut"

    def __call__(self, img: np.ndarray, class_name: Optional[str] = None) -> np.ndarray:
        cam, _ = self.cam(img, class_name)
        work = resize_long_side(img, *RBD_SIDE)
        prior = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(work.shape[1::-1], Image.BILINEAR))
        return upsample_mask(clean_mask(grabcut_refine(work, prior)), img.shape[:2])
