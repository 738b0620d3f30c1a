#!/usr/bin/env python
"""Quality against network calls: each model with each of its samplers at several numbers of network calls (NFE),
scored in both feature spaces, in one run.

    python benchmarks/nfe_sweep.py --model checkpoints/book/ddpm.safetensors \\
        --model checkpoints/book/flow.safetensors --n 2000    # → results/book/nfe_sweep.json

Each model is sampled with every step-count sampler it takes (``DiffusionModel.samplers``): a DDPM with DDIM at
η = 0 (the probability-flow ODE, comparable with a flow's solvers) and at the package's default η, DPM-Solver++(2M)
and EDM's Heun; a flow with Euler, Heun and DPM-Solver++(2M). NFE counts network calls per sample
(``DiffusionModel.nfe``): Heun makes two per step (EDM's one fewer at the end), so it runs the steps that make
exactly the NFE asked for, or is skipped there. Every configuration draws
``n`` samples from seed 0, timed (samples per second, on the CPU named in the file), and is scored by
:func:`mnistdiff.evaluation.metrics.evaluate` beside the real floor at the same ``n``. The file is rewritten after
each configuration and a rerun with the same ``n`` skips those already scored, so a run cut short keeps what it
measured. Time nothing while another job shares the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnistdiff.config import DEFAULT_ETA  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.classifier import FEATURE_SPACES  # noqa: E402
from mnistdiff.evaluation.metrics import evaluate, real_floor, space_key  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_text  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402

KEYS = ("fid", "precision", "recall")


def configurations(model: DiffusionModel, nfes: list[int]) -> list[dict]:
    """(sampler, steps, η, nfe) for each of ``model``'s step-count samplers at each NFE it can make exactly."""
    out = []
    for nfe in nfes:
        for sampler in model.samplers:
            if sampler == "ddpm":  # all T ancestral steps: not a step-count sampler
                continue
            etas = (0.0, DEFAULT_ETA) if sampler == "ddim" else (None,)
            steps = next((s for s in (nfe, nfe // 2, (nfe + 1) // 2) if s >= 1 and model.nfe(sampler, s) == nfe), 0)
            if not steps:  # e.g. a flow's Heun at an odd NFE
                continue
            out += [{"sampler": sampler, "steps": steps, "eta": eta, "nfe": nfe} for eta in etas]
    return out


def key(model_name: str, c: dict) -> str:
    eta = "" if c["eta"] is None else f"-eta{c['eta']:g}"
    return f"{model_name}:{c['sampler']}{eta}:{c['steps']}"


def score(model: DiffusionModel, c: dict, n: int, device: str) -> dict:
    """Draw ``n`` samples with configuration ``c`` (seed 0) in the model's precision, time them, and score them in
    both spaces."""
    extra = {} if c["eta"] is None else {"eta": c["eta"]}
    t0 = time.perf_counter()
    images, _ = model.sample(n, sampler=c["sampler"], steps=c["steps"], seed=0, device=device, **extra)
    seconds = time.perf_counter() - t0
    m = evaluate(images, seed=0, device=device, include_memorisation=False)
    metrics = {space_key(k, s): m[space_key(k, s)] for s in FEATURE_SPACES for k in KEYS}
    return {**c, "sampling_seconds": round(seconds, 2), "samples_per_second": round(n / seconds, 1), **metrics,
            "class_max_deviation": m["class_max_deviation"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="a pixel model file (ddpm or flow); repeat for several")
    p.add_argument("--n", type=int, default=2000, help="samples per configuration, and real digits in the floor")
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 10, 16, 32, 50, 64],
                   help="network calls per sample (10: issue 24's budget; 50: DDIM-50, the reference)")
    p.add_argument("--precision", default="auto", choices=("fp32", "bf16", "bf16_cl", "auto"),
                   help="how the network runs (auto: the fastest of fp32, bf16 and bf16_cl, measured here once per "
                        "model)")
    p.add_argument("--profile", default="book", help="results/<profile>/ gets the file")
    p.add_argument("--out", type=Path, default=None, help="default results/<profile>/nfe_sweep.json")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out = args.out or results_dir() / args.profile / "nfe_sweep.json"
    old = json.loads(out.read_text()) if out.is_file() else {}
    rows = {r["key"]: r for r in old.get("rows", [])} if old.get("n") == args.n else {}
    floor = real_floor(args.n, seed=0, device=args.device, include_memorisation=False)
    cpu = device_name(args.device)
    print(f"{cpu}; n = {args.n}; floor " + ", ".join(f"{s}: FID {floor[space_key('fid', s)]:.3f}"
                                                     for s in FEATURE_SPACES), flush=True)
    models = {}
    for path in args.model:
        model = DiffusionModel.load(path, device=args.device)
        if args.precision == "auto":
            model.measure_precision(args.device)  # once, before anything is timed
        else:
            model.precision = args.precision
        name = model.kind
        models[name] = {"file": str(path), "weights_sha256": model.meta["weights_sha256"],
                        "training_seconds": model.meta.get("seconds"), "precision": model.precision}
        for c in configurations(model, args.nfe):
            k = key(name, c)
            if k in rows and rows[k].get("weights_sha256") == model.meta["weights_sha256"]:
                continue
            rows[k] = {"key": k, "model": name, "weights_sha256": model.meta["weights_sha256"],
                       **score(model, c, args.n, args.device)}
            r = rows[k]
            print(f"{k:28s} NFE {r['nfe']:3d}  {r['samples_per_second']:7.1f} samples/s  " + "  ".join(
                f"{s}: FID {r[space_key('fid', s)] / floor[space_key('fid', s)]:5.1f}× floor, "
                f"P {r[space_key('precision', s)]:.3f} R {r[space_key('recall', s)]:.3f}" for s in FEATURE_SPACES),
                flush=True)
            doc = {"device": cpu, "n": args.n, "precision": args.precision, "date": dt.date.today().isoformat(),
                   "torch": torch.__version__.split("+")[0], "models": {**old.get("models", {}), **models},
                   "floor": {k2: floor[k2] for k2 in floor if isinstance(floor[k2], float)},
                   "rows": sorted(rows.values(), key=lambda x: (x["model"], x["sampler"], str(x["eta"]), x["nfe"]))}
            atomic_write_text(out, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
