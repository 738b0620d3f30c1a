"""Pixel statistics of sample tensors (.pt, (N, 1, 32, 32) in [-1, 1]) beside 2 x 2,000 real training digits: ink,
exact-zero background, faint pixels (uint8 1-25), total variation. usage: pixel_stats.py SAMPLES.pt ..."""

import sys

import torch

from mnistdiff.data import load_mnist, to_uint8

torch.set_num_threads(2)


def stats(name, x):
    x = x.float()
    if x.shape[-1] == 32:
        x = x[..., 2:30, 2:30]
    u = to_uint8(x).float()
    bg = (u <= 0).float().mean().item()
    low = ((u > 0) & (u < 26)).float().mean().item()
    mid = ((u >= 26) & (u < 230)).float().mean().item()
    hi = (u >= 230).float().mean().item()
    tv = (u[..., 1:, :] - u[..., :-1, :]).abs().mean().item() / 255 + (
        u[..., :, 1:] - u[..., :, :-1]
    ).abs().mean().item() / 255
    ink = (u / 255).mean().item()
    print(
        f"{name:12s} n={x.shape[0]:5d} ink={ink:.4f} bg0={bg:.4f} faint(1-25)={low:.4f} mid={mid:.4f} "
        f"sat(>=230)={hi:.4f} tv={tv:.4f}"
    )


tr = load_mnist("train").images
stats("real train", tr[:2000])
stats("real train2", tr[2000:4000])
stats("ddim50 s0", torch.load("/work/scratch/imgs_linspace_n1000_s0.pt"))
stats("sde16 s0", torch.load("/work/scratch/imgs_sde16_n256_s0.pt"))
for f in sys.argv[1:]:
    stats(f.split("/")[-1][:12], torch.load(f))
