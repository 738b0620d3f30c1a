#!/usr/bin/env python
"""Does DDIM-50's timestep spacing carry the pixel DDPM's gap in the ResNet's space? DDIM (η = 1, 50 network calls)
on other lists of timesteps than the package's evenly spaced one, each scored in both feature spaces.

    python benchmarks/ddim_spacing.py checkpoints/book/ddpm.safetensors --n 1000 --seeds 0 \\
        --spacings linspace karras_0.2 quadratic power_1.5 karras_0.0064 logsnr_0.2 lin967
    python benchmarks/ddim_spacing.py checkpoints/book/ddpm.safetensors --n 1000 --seeds 10 11 12 \\
        --spacings linspace logsnr_0.2                      # → results/book/ddim_spacing.json

Spacings (T = 1000, the cosine schedule's σ_t = √((1 − ᾱ_t)/ᾱ_t)): ``linspace``, the package's (T − 1 … 0);
``quadratic`` and ``power_<p>``, t = (T − 1)·(i/49)^p (Song et al.'s quadratic list, p = 2, from T − 1), denser at
low noise; ``karras_<σ_min>[_<ρ>]``, T − 1 and then 49 timesteps nearest (in log σ) to Karras et al.'s σ from 20
(the solvers' σ_max) to σ_min; ``logsnr_<σ_min>``, the same evenly in log σ (DPM-Solver's "logSNR" steps);
``lin967``, T − 1 and then evenly from t = 967 (σ = 20). Repeated timesteps are dropped (``steps`` records how
many remain). DDIM's last step goes to ᾱ = 1, so a list that ends at σ_min returns that step's x̂_0. Each seed
draws ``n`` samples per spacing (batches of 256 from one generator, as ``DiffusionModel.sample``); every spacing is
scored against the floor of ``n`` real digits at seed 0, so rows of one seed compare like with like.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnistdiff.ddim import ddim_sample_loop, ddim_timesteps  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, real_floor  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_json  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402
from mnistdiff.schedules import NoiseSchedule  # noqa: E402
from mnistdiff.solvers import karras_sigmas, schedule_sigmas  # noqa: E402

SIGMA_MAX, STEPS = 20.0, 50


def _distinct(ts: list[int]) -> list[int]:
    """``ts`` with every timestep not below the one before dropped."""
    out: list[int] = []
    for t in ts:
        if not out or t < out[-1]:
            out.append(t)
    return out


def spacing_timesteps(sched: NoiseSchedule, name: str) -> list[int]:
    """The DDIM timestep indices (decreasing) of the spacing ``name`` (see the module's docstring)."""
    T, n = sched.num_timesteps, STEPS - 1
    log_sig = schedule_sigmas(sched).log()
    nearest = lambda s: int(torch.argmin((log_sig - math.log(s)).abs()))  # noqa: E731
    kind, *args = name.split("_")
    if kind == "linspace":
        return ddim_timesteps(T, STEPS)
    if kind in ("quadratic", "power"):
        p = 2.0 if kind == "quadratic" else float(args[0])
        return _distinct([round((T - 1) * (i / n) ** p) for i in range(n, -1, -1)])
    if kind == "karras":
        rho = float(args[1]) if len(args) > 1 else 7.0
        return _distinct([T - 1] + [nearest(s) for s in karras_sigmas(float(args[0]), SIGMA_MAX, n, rho=rho)])
    if kind == "logsnr":
        lo, hi = math.log(float(args[0])), math.log(SIGMA_MAX)
        return _distinct([T - 1] + [nearest(math.exp(hi + i / (n - 1) * (lo - hi))) for i in range(n)])
    if kind == "lin967":
        return _distinct([T - 1] + [round(967 * (1 - i / (n - 1))) for i in range(n)])
    raise ValueError(f"unknown spacing {name!r}")


def draw(model: DiffusionModel, timesteps: list[int], n: int, seed: int, device: str) -> torch.Tensor:
    """``n`` DDIM samples (η = 1) over ``timesteps``, in batches of 256 from one generator seeded ``seed``."""
    gen, out = torch.Generator(device=device).manual_seed(seed), []
    for start in range(0, n, 256):
        shape = (min(256, n - start), *model.sample_shape)
        out.append(ddim_sample_loop(model.unet, model.schedule, shape, eta=1.0, generator=gen, device=device,
                                    timesteps=timesteps).images.cpu())
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--spacings", nargs="+", default=["linspace", "logsnr_0.2"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="default results/book/ddim_spacing.json")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    model = DiffusionModel.load(args.model, device=args.device)
    out = args.out or results_dir() / "book" / "ddim_spacing.json"
    doc = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    floor = distribution_metrics(real_floor(args.n, seed=0, device=args.device, include_memorisation=False))
    doc.update(model={"file": str(args.model), "weights_sha256": model.meta["weights_sha256"]}, n=args.n,
               floor=floor, date=dt.date.today().isoformat(), device=device_name(args.device))
    for seed in args.seeds:
        for name in args.spacings:
            ts = spacing_timesteps(model.schedule, name)
            m = evaluate(draw(model, ts, args.n, seed, args.device), seed=0, device=args.device,
                         include_memorisation=False)
            row = {"seed": seed, "spacing": name, "steps": len(ts), "timesteps": ts, **distribution_metrics(m)}
            doc["rows"] = [r for r in doc["rows"] if (r["seed"], r["spacing"]) != (seed, name)] + [row]
            atomic_write_json(out, doc)
            print(f"seed {seed} {name} ({len(ts)} steps): FID {row['fid']:.3f} / ResNet {row['fid_resnet']:.3f} "
                  f"(floor {floor['fid']:.3f} / {floor['fid_resnet']:.3f}; {doc['device']})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
