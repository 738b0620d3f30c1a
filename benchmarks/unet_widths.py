#!/usr/bin/env python
"""Training speed of UNet shapes on this machine: parameters and images/s of one training step each.

    python benchmarks/unet_widths.py            # bf16 autocast (what the book profile's probe picks on bf16 CPUs)
    python benchmarks/unet_widths.py --fp32

One forward + backward + AdamW step at batch 128 on 1×32×32 inputs, two warm-up steps, four timed; printed with the
CPU's name. Issue 22 used it to price capacity before training it (``checkpoints/book/candidates/*/README.md``).
Time nothing while another job shares the cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnistdiff.config import UNetConfig  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.unet import UNet, count_parameters  # noqa: E402

SHAPES = {
    "book (24, 1-2-2, 1 block, attn 8)": dict(base_channels=24, channel_mults=(1, 2, 2), num_res_blocks=1,
                                              attention_resolutions=(8,)),
    "base 32": dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,)),
    "mults 1-2-4": dict(base_channels=24, channel_mults=(1, 2, 4), num_res_blocks=1, attention_resolutions=(8,)),
    "2 blocks": dict(base_channels=24, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(8,)),
    "full (32, 2 blocks, attn 16 and 8)": dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2,
                                               attention_resolutions=(16, 8)),
}


def images_per_second(cfg: UNetConfig, bf16: bool, batch: int = 128, warmup: int = 2, steps: int = 4) -> float:
    """Images per second of one training step of a UNet built from ``cfg``."""
    torch.manual_seed(0)
    net = UNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x, t = torch.randn(batch, 1, 32, 32), torch.randint(0, 1000, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x, t)
        loss = (out.float() - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", action="store_true", help="time in float32 instead of bf16 autocast")
    args = p.parse_args()
    print(f"{device_name('cpu')}; {'fp32' if args.fp32 else 'bf16 autocast'}, batch 128")
    for name, kw in SHAPES.items():
        cfg = UNetConfig(**kw)
        speed = images_per_second(cfg, not args.fp32)
        print(f"{name:38s} {count_parameters(UNet(cfg)):>10,d} parameters  {speed:6.1f} img/s  "
              f"epoch of 60,000 ≈ {60000 / speed:4.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
