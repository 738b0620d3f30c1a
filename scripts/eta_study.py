#!/usr/bin/env python
"""Why is deterministic DDIM (η = 0) worse than stochastic sampling on a briefly trained model?

Samples one trained DDPM checkpoint several ways from the same seed (DDIM-50, n samples) and prints,
for each, the share of pixels brighter than 10/255 ("grain"; real test digits beside it), the
classifier's mean confidence, its most common predicted class and the largest deviation of a
class share from 10 %. Variants: η = 0 and η = 1; the EMA or the raw weights of the run's last.pt;
the first step's x̂_0 replaced by 0 (no information at t = T − 1); "leading" timesteps 980, 960, … 0
(no ill-conditioned first step); dynamic thresholding (Saharia et al. 2022) instead of clipping.

    python scripts/eta_study.py checkpoints/book/ddpm.safetensors \
        --last checkpoints/book/runs/<run>-ddpm/checkpoints/last.pt
"""

from __future__ import annotations

import argparse

import torch

from mnistdiff.data import load_mnist, to_uint8
from mnistdiff.ddim import _alpha_bar, ddim_sigma, ddim_timesteps
from mnistdiff.devices import device_name
from mnistdiff.evaluation.metrics import class_statistics, classifier_features
from mnistdiff.model import DiffusionModel
from mnistdiff.training.checkpoints import load_checkpoint


@torch.no_grad()
def ddim(model, steps: list[int], n: int, eta: float = 0.0, rule: str = "clip", first_rule: str | None = None,
         seed: int = 0) -> torch.Tensor:
    """DDIM (eq. 12) with a choice of what to do with x̂_0: clip (and recompute ε̂, the package's rule),
    ``dyn`` (dynamic thresholding at the 99.5th percentile) or ``zero`` (x̂_0 = 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 32, 32), generator=g)
    for i, t in enumerate(steps):
        tp = steps[i + 1] if i + 1 < len(steps) else -1
        e = model.unet(x, torch.full((n,), t)).double()
        a, ap = _alpha_bar(model.schedule, t), _alpha_bar(model.schedule, tp)
        xd = x.double()
        x0 = (xd - (1 - a) ** 0.5 * e) / a**0.5
        r = first_rule if (i == 0 and first_rule) else rule
        if r == "clip":
            x0 = x0.clamp(-1, 1)
        elif r == "dyn":
            s = torch.quantile(x0.abs().flatten(1), 0.995, dim=1).clamp(min=1)[:, None, None, None]
            x0 = x0.clamp(-s, s) / s
        elif r == "zero":
            x0 = torch.zeros_like(x0)
        e = (xd - a**0.5 * x0) / (1 - a) ** 0.5
        sig = ddim_sigma(a, ap, eta)
        out = ap**0.5 * x0 + max(1 - ap - sig**2, 0) ** 0.5 * e
        if sig > 0:
            out = out + sig * torch.randn(x.shape, generator=g).double()
        x = out.float()
    return x


def report(name: str, x: torch.Tensor) -> None:
    _, p = classifier_features(x, device="cpu")
    st = class_statistics(p)
    h = st["class_histogram"]
    top = max(range(10), key=lambda d: h[d])
    grain = float((to_uint8(x) > 10).float().mean())
    print(f"{name:<34} grain {grain:.3f}  confidence {st['confidence']:.3f}  top class {top} ({h[top]:.0%})  "
          f"max |share − 10 %| {st['class_max_deviation']:.3f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--last", default=None, help="the run's last.pt, for the raw (non-EMA) weights")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model = DiffusionModel.load(args.checkpoint)
    T = model.schedule.num_timesteps
    lin, lead = ddim_timesteps(T, 50), list(range(T - 20, -1, -20))
    real = load_mnist("test").subset(args.n, seed=args.seed).images
    print(f"{device_name('cpu')}; {args.n} samples, seed {args.seed}; real test digits: grain "
          f"{float((to_uint8(real) > 10).float().mean()):.3f}")
    variants = [("EMA, η = 0 (package)", dict(steps=lin)), ("EMA, η = 1", dict(steps=lin, eta=1.0)),
                ("EMA, η = 0, first x̂_0 = 0", dict(steps=lin, first_rule="zero")),
                ("EMA, η = 0, dynamic thresholding", dict(steps=lin, rule="dyn")),
                ("EMA, η = 0, leading 980…0", dict(steps=lead))]
    for name, kw in variants:
        report(name, ddim(model, n=args.n, seed=args.seed, **kw))
    if args.last:
        state, _ = load_checkpoint(args.last, kind="ddpm-resume")
        model.unet.load_state_dict(state["model"])
        for eta in (0.0, 1.0):
            report(f"raw weights, η = {eta:g}", ddim(model, lin, args.n, eta=eta, seed=args.seed))


if __name__ == "__main__":
    main()
