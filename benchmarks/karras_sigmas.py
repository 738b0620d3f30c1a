#!/usr/bin/env python
"""Where Karras et al.'s σ spacing should start and end on these models: one solver at one number of network calls,
with the spacing's σ_max and σ_min varied, scored in both feature spaces beside the real floor at the same n.

    python benchmarks/karras_sigmas.py --model checkpoints/book/ddpm.safetensors \\
        --sigma_max 5 10 20 40 80 --n 2000                    # → results/book/karras_sigmas.json
    python benchmarks/karras_sigmas.py --model checkpoints/book/ddpm.safetensors \\
        --sigma_min 0.006 0.05 0.1 0.2 0.35 --n 2000
    python benchmarks/karras_sigmas.py --model checkpoints/book/ldm.safetensors \\
        --vae checkpoints/book/vae.safetensors --sigma_max 10 20 40 80 --n 2000

EDM's σ_max = 80 and σ_min = 0.002 were chosen for CIFAR-10 and ImageNet; each kind's ``karras_sigma_max``
(:attr:`mnistdiff.model.DiffusionModel.karras_sigma_max`: 20 for the pixel DDPM, 5 for the LDM) and
:data:`mnistdiff.solvers.KARRAS_SIGMA_MIN` are the package's choices for MNIST, read off this file (σ_min is kept at
or above the schedule's first σ, 0.0064 on the book's cosine schedule). Each configuration — every σ_max with every
σ_min asked for (each defaults to the package's) — draws ``n`` samples from seed 0 through
:meth:`~mnistdiff.model.DiffusionModel.sample` exactly as the package samples (the loop's two σ are the only thing
changed); the file is rewritten after each, and a rerun skips what it holds for the same weights and n. A run on
a retrained model (the same kind, other weights) drops the earlier model's rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.classifier import FEATURE_SPACES  # noqa: E402
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, real_floor, space_key  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_json  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402
from mnistdiff.solvers import KARRAS_SIGMA_MIN, schedule_sigmas  # noqa: E402


def draw(model: DiffusionModel, sampler: str, steps: int, sigmas: tuple[float, float], n: int,
         device: str) -> torch.Tensor:
    """``n`` samples (seed 0) by ``sampler`` on Karras σ from ``sigmas`` = (σ_max, σ_min): the package's own path,
    those two values changed."""
    karras = property(lambda self: {"sigma_max": sigmas[0], "sigma_min": sigmas[1]})
    with mock.patch.object(DiffusionModel, "karras_range", karras):
        images, _ = model.sample(n, sampler=sampler, steps=steps, seed=0, device=device, precision="fp32",
                                 spacing="karras")
    return images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a DDPM, LDM or CLDM model file")
    p.add_argument("--vae", type=Path, default=None, help="the VAE a latent model was trained on")
    p.add_argument("--sampler", default="dpmpp_2m_sde", choices=("dpmpp_2m", "dpmpp_2m_sde", "heun"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sigma_max", type=float, nargs="+", default=None, help="default: the model's own")
    p.add_argument("--sigma_min", type=float, nargs="+", default=[KARRAS_SIGMA_MIN])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--profile", default="book", help="results/<profile>/ gets the file")
    p.add_argument("--out", type=Path, default=None, help="default results/<profile>/karras_sigmas.json")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out = args.out or results_dir() / args.profile / "karras_sigmas.json"
    doc = json.loads(out.read_text()) if out.is_file() else {}
    if doc.get("n") != args.n:
        floor = real_floor(args.n, seed=0, device=args.device, include_memorisation=False)
        doc = {"n": args.n, "floor": distribution_metrics(floor), "rows": []}
    model = DiffusionModel.load(args.model, vae=args.vae, device=args.device)
    doc.update(device=device_name(args.device), date=dt.date.today().isoformat(), package_sigma_min=KARRAS_SIGMA_MIN)
    doc["package_sigma_max"] = {**doc.get("package_sigma_max", {}), model.kind: model.karras_sigma_max}
    sha, first = model.meta["weights_sha256"], float(schedule_sigmas(model.schedule)[0])
    stale = [r for r in doc["rows"] if r["model"] == model.kind and r["weights_sha256"] != sha]
    if stale:  # a retrained model: the old one's rows describe no model the book loads (git keeps them)
        doc["rows"] = [r for r in doc["rows"] if r not in stale]
        print(f"dropped {len(stale)} rows of an earlier {model.kind} (other weights)")
    for sigmas in [(hi, max(lo, first)) for hi in args.sigma_max or [model.karras_sigma_max] for lo in args.sigma_min]:
        row = {"model": model.kind, "file": str(args.model), "weights_sha256": sha, "sampler": args.sampler,
               "steps": args.steps, "nfe": model.nfe(args.sampler, args.steps), "sigma_max": sigmas[0],
               "sigma_min": sigmas[1]}
        same = ("weights_sha256", "sampler", "steps", "sigma_max", "sigma_min")
        if any(all(r[k] == row[k] for k in same) for r in doc["rows"]):
            continue
        m = evaluate(draw(model, args.sampler, args.steps, sigmas, args.n, args.device), seed=0,
                     device=args.device, include_memorisation=False)
        doc["rows"].append({**row, **distribution_metrics(m)})
        atomic_write_json(out, doc)
        print(f"{model.kind} {args.sampler} {args.steps} steps, σ from {sigmas[0]:g} to {sigmas[1]:g}: " + "  ".join(
            f"{s}: FID {m[space_key('fid', s)]:.3f} ({m[space_key('fid', s)] / doc['floor'][space_key('fid', s)]:.2f}×"
            " floor)" for s in FEATURE_SPACES), flush=True)
    atomic_write_json(out, doc)  # also when nothing was drawn: rows dropped above
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
