#!/usr/bin/env python
"""Why is deterministic DDIM (η = 0) worse than stochastic sampling on a briefly trained model?

Samples one trained DDPM checkpoint several ways from the same seed and prints, for each, the
share of background pixels that are not black (> 10/255; real test digits: measured beside it),
the classifier's confidence and most common class, and FID / precision / recall against the test
set (``mnistdiff.metrics.evaluate``). Variants: the EMA weights or the raw weights of the run's
``last.pt``; η = 0 or 1; x̂_0 clipped or not. Writes JSON to ``--out``.

    python scripts/eta_study.py checkpoints/book/ddpm.pt --last checkpoints/book/runs/<run>-ddpm/checkpoints/last.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mnistdiff.checkpoints import atomic_write_text, load_checkpoint
from mnistdiff.data import load_mnist, to_uint8
from mnistdiff.experiment import device_name
from mnistdiff.metrics import evaluate
from mnistdiff.pipelines import load_ddpm


def grain(images: torch.Tensor) -> float:
    """Share of pixels brighter than 10/255 (images in [−1, 1])."""
    return float((to_uint8(images) > 10).float().mean())


@torch.no_grad()
def shrinkage(model, n: int = 256, seed: int = 0, ts: tuple[int, ...] = (999, 900, 750, 500, 250, 100, 50, 20, 0)):
    """Per timestep: k = ⟨ε̂, ε⟩/⟨ε, ε⟩ (1 for a perfect ε-network; < 1 when it under-predicts the noise),
    the relative error ‖ε̂ − ε‖²/‖ε‖², and the x̂_0 error ‖x̂_0 − x_0‖ per pixel (RMS) it implies."""
    from mnistdiff.ddpm import predict_x0_from_eps, q_sample

    x0 = load_mnist("test").subset(n, seed=seed).images
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in ts:
        tt = torch.full((n,), t, dtype=torch.long)
        eps = torch.randn(x0.shape, generator=gen)
        xt = q_sample(model.schedule, x0, tt, eps)
        e = model.unet(xt, tt).float()
        x0_hat = predict_x0_from_eps(model.schedule, xt, tt, e).clamp(-1, 1)
        out[str(t)] = {"k": float((e * eps).sum() / (eps * eps).sum()),
                       "rel_err": float(((e - eps) ** 2).sum() / (eps * eps).sum()),
                       "x0_rmse_clipped": float(((x0_hat - x0) ** 2).mean().sqrt())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--last", default=None, help="the run's last.pt, for the raw (non-EMA) weights")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/book/eta_study.json")
    args = p.parse_args()

    ema = load_ddpm(args.checkpoint)
    models = {"EMA": ema}
    if args.last:
        raw = load_ddpm(args.checkpoint)
        state, _ = load_checkpoint(args.last, kind="ddpm-resume")
        raw.unet.load_state_dict(state["model"])
        models["raw"] = raw
    variants = [("EMA", 0.0, True), ("EMA", 1.0, True), ("EMA", 0.0, False)]
    if "raw" in models:
        variants += [("raw", 0.0, True), ("raw", 1.0, True)]
    real = load_mnist("test").subset(args.n, seed=args.seed).images
    rows = {"real test digits": {"grain": grain(real)}}
    print(f"{device_name('cpu')}; n = {args.n}, DDIM-{args.steps}")
    print(f"{'variant':<28} {'grain':>6} {'FID':>7} {'prec':>6} {'rec':>6} {'conf':>6} top class")
    print(f"{'real test digits':<28} {rows['real test digits']['grain']:6.3f}")
    for weights, eta, clip in variants:
        name = f"{weights}, η = {eta:g}{'' if clip else ', no clip'}"
        t0 = time.perf_counter()
        x, _ = models[weights].sample(args.n, mode="ddim", ddim_steps=args.steps, eta=eta, seed=args.seed,
                                      clip_denoised=clip)
        seconds = time.perf_counter() - t0
        m = evaluate(x, seed=args.seed)
        hist = m["class_histogram"]
        top = max(range(10), key=lambda d: hist[d])
        rows[name] = {"grain": grain(x), "fid": m["fid"], "precision": m["precision"], "recall": m["recall"],
                      "confidence": m["confidence"], "top_class": top, "top_class_share": hist[top],
                      "sampling_seconds": round(seconds, 1)}
        r = rows[name]
        print(f"{name:<28} {r['grain']:6.3f} {r['fid']:7.2f} {r['precision']:6.3f} {r['recall']:6.3f} "
              f"{r['confidence']:6.3f} {top} ({hist[top]:.0%})", flush=True)
    diag = {w: shrinkage(m, seed=args.seed) for w, m in models.items()}
    print("ε-network per t: k = <ε̂,ε>/<ε,ε>, relative error, RMS error of clipped x̂_0")
    for w, d in diag.items():
        for t, r in d.items():
            print(f"  {w:<4} t = {t:>4}: k {r['k']:.3f}  rel. err {r['rel_err']:.3f}  x̂_0 RMSE {r['x0_rmse_clipped']:.3f}")
    out = {"checkpoint": args.checkpoint, "shrinkage": diag, "n": args.n, "ddim_steps": args.steps, "seed": args.seed,
           "device": device_name("cpu"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
