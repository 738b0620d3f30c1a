#!/usr/bin/env python
"""Quality against network calls: each model with each of its samplers at several numbers of network calls (NFE),
scored in both feature spaces, in one run; then the speed of every configuration, timed side by side in one run.

    python benchmarks/nfe_sweep.py --model checkpoints/book/ddpm.safetensors \\
        --model checkpoints/book/flow.safetensors --model checkpoints/book/ldm.safetensors \\
        --vae checkpoints/book/vae.safetensors --n 2000
    python benchmarks/nfe_sweep.py --speed --model … (the same models)      # → results/book/nfe_sweep.json

Each model is sampled with every step-count sampler it takes (``DiffusionModel.samplers``): a DDPM or LDM with DDIM
at η = 0 (the probability-flow ODE, comparable with a flow's solvers) and at the package's default η,
DPM-Solver++(2M) and its SDE twin (each on Karras et al.'s σ, the default, and on DDIM's timesteps: the spacing
changes them more than the solver does) and EDM's Heun; a flow with Euler, Heun and DPM-Solver++(2M). NFE counts
network calls per sample
(``DiffusionModel.nfe``): Heun makes two per step (EDM's one fewer at the end), so at each NFE asked for, every
sampler runs the most steps whose calls do not exceed it, and the row records the calls it made (EDM's Heun: 3, 7,
9, … where 4, 8, 10 are asked). Every configuration draws ``n`` samples from seed 0 and is scored by
:func:`mnistdiff.evaluation.metrics.evaluate` beside the real floor at the same ``n``. The file is rewritten after
each configuration and a rerun with the same ``n`` skips those already scored (on the same weights and, on Karras
σ, the package's σ_max and σ_min: a row scored on other σ is scored again), so a run cut short keeps what it
measured; so the quality pass may share the cores with other work.

Speed is a second pass (``--speed``), because a time is only worth comparing with times taken on the same quiet
machine: every scored configuration draws ``--speed_n`` samples once more, timed, all in one run, after one untimed
warm-up per model; the file records the CPU, the date and the load average before it began (time nothing while
another job shares the cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnistdiff.config import DEFAULT_ETA, PRECISIONS  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.classifier import FEATURE_SPACES  # noqa: E402
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, real_floor, space_key  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_json  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402


def steps_within(model: DiffusionModel, sampler: str, nfe: int) -> int:
    """The most steps of ``sampler`` whose network calls per sample do not exceed ``nfe`` (0: not even one)."""
    steps = 0
    while model.nfe(sampler, steps + 1) <= nfe:
        steps += 1
    return steps


#: The solvers that also run on DDIM's timesteps, to show what the spacing does on an ε-network (chapter 9); EDM's
#: Heun, and a flow's DPM-Solver++: Karras σ only.
LINSPACE_TOO = ("dpmpp_2m", "dpmpp_2m_sde")


def configurations(model: DiffusionModel, nfes: list[int], samplers: list[str] | None = None) -> list[dict]:
    """(sampler, steps, η, nfe) for each of ``model``'s step-count samplers (those of ``samplers`` only, if given)
    at each NFE asked for, with the most steps within it (``nfe``: the calls they make); a configuration that two
    NFEs reach is listed once."""
    out: list[dict] = []
    for nfe in nfes:
        for sampler in model.samplers:
            if sampler == "ddpm" or (samplers and sampler not in samplers):  # ddpm: all T steps, not a step count
                continue
            steps = steps_within(model, sampler, nfe)
            etas = (0.0, DEFAULT_ETA) if sampler == "ddim" else (None,)
            spacing = model.spacing(sampler)
            both = spacing and sampler in LINSPACE_TOO and model.schedule is not None  # an ε-network's, chapter 9's
            spacings = (spacing, "linspace") if both else (spacing,)
            out += [{"sampler": sampler, "steps": steps, "eta": eta, "spacing": sp, "nfe": model.nfe(sampler, steps)}
                    for eta in etas for sp in spacings if steps]
    unique = {(c["sampler"], c["steps"], c["eta"], c["spacing"]): c for c in out}
    return list(unique.values())


def key(model_name: str, c: dict) -> str:
    eta = "" if c["eta"] is None else f"-eta{c['eta']:g}"
    spacing = f"-{c['spacing']}" if c.get("spacing") else ""
    return f"{model_name}:{c['sampler']}{eta}{spacing}:{c['steps']}"


def score(model: DiffusionModel, c: dict, n: int, device: str) -> dict:
    """Draw ``n`` samples with configuration ``c`` (seed 0) in the model's precision and score them in both spaces
    (``sampling_seconds``: the draw's wall time, a record, not a speed: see :func:`speed`)."""
    t0 = time.perf_counter()
    images, _ = model.sample(n, sampler=c["sampler"], steps=c["steps"], seed=0, device=device, **_options(c))
    seconds = time.perf_counter() - t0
    m = evaluate(images, seed=0, device=device, include_memorisation=False)
    return {**c, **_sigmas(model, c), "sampling_seconds": round(seconds, 2), **distribution_metrics(m),
            "class_max_deviation": m["class_max_deviation"]}


def _sigmas(model: DiffusionModel, c: dict) -> dict:
    """Where configuration ``c``'s Karras spacing starts and ends (the model kind's σ_max, the package's σ_min), if
    it has one."""
    return model.karras_range if c.get("spacing") == "karras" else {}


def speed(model: DiffusionModel, c: dict, n: int, device: str) -> float:
    """Samples per second of configuration ``c``: ``n`` samples drawn once, timed (decoding included)."""
    t0 = time.perf_counter()
    model.sample(n, sampler=c["sampler"], steps=c["steps"], seed=1, device=device, **_options(c))
    return round(n / (time.perf_counter() - t0), 1)


def _options(c: dict) -> dict:
    """η and the spacing of configuration ``c``, where it has them."""
    return {k: c[k] for k in ("eta", "spacing") if c.get(k) is not None}


def load_models(paths: list[Path], vae: Path | None, precision: str, device: str
                ) -> tuple[dict[str, DiffusionModel], dict[str, str]]:
    """Each model file, by kind (its rows' name), in ``precision`` (``auto``: measured here, once per model, before
    anything is timed), and each kind's file; a latent model takes ``vae``."""
    models, files = {}, {}
    for path in paths:
        model = DiffusionModel.load(path, vae=vae, device=device)
        if model.kind in models:
            raise SystemExit(f"two {model.kind} models given: the sweep names each model's rows by its kind")
        files[model.kind] = str(path)
        if precision == "auto":
            model.measure_precision(device)
        else:
            model.precision = precision
        models[model.kind] = model
    return models, files


def write(out: Path, doc: dict) -> None:
    """The sweep's file, atomically: a run cut short keeps every configuration already written."""
    atomic_write_json(out, doc)


def quality_pass(models: dict[str, DiffusionModel], files: dict[str, str], doc: dict, args: argparse.Namespace,
                 out: Path) -> None:
    """Score every configuration not yet in ``doc`` (same n, same weights), rewriting ``out`` after each;
    ``files``: each model's file, by kind, for the record."""
    shas = {name: model.meta["weights_sha256"] for name, model in models.items()}
    rows = {r["key"]: r for r in doc["rows"] if shas.get(r["model"], r["weights_sha256"]) == r["weights_sha256"]}
    for name, model in models.items():  # (rows of a model whose weights changed went with the old weights)
        sha = shas[name]
        doc["models"][name] = {"file": files[name], "weights_sha256": sha,
                               "training_seconds": model.meta.get("seconds"), "precision": model.precision}
        for c in configurations(model, args.nfe, args.samplers):
            k = key(name, c)
            if k in rows and rows[k].get("weights_sha256") == sha and all(
                    rows[k].get(field) == value for field, value in _sigmas(model, c).items()):
                continue  # scored already, on these weights and these σ
            rows[k] = r = {"key": k, "model": name, "weights_sha256": sha, **score(model, c, args.n, args.device),
                           "device": device_name(args.device), "date": dt.date.today().isoformat()}
            floor = doc["floor"]
            print(f"{k:28s} NFE {r['nfe']:3d}  " + "  ".join(
                f"{s}: FID {r[space_key('fid', s)] / floor[space_key('fid', s)]:5.1f}× floor, "
                f"P {r[space_key('precision', s)]:.3f} R {r[space_key('recall', s)]:.3f}" for s in FEATURE_SPACES),
                flush=True)
            doc["rows"] = sorted(rows.values(), key=lambda x: (x["model"], x["sampler"], str(x["eta"]), x["nfe"]))
            write(out, doc)


def quiet_load() -> float:
    """The one-minute load average, read before this run loads anything (its own loading and precision probes would
    raise it); a warning if another job seems to share the cores."""
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f} before timing: another job may share the cores", flush=True)
    return load


def speed_pass(models: dict[str, DiffusionModel], doc: dict, args: argparse.Namespace, out: Path, load: float
               ) -> None:
    """Time every scored configuration of ``models`` in this one run (one untimed warm-up per model first, at the
    timed draws' size: it also makes the package's first-call choice of batch pieces for that shape, which the first
    timed row would otherwise pay for); ``load`` is the load average before the run began."""
    for name, model in models.items():
        model.sample(args.speed_n, steps=2, seed=0, device=args.device)  # warm-up, not timed
        for r in doc["rows"]:
            if r["model"] == name and r["weights_sha256"] == model.meta["weights_sha256"]:
                r["samples_per_second"] = speed(model, r, args.speed_n, args.device)
                print(f"{r['key']:28s} NFE {r['nfe']:3d}  {r['samples_per_second']:8.1f} samples/s", flush=True)
    doc["speed"] = {"device": device_name(args.device), "date": dt.date.today().isoformat(), "n": args.speed_n,
                    "load_average_before": round(load, 2)}
    write(out, doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="a model file (ddpm, flow or ldm); repeat for several")
    p.add_argument("--vae", type=Path, default=None, help="the VAE a latent model (ldm) was trained on")
    p.add_argument("--n", type=int, default=2000, help="samples per configuration, and real digits in the floor")
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 10, 16, 32, 50, 64],
                   help="network calls per sample (10: issue 24's budget; 50: DDIM-50, the reference)")
    p.add_argument("--samplers", nargs="+", default=None, metavar="SAMPLER",
                   help="only these samplers (a model's others are left out; default: all it takes)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="how the network runs (auto: the fastest of fp32, fp32_cl, bf16 and bf16_cl, measured here "
                        "once per model)")
    p.add_argument("--speed", action="store_true", help="time the scored configurations instead (a quiet machine)")
    p.add_argument("--speed_n", type=int, default=256, help="samples per timed draw (--speed)")
    p.add_argument("--profile", default="book", help="results/<profile>/ gets the file")
    p.add_argument("--out", type=Path, default=None, help="default results/<profile>/nfe_sweep.json")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out = args.out or results_dir() / args.profile / "nfe_sweep.json"
    old = json.loads(out.read_text()) if out.is_file() else {}
    if args.speed and old.get("n") != args.n:
        p.error(f"--speed times the configurations scored at --n {args.n}: {out} has none (run without --speed)")
    load = quiet_load() if args.speed else None
    models, files = load_models(args.model, args.vae, args.precision, args.device)
    unknown = sorted(set(args.samplers or ()) - {s for m in models.values() for s in m.samplers})
    if unknown:
        p.error(f"--samplers: {', '.join(unknown)} samples none of these models (they take "
                f"{', '.join(dict.fromkeys(s for m in models.values() for s in m.samplers))})")
    if args.speed:
        speed_pass(models, old, args, out, load)
    else:
        floor = real_floor(args.n, seed=0, device=args.device, include_memorisation=False)
        doc = {**old, "device": device_name(args.device), "n": args.n, "precision": args.precision,
               "date": dt.date.today().isoformat(), "torch": torch.__version__.split("+")[0],
               "models": old.get("models", {}) if old.get("n") == args.n else {},
               "floor": {k: floor[k] for k in floor if isinstance(floor[k], float)},
               "rows": old.get("rows", []) if old.get("n") == args.n else []}
        print(f"{doc['device']}; n = {args.n}; floor " + ", ".join(
            f"{s}: FID {floor[space_key('fid', s)]:.3f}" for s in FEATURE_SPACES), flush=True)
        quality_pass(models, files, doc, args, out)
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
