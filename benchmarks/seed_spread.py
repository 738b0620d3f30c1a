#!/usr/bin/env python
"""How much a FID at n samples moves with the seed alone: one model and sampler, drawn from several seeds, each draw
scored in both feature spaces, and the real floor drawn from as many seeds of real training digits.

    python benchmarks/seed_spread.py checkpoints/book/ldm.safetensors --vae checkpoints/book/vae.safetensors \\
        --sampler ddim --steps 50 --seeds 0 1 2 3 4 --n 2000          # → results/book/seed_spread_ldm.json

    python benchmarks/seed_spread.py checkpoints/book/vae.safetensors --seeds 0 1 2 3 4 5 6 7 8 9
        # a VAE: its reconstructions of each seed's floor digits   → results/book/seed_spread_vae.json

    python benchmarks/seed_spread.py checkpoints/book/ddpm.safetensors --guide checkpoints/book/ddpm_guide.safetensors \
        --guidance 1.25 --sampler ddim --steps 50 --eta 1 \\
        --out results/book/seed_spread_ddpm_autoguided_w125_ddim_50.json
        # autoguidance: the model guided by a worse version of itself (DiffusionModel.sample(guide=...))

A sweep or a table that compares two samplers at one seed each reads a difference that the seed alone can make as
a difference between the samplers; this measures the size of that. For each seed the model draws ``n`` samples and
:func:`mnistdiff.evaluation.metrics.evaluate` scores them; the floor is :func:`~mnistdiff.evaluation.metrics.
real_floor` at the same ``n`` from each seed (other real digits). The file gives every draw and, per space, the
mean, the standard deviation and the range of the model's FID, precision and recall, and of the floor's. A rerun
into the same file keeps the draws it holds for the same weights, sampler, ``n`` and CPU, and draws only the seeds it
lacks (seeds 0-4 there, ``--seeds 0 1 2 3 4 5 6 7 8 9`` draws five more).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnistdiff.config import VAE_KIND  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.classifier import FEATURE_SPACES  # noqa: E402
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, floor_images, real_floor, space_key  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_json  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402
from mnistdiff.modelfile import load_vae, read_model_meta  # noqa: E402
from mnistdiff.sampling import interval_record  # noqa: E402
from mnistdiff.vae import VAE  # noqa: E402


def spread(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation (n − 1) and range of ``values``."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


#: What :func:`summary` spreads, in each feature space.
SUMMARISED = ("fid", "precision", "recall")


def summary(draws: list[dict]) -> dict[str, dict[str, float]]:
    """:func:`spread` of each space's FID, precision and recall over ``draws`` (keys as in :func:`space_key`)."""
    return {space_key(m, s): spread([d[space_key(m, s)] for d in draws]) for s in FEATURE_SPACES for m in SUMMARISED}


def earlier_draws(out: Path, doc: dict) -> dict[int, tuple[dict, dict]]:
    """Each seed's (draw, floor) metrics in an earlier ``out`` of the same weights, sampling, ``n`` and device as
    ``doc``; none where the file is missing or differs in any of them."""
    if not out.is_file():
        return {}
    old = json.loads(out.read_text())
    if any(old.get(k) != doc[k] for k in ("device", "n", "sampling")) or \
            old.get("model", {}).get("weights_sha256") != doc["model"]["weights_sha256"]:
        return {}
    strip = lambda row: {k: v for k, v in row.items() if k != "seed"}
    return {d["seed"]: (strip(d), strip(f)) for d, f in zip(old["draws"], old["floors"])}


def draw(model: DiffusionModel | VAE, seed: int, args: argparse.Namespace, options: dict) -> tuple[dict, dict]:
    """``args.n`` samples from ``seed`` and as many real training digits, each scored in both spaces (a model's
    samples' class balance too: the largest class share's distance from 10 %); a VAE's "samples" are its
    reconstructions of those same real digits (what its floor ratio measures)."""
    if isinstance(model, VAE):
        images = model.reconstruct(floor_images(args.n, seed).to(args.device)).cpu()
    else:
        images, _ = model.sample(args.n, seed=seed, device=args.device, precision="fp32", **options)
    m = evaluate(images, seed=seed, device=args.device, include_memorisation=False)
    f = real_floor(args.n, seed=seed, device=args.device, include_memorisation=False)
    balance = {} if isinstance(model, VAE) else {"class_max_deviation": m["class_max_deviation"]}
    return {**distribution_metrics(m), **balance}, distribution_metrics(f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--vae", type=Path, default=None, help="the VAE a latent model was trained on")
    p.add_argument("--sampler", default=None, help="default: the model's own")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--guide", type=Path, default=None, help="autoguidance: a worse version of the model (its file)")
    p.add_argument("--guidance", type=float, default=None, help="the autoguidance weight (default: the package's)")
    p.add_argument("--guidance_interval", type=float, nargs=2, default=None, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="guided only at noise levels SIGMA_LO < sigma <= SIGMA_HI (inf: no upper end; default with "
                        "--guide: the package's, DEFAULT_AUTOGUIDANCE_INTERVAL)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--profile", default="book")
    p.add_argument("--out", type=Path, default=None, help="default results/<profile>/seed_spread_<kind>.json")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("a spread needs at least two seeds")
    torch.manual_seed(0)
    options = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("eta", args.eta)) if v is not None}
    if read_model_meta(args.model)["kind"] == VAE_KIND:
        if options or args.vae or args.guide:
            p.error("a VAE file is scored by its reconstructions: --sampler, --steps, --eta, --vae and --guide do not "
                    "apply")
        model, kind, sampling = load_vae(args.model, device=args.device), VAE_KIND, {"reconstruction": True}
    else:
        model = DiffusionModel.load(args.model, vae=args.vae, device=args.device)
        spacing = model.spacing(options.get("sampler", model.sampling_defaults()["sampler"]))
        sigmas = model.karras_range if spacing == "karras" else {}
        kind = model.kind
        sampling = {**model.sampling_defaults(), **options, "precision": "fp32", "spacing": spacing, **sigmas}
        if args.guide is not None:
            guide = DiffusionModel.load(args.guide, vae=args.vae, device=args.device)
            w = args.guidance if args.guidance is not None else model.sampling_defaults(guide=True)["guidance"]
            options.update(guide=guide, guidance=w)
            sampling.update(guidance=w, guide={"file": str(args.guide), "weights_sha256": guide.meta["weights_sha256"]})
        interval = args.guidance_interval or (model.sampling_defaults(guide=True)["guidance_interval"]
                                              if args.guide is not None else None)
        if interval is not None:
            options.update(guidance_interval=tuple(interval))
            sampling.update(guidance_interval=interval_record(interval))
    doc = {"device": device_name(args.device), "date": dt.date.today().isoformat(), "n": args.n,
           "model": {"file": str(args.model), "kind": kind, "weights_sha256": model.meta["weights_sha256"]},
           "sampling": sampling}
    out = args.out or results_dir() / args.profile / f"seed_spread_{kind}.json"
    kept = earlier_draws(out, doc)
    draws, floors = [], []
    for seed in args.seeds:
        m, f = kept.get(seed) or draw(model, seed, args, options)
        draws.append({"seed": seed, **m})
        floors.append({"seed": seed, **f})
        print(f"seed {seed}{' (kept)' if seed in kept else ''}: "
              + "  ".join(f"{s}: FID {m[space_key('fid', s)]:.3f} (floor {f[space_key('fid', s)]:.3f})"
                          for s in FEATURE_SPACES), flush=True)
    doc.update(draws=draws, floors=floors, spread=summary(draws), floor_spread=summary(floors))
    atomic_write_json(out, doc)
    for s in FEATURE_SPACES:
        g, f = doc["spread"][space_key("fid", s)], doc["floor_spread"][space_key("fid", s)]
        print(f"{s}: FID {g['mean']:.3f} ± {g['std']:.3f} (range {g['min']:.3f}-{g['max']:.3f}); "
              f"floor {f['mean']:.3f} ± {f['std']:.3f}")
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
