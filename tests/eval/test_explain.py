import numpy as np
import torch
import torch.nn.functional as F

from cit_fast.eval.explain import overlay
from cit_fast.models.cam import grad_cam
from cit_fast.models import create_model


def region_dataset(n=256, size=16, seed=0):
    """Class 1 iff a bright 4x4 patch sits somewhere in the top-left quadrant; class 0 is noise
    only. The one piece of evidence for class 1 is that region."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 0.5
    y = torch.arange(n) % 2
    for i in range(n):
        r0 = int(torch.randint(0, 4, (1,), generator=g))
        c0 = int(torch.randint(0, 4, (1,), generator=g))
        if y[i] == 1:
            x[i, :, r0:r0 + 4, c0:c0 + 4] = 1.0
    return x, y


def test_grad_cam_peaks_on_the_region_the_answer_depends_on():
    torch.manual_seed(0)
    x, y = region_dataset()
    model = create_model("resnet8", num_classes=2)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(6):
        for b in range(0, len(x), 32):
            loss = F.cross_entropy(model(x[b:b + 32]), y[b:b + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = region_dataset(64, seed=1)
    assert (model(xt).argmax(1) == yt).float().mean() > 0.9  # it learned the region rule
    cam = grad_cam(model, xt[yt == 1], torch.ones(int((yt == 1).sum()), dtype=torch.long))
    assert cam.shape == (32, 16, 16) and cam.min() >= 0 and cam.max() <= 1
    top_left = cam[:, :8, :8].mean()
    rest = (cam.sum((1, 2)) - cam[:, :8, :8].sum((1, 2))).mean() / (16 * 16 - 64)
    assert top_left > 2 * rest, (float(top_left), float(rest))
    # the argmax of the mean map lies in the top-left quadrant
    r, c = divmod(int(cam.mean(0).argmax()), 16)
    assert r < 8 and c < 8


def test_overlay_is_an_image():
    img = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    cam = np.zeros((8, 8))
    cam[:4, :4] = 1
    out = overlay(img, cam)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[:4, :4, 0].mean() > out[4:, 4:, 0].mean()  # hot region is redder
