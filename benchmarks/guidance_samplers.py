#!/usr/bin/env python
"""Chapter 7's guidance sweep under other samplers: does a 10-call solver draw the same trade-off as DDIM-50?

    python benchmarks/guidance_samplers.py checkpoints/book/cldm.safetensors --vae checkpoints/book/vae.safetensors \\
        --samplers ddim:50 dpmpp_2m_sde:10 dpmpp_2m_sde:16 --seeds 0 1      # → results/book/guidance_samplers.json

For each sampler (``name:steps``; DDIM and DPM-Solver++(2M) SDE at the package's η, the solvers at their default
spacing) and each seed, :func:`mnistdiff.evaluation.guidance.guidance_sweep` draws ``n`` samples at every guidance
weight w of the book profile (ten of each digit per hundred, the same seed for every w) and scores them in both
feature spaces, with the digit accuracy. The real floor is drawn at the same n from each seed. ``means`` holds each
sampler's mean over the seeds at every weight (``"ddim-50"`` → ``"2"`` → metric), ``floor_mean`` the floors' mean:
what the book quotes. Timings are the sampling seconds of each draw on this machine; read them only from a run that
had the cores to itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from statistics import fmean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnistdiff.course.profiles import get_profile  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.guidance import guidance_sweep, sampler_run  # noqa: E402
from mnistdiff.evaluation.metrics import distribution_metrics, real_floor  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_json  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402

KEPT = ("label_accuracy", "sampling_seconds")


def parse_sampler(text: str) -> tuple[str, int]:
    """``"dpmpp_2m_sde:10"`` → ``("dpmpp_2m_sde", 10)``."""
    name, _, steps = text.partition(":")
    if not steps.isdigit():
        raise argparse.ArgumentTypeError(f"a sampler is name:steps, e.g. ddim:50, got {text!r}")
    return name, int(steps)


def mean_of(rows: list[dict]) -> dict[str, float]:
    """The mean of each metric over ``rows`` (one per seed)."""
    return {key: fmean(r[key] for r in rows) for key in rows[0] if key != "guidance"}


def seed_means(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Each sampler's mean over the seeds at every weight: ``"ddim-50"`` → ``"2"`` (w, as ``f"{w:g}"``) → metric."""
    means: dict[str, dict[str, dict[str, float]]] = {}
    for name in dict.fromkeys(sampler_run(run["sampler"], run["steps"]) for run in runs):
        seeds = [run for run in runs if sampler_run(run["sampler"], run["steps"]) == name]
        means[name] = {f"{row['guidance']:g}": mean_of([s["weights"][i] for s in seeds])
                       for i, row in enumerate(seeds[0]["weights"])}
    return means


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a class-conditional (cldm) model file")
    p.add_argument("--vae", type=Path, required=True, help="the VAE it was trained on")
    p.add_argument("--samplers", type=parse_sampler, nargs="+", default=[("ddim", 50), ("dpmpp_2m_sde", 10)])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--profile", default="book", help="whose guidance weights to sweep")
    p.add_argument("--out", type=Path, default=None, help="default results/<profile>/guidance_samplers.json")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    model = DiffusionModel.load(args.model, vae=args.vae, device=args.device)
    scales = get_profile(args.profile).guidance_scales
    floors = {str(seed): distribution_metrics(real_floor(args.n, seed=seed, device=args.device,
                                                         include_memorisation=False)) for seed in args.seeds}
    runs = []
    for name, steps in args.samplers:
        for seed in args.seeds:
            rows, _ = guidance_sweep(model, scales, args.n, sampler=name, steps=steps, seed=seed, device=args.device)
            runs.append({"sampler": name, "steps": steps, "nfe": model.nfe(name, steps), "seed": seed,
                         "spacing": model.spacing(name),
                         "weights": [{"guidance": r["guidance"], **distribution_metrics(r), **{k: r[k] for k in KEPT}}
                                     for r in rows.values()]})
            print(f"{name}-{steps}, seed {seed}: " + "  ".join(
                f"w={r['guidance']:g} FID {r['fid']:.3f}/{r['fid_resnet']:.3f} acc {r['label_accuracy']:.3f}"
                for r in rows.values()), flush=True)
    doc = {"device": device_name(args.device), "date": dt.date.today().isoformat(), "n": args.n,
           "model": {"file": str(args.model), "kind": model.kind, "weights_sha256": model.meta["weights_sha256"]},
           "guidance_scales": list(scales), "floors": floors, "runs": runs, "means": seed_means(runs),
           "floor_mean": mean_of(list(floors.values()))}
    out = args.out or results_dir() / args.profile / "guidance_samplers.json"
    atomic_write_json(out, doc)
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
