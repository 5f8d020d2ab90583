"""Object masks for images that lack them: saliency methods (``saliency``) and mask quality
(``quality``: coverage summary, montage, IoU)."""
