"""Per-digit style statistics (ink, saturated and edge pixels, slant = cov(x, y)/var(y) of the ink, height) of real
floor digits and of sample tensors: 10 / 50 / 90 % quantiles. usage: style.py SAMPLES.pt ..."""

import sys

import torch

from mnistdiff.evaluation.metrics import floor_images

torch.set_num_threads(2)


def desc(name, x):
    x = ((x[..., 2:30, 2:30].clamp(-1, 1) + 1) / 2)[:, 0]
    ink = x.mean((1, 2))
    sat = (x > 0.9).float().mean((1, 2))
    part = ((x > 0.1) & (x < 0.9)).float().mean((1, 2))
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    m = x.sum((1, 2)) + 1e-6
    cy = (x * ys).sum((1, 2)) / m
    cx = (x * xs).sum((1, 2)) / m
    cov_xy = (x * (xs - cx[:, None, None]) * (ys - cy[:, None, None])).sum((1, 2)) / m
    var_y = (x * (ys - cy[:, None, None]) ** 2).sum((1, 2)) / m
    slant = cov_xy / var_y
    q = lambda v: " ".join(f"{t:.3f}" for t in torch.quantile(v, torch.tensor([0.1, 0.5, 0.9])))
    print(
        f"{name:22s} ink {q(ink)} | sat {q(sat)} | edge {q(part)} | slant {q(slant)} sd {slant.std():.3f} "
        f"| h {q(var_y.sqrt())}"
    )


desc("real", floor_images(2000, 0))
desc("real s1", floor_images(2000, 1))
for p in sys.argv[1:]:
    desc(p.split("/")[-1][:-3], torch.load(p))
