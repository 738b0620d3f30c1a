"""Denoise 1,000 real test digits at fixed t with the book DDPM and each given weight file (state dicts of the same
UNet); per t the faint fraction of the clipped x0-hat and the eps-MSE. usage: denoise_faint.py WEIGHTS ..."""

import copy
import sys

import torch
from safetensors.torch import load_file

from mnistdiff.data import load_mnist, to_uint8
from mnistdiff.model import DiffusionModel

torch.set_num_threads(2)
x0 = load_mnist("test").subset(1000, 0).images
m = DiffusionModel.load("checkpoints/book/ddpm.safetensors")
sched = m.schedule


def faint(x):
    u = to_uint8(x[..., 2:30, 2:30]).float()
    return ((u > 0) & (u < 26)).float().mean().item()


for path in ["base"] + sys.argv[1:]:
    net = copy.deepcopy(m.network).eval()
    if path != "base":
        net.load_state_dict(load_file(path))
    row = []
    for t in [0, 5, 10, 20, 41, 82, 122, 180, 250, 400]:
        gen = torch.Generator().manual_seed(7 + t)
        eps = torch.randn(x0.shape, generator=gen)
        a = sched.sqrt_alphas_cumprod[t]
        b = sched.sqrt_one_minus_alphas_cumprod[t]
        xt = a * x0 + b * eps
        with torch.no_grad():
            e = torch.cat([net(xt[i : i + 250], torch.full((250,), t)).float() for i in range(0, 1000, 250)])
        row.append(f"t={t}:{faint((xt - b * e) / a):.3f}/{((e - eps) ** 2).mean():.4f}")
    print(path.split("/")[-1], " ".join(row), flush=True)
