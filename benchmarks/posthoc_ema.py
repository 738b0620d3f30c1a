#!/usr/bin/env python
"""EMA length chosen after training: Karras et al. 2024 (EDM2), section 3 and appendix C, on the pixel DDPM.

    python benchmarks/posthoc_ema.py train --out runs/phema -- --profile book --epochs 12 --ema_decay 0.999
    python benchmarks/posthoc_ema.py train --resume runs/phema/<stamp>-ddpm          # after a stop
    python benchmarks/posthoc_ema.py reconstruct runs/phema/<stamp>-ddpm --sigma_rel 0.05 0.10 0.15 0.20
    python benchmarks/time_to_quality.py runs/phema/<stamp>-ddpm/posthoc --n 2000    # scores each reconstruction

``train`` runs ``python -m mnistdiff train ddpm`` (every option after ``--`` is the CLI's) and keeps, beside the
run's own EMA, two **power-function EMAs** (EDM2 eq. 2): θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t with
β_t = (1 − 1/t)^(γ+1), whose averaging profile p_t(τ) = (γ+1) τ^γ / t^(γ+1) on [0, t] has the relative width
``σ_rel`` (EDM2 eq. 3: γ is the largest real root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + 12 − σ_rel⁻²), σ_rel = 0.05 and
0.10 as in EDM2. Each is stored every ``--every`` steps as ``posthoc/raw/sr<σ>_<step>.safetensors``; its running
state rides with the run's ``last.pt`` (``posthoc/state.safetensors``), so ``--resume`` continues it bit for bit.

``reconstruct`` writes, for each σ_rel asked for, the weights of the EMA with that profile at the end of training,
approximated by least squares over the stored ones (EDM2 appendix C.3): with the inner product of two profiles
⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ = (γ_a+1)(γ_b+1) / (γ_a+γ_b+1) · min(t_a, t_b)^(γ_a+γ_b+1) / (t_a^(γ_a+1) t_b^(γ_b+1)),
the weights x solve A x = b (A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_target⟩), normalised to sum to one. Each
reconstruction is a model file of the run's kind and config (``posthoc/epoch_NNN_sr<σ>.safetensors``, the name
``time_to_quality.py`` reads), its header recording the profile and the weights used.

A research tool, written from the paper's equations (EDM2's code is CC BY-NC-SA and is not copied here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mnistdiff.files import atomic_write_bytes  # noqa: E402
from mnistdiff.modelfile import read_model_meta, save_model_file  # noqa: E402

TRACKED = (0.05, 0.10)  # σ_rel of the two power EMAs kept during training (EDM2's choice)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ of the power profile whose relative standard deviation is ``sigma_rel`` (EDM2 eq. 3)."""
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def profile_inner(t_a: np.ndarray, g_a: np.ndarray, t_b: np.ndarray, g_b: np.ndarray) -> np.ndarray:
    """⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ for every pair (broadcast): the integral of the product of two power profiles."""
    m = np.minimum(t_a, t_b)
    g = g_a + g_b + 1.0
    return (g_a + 1.0) * (g_b + 1.0) / g * np.exp(g * np.log(m) - (g_a + 1.0) * np.log(t_a) - (g_b + 1.0) * np.log(t_b))


def solve_weights(ts: np.ndarray, gammas: np.ndarray, t_target: float, gamma_target: float) -> np.ndarray:
    """Least-squares weights of the stored EMAs (steps ``ts``, exponents ``gammas``) whose mix best matches the
    profile (``t_target``, ``gamma_target``) in L², normalised to sum to one (EDM2 appendix C.3)."""
    a = profile_inner(ts[:, None], gammas[:, None], ts[None, :], gammas[None, :])
    b = profile_inner(ts, gammas, np.float64(t_target), np.float64(gamma_target))
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    return x / x.sum()


class PowerEMAs:
    """The two power-function EMAs of a model's floating-point weights, updated after every optimiser step."""

    def __init__(self, model: nn.Module, sigma_rels: tuple[float, ...] = TRACKED) -> None:
        self.sigma_rels = sigma_rels
        self.gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
        self.names = [n for n, p in model.state_dict().items() if p.is_floating_point()]
        self.avgs = [[p.detach().clone().float() for n, p in model.state_dict().items() if n in self.names]
                     for _ in sigma_rels]

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        """θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t, β_t = (1 − 1/t)^(γ+1); t = 1 copies θ."""
        current = [p.detach().float() for n, p in model.state_dict().items() if n in self.names]
        for avg, gamma in zip(self.avgs, self.gammas):
            torch._foreach_lerp_(avg, current, 1.0 - (1.0 - 1.0 / t) ** (gamma + 1.0))

    def tensors(self, i: int) -> dict[str, torch.Tensor]:
        return {n: a.contiguous() for n, a in zip(self.names, self.avgs[i])}

    def save_state(self, path: Path, step: int, steps_per_epoch: int) -> None:
        """The running averages, the step they reached and the run's steps per epoch (what ``--epoch`` reads)."""
        flat = {f"{i}/{n}": a for i in range(len(self.avgs)) for n, a in self.tensors(i).items()}
        meta = {"step": str(step), "steps_per_epoch": str(steps_per_epoch)}
        atomic_write_bytes(path, safetensors.torch.save(flat, metadata=meta))

    def load_state(self, path: Path) -> int:
        flat = safetensors.torch.load_file(path)
        for i, avg in enumerate(self.avgs):
            for k, name in enumerate(self.names):
                avg[k].copy_(flat[f"{i}/{name}"])
        with safetensors.safe_open(path, "pt") as f:
            return int(f.metadata()["step"])


def patch_train_loop(every: int) -> None:
    """Make :class:`~mnistdiff.training.loop.TrainLoop` keep :class:`PowerEMAs` beside its own EMA."""
    from mnistdiff.training import loop

    step_fn, save_fn = loop.TrainLoop.train_step, loop.TrainLoop.save

    def train_step(self, perm, step, bar):  # type: ignore[no-untyped-def]
        t = self.global_step(step)
        folder = self.experiment.sub("posthoc")
        if getattr(self, "power_emas", None) is None:
            self.power_emas = PowerEMAs(self.state.model)
            state = folder / "state.safetensors"
            if t > 1:
                if not state.is_file() or self.power_emas.load_state(state) != t - 1:
                    raise RuntimeError(f"{state} does not hold the power EMAs at step {t - 1}: start a new run")
        step_fn(self, perm, step, bar)
        self.power_emas.update(self.state.model, t)
        if t % every == 0:
            for i, sr in enumerate(self.power_emas.sigma_rels):
                raw = folder / "raw"
                raw.mkdir(exist_ok=True)
                data = safetensors.torch.save(self.power_emas.tensors(i),
                                              metadata={"step": str(t), "sigma_rel": str(sr)})
                atomic_write_bytes(raw / f"sr{sr:.3f}_{t:07d}.safetensors", data)

    def save(self):  # type: ignore[no-untyped-def]
        save_fn(self)
        if getattr(self, "power_emas", None) is not None:
            t = self.state.epoch * self.steps_per_epoch + self.state.step
            self.power_emas.save_state(self.experiment.sub("posthoc") / "state.safetensors", t, self.steps_per_epoch)

    loop.TrainLoop.train_step, loop.TrainLoop.save = train_step, save


def _reference(run: Path, epoch: int | None) -> tuple[Path, dict, int | None]:
    """The model file whose header (and non-float tensors) a reconstruction takes: the run's final model, or its
    snapshot of ``epoch``; and the last training step it saw (None: the last stored)."""
    if epoch is None:
        final = run / "checkpoints" / "model.safetensors"
        if not final.is_file():
            raise SystemExit(f"{run} has no final model yet: finish it (`posthoc_ema.py train --resume {run}`) or "
                             "pass --epoch N for a snapshot")
        return final, read_model_meta(final), None
    snap = run / "snapshots" / f"epoch_{epoch:03d}.safetensors"
    if not snap.is_file():
        raise SystemExit(f"{snap} does not exist: pass an epoch the run kept a snapshot of (--snapshot_every)")
    with safetensors.safe_open(run / "posthoc" / "state.safetensors", "pt") as f:  # the loop's own count
        steps_per_epoch = int(f.metadata()["steps_per_epoch"])
    return snap, read_model_meta(snap), epoch * steps_per_epoch


def reconstruct(run: Path, sigma_rels: list[float], epoch: int | None = None) -> list[Path]:
    """One model file per σ_rel: the least-squares mix of the stored power EMAs at the end of training (or of
    ``epoch``, beside its snapshot)."""
    final, meta, until = _reference(run, epoch)
    raws = [p for p in sorted((run / "posthoc" / "raw").glob("sr*_*.safetensors"))
            if until is None or int(p.stem.split("_")[1]) <= until]
    if not raws:
        raise SystemExit(f"{run}/posthoc/raw holds no stored power EMAs: train with `posthoc_ema.py train`")
    ts = np.array([float(p.stem.split("_")[1]) for p in raws])
    gammas = np.array([sigma_rel_to_gamma(float(p.stem.split("_")[0][2:])) for p in raws])
    if until is not None and ts.max() != until:
        raise SystemExit(f"no power EMA was stored at step {until} (the end of epoch {epoch}): --every must divide it")
    stored = [safetensors.torch.load_file(path) for path in raws]  # read once, mixed for every σ_rel
    ref = safetensors.torch.load_file(final)
    keep = {k: meta[k] for k in ("kind", "config", "epoch", "seconds", "history", "metrics") if k in meta}
    out = []
    for sr in sigma_rels:
        x = solve_weights(ts, gammas, ts.max(), sigma_rel_to_gamma(sr))
        mixed: dict[str, torch.Tensor] = {}
        for w, tensors_i in zip(x, stored):
            for name, tensor in tensors_i.items():
                mixed[name] = mixed.get(name, 0) + float(w) * tensor.double()
        tensors = {n: (mixed[n].to(v.dtype) if n in mixed else v) for n, v in ref.items()}
        record = {"sigma_rel": sr, "at_step": int(ts.max()), "stored": [p.name for p in raws],
                  "weights": [round(float(w), 6) for w in x], "method": "EDM2 post-hoc EMA (Karras et al. 2024)"}
        path = run / "posthoc" / f"epoch_{meta.get('epoch') or len(meta['history']):03d}_sr{sr:.3f}.safetensors"
        out.append(save_model_file(path, tensors, {**keep, "posthoc_ema": record}))
        print(f"σ_rel {sr:.3f} (γ {sigma_rel_to_gamma(sr):.2f}): {len(raws)} stored EMAs, weights in "
              f"[{x.min():.3f}, {x.max():.3f}] → {path}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cli_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a pixel DDPM, keeping the power EMAs")
    t.add_argument("--out", type=Path, default=Path("runs/phema"))
    t.add_argument("--resume", type=Path, default=None)
    t.add_argument("--every", type=int, default=234, help="store the power EMAs every this many steps")
    r = sub.add_parser("reconstruct", help="EMAs of other lengths from the stored ones")
    r.add_argument("run", type=Path)
    r.add_argument("--sigma_rel", type=float, nargs="+", default=[0.05, 0.075, 0.10, 0.15, 0.20, 0.25])
    r.add_argument("--epoch", type=int, default=None, help="reconstruct at this snapshot's epoch (default: the end)")
    args = p.parse_args(argv)
    if args.command == "reconstruct":
        reconstruct(args.run, args.sigma_rel, args.epoch)
        return 0
    from mnistdiff.cli import main as cli_main

    patch_train_loop(args.every)
    rest = ["--resume", str(args.resume)] if args.resume else ["--out", str(args.out)]
    return int(cli_main(["train", "ddpm", *rest, *cli_args]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
