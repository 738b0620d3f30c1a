#!/usr/bin/env python
"""Quality against training time: every snapshot of a training run, scored in both feature spaces.

    python -m mnistdiff train ddpm --profile book --snapshot_every 1 --out runs/   # keeps snapshots/epoch_NNN
    python benchmarks/time_to_quality.py runs/<stamp>-ddpm --n 500         # → results/book/time_to_quality.json

Each snapshot (a model file that records the seconds trained so far) draws ``n`` digits (``--seed``, 0 by default)
with ``--sampler`` (DDIM by default, issue 22's reference, at ``--steps`` 50 and ``--eta`` η = ``DEFAULT_ETA``;
``--sampler default``: each model's own default sampler at its default steps, as ``python -m mnistdiff sample``
draws), which are scored by
:func:`mnistdiff.evaluation.metrics.evaluate` in both feature spaces, beside the real floor at the same ``n``
(:func:`~mnistdiff.evaluation.metrics.real_floor`). The file is rewritten after each snapshot, so a run cut short
keeps what it measured and a rerun skips the snapshots already scored at that ``n``. The CPU is named in the
file and on every line; time nothing while another job shares the cores.

``--guide GUIDE [--guidance W]`` autoguides every snapshot by a worse model of the same kind (Karras et al. 2024;
``DiffusionModel.sample(guide=…)``); the guide's training seconds count with each snapshot's. A guide that is one of
the run's own earlier snapshots costs nothing more (its seconds are inside every later snapshot's): then only the
snapshots after it are scored. ``--snapshots epoch_008 …`` scores only those named (choosing a guidance weight on a
held-out seed, say, at the one snapshot that matters).

The target of issue 22: FID within ``--target`` (2) times the floor, precision and recall ≥ 0.80, in both spaces,
and every class within ±3 points of 10 %; the script prints the first snapshot that meets it and its training minutes.

    python benchmarks/time_to_quality.py pool results/book/time_to_quality_<run>_seed*.json

pools the files of one run scored at several seeds (``--seed``), as ``seed_spread.py`` does: the FID of the mean
against the mean floor, every seed's precision, recall and class balance (:func:`pooled`).

    python benchmarks/time_to_quality.py choose epoch_008 results/book/time_to_quality_wsel_<run>_w*_seed10.json

chooses an autoguidance weight from files scored at one held-out seed, one per weight (:func:`chosen_weight`).

A latent model's snapshots are decoded by ``--vae`` (the VAE it was trained on). A VAE's snapshots
(``train vae --snapshot_every``) are scored by their reconstructions of the floor's own ``n`` training digits,
the best a latent model on that VAE can emit (issue 22's VAE target: ``--target 1.5``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnistdiff.config import DEFAULT_ETA, DEFAULT_STEPS, VAE_KIND  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.classifier import FEATURE_SPACES  # noqa: E402
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, floor_images, real_floor, space_key  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_json  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402
from mnistdiff.modelfile import load_vae, read_model_meta  # noqa: E402
from mnistdiff.sampling import interval_record  # noqa: E402

PR_MIN = 0.80  # precision and recall, in every feature space
CLASS_MAX = 0.03  # the largest class share's distance from 10 %


def trained(row: dict) -> float:
    """Seconds of training behind a row: the snapshot's, and its autoguide's where it was guided."""
    return row["training_seconds"] + row.get("guide_seconds", 0.0)


def meets(row: dict, floor: dict, target: float, pr_min: float = PR_MIN, class_max: float = CLASS_MAX) -> bool:
    """FID within ``target`` × the floor, precision and recall ≥ ``pr_min``, in every feature space, and every
    class's share within ``class_max`` of 10 %."""
    spaces_ok = all(row[space_key("fid", s)] <= target * floor[space_key("fid", s)]
                    and row[space_key("precision", s)] >= pr_min and row[space_key("recall", s)] >= pr_min
                    for s in FEATURE_SPACES)
    return spaces_ok and row["class_max_deviation"] <= class_max


def draw(path: Path, n: int, steps: int | None, device: str, eta: float = DEFAULT_ETA,
         vae: Path | None = None, sampler: str = "ddim", guide: DiffusionModel | None = None,
         guidance: float | None = None, guidance_interval: tuple[float, float] | None = None, seed: int = 0
         ) -> tuple[torch.Tensor, dict]:
    """``n`` images from the snapshot at ``path`` and its metadata: a diffusion model's samples by ``sampler`` (from
    ``seed``; ``"default"``: the model's own sampler and steps; a latent model decoded by ``vae``, the VAE it was
    trained on; autoguided by ``guide`` with weight ``guidance`` in ``guidance_interval`` where one is given), or a
    VAE's reconstructions of the floor's ``n`` training digits (:func:`real_floor`'s subset at ``seed``)."""
    if read_model_meta(path)["kind"] == VAE_KIND:
        vae = load_vae(path, device=device)
        return vae.reconstruct(floor_images(n, seed=seed).to(device)).cpu(), vae.meta
    model = DiffusionModel.load(path, vae=vae, device=device)
    chosen = model.sampling_defaults(None if sampler == "default" else sampler)
    images = model.sample(n, sampler=chosen["sampler"], steps=steps or chosen["steps"], eta=eta, seed=seed,
                          device=device, guide=guide, guidance=guidance, guidance_interval=guidance_interval).images
    return images, model.meta


def score_snapshot(path: Path, n: int, steps: int | None, device: str, eta: float = DEFAULT_ETA,
                   vae: Path | None = None, sampler: str = "ddim", guide: DiffusionModel | None = None,
                   guidance: float | None = None, guidance_interval: tuple[float, float] | None = None,
                   own_guide: bool = False, seed: int = 0) -> dict:
    """One snapshot's epoch, training seconds (with a ``guide``, its own too: ``guide_seconds``, unless it is an
    ``own_guide``, an earlier snapshot of the same run), sampling seconds and metrics at ``n`` samples."""
    t0 = time.perf_counter()
    images, meta = draw(path, n, steps, device, eta, vae, sampler, guide, guidance, guidance_interval, seed)
    sampling = time.perf_counter() - t0
    m = evaluate(images, seed=seed, device=device, include_memorisation=False)
    guide_seconds = {} if guide is None or own_guide else {"guide_seconds": guide.meta["seconds"]}
    return {"snapshot": path.name, "epoch": meta.get("epoch"), "training_seconds": meta["seconds"], **guide_seconds,
            "sampling_seconds": round(sampling, 1), **distribution_metrics(m),
            "class_max_deviation": m["class_max_deviation"]}


def own_snapshot(guide: DiffusionModel, metas: list[dict]) -> bool:
    """Whether ``guide`` has the weights of one of the snapshots whose headers are ``metas``: an earlier snapshot of
    the run it guides."""
    return any(m["weights_sha256"] == guide.meta["weights_sha256"] for m in metas)


def pooled(docs: list[dict]) -> tuple[dict, list[dict]]:
    """Files of this script for one run scored at several seeds, pooled as ``seed_spread.py`` pools: the floor's and
    each snapshot's FID averaged over the seeds in each space, its precision and recall the lowest of any seed, its
    class deviation the largest; so :func:`meets` on a pooled row asks the FID of the mean and every seed's precision,
    recall and balance. Returns ``(floor, rows)``, rows in order of training time. Raises ``ValueError`` if the files
    differ in run, n, sampler, steps, η or guide, or repeat a seed."""
    same = ("run", "n", "sampler", "steps", "eta", "guide")
    if len({json.dumps([d.get(k) for k in same]) for d in docs}) != 1:
        raise ValueError(f"pool files of one run scored alike (the same {', '.join(same)}), at several seeds")
    seeds = [d.get("seed", 0) for d in docs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed appears twice: {seeds}")
    fids = [space_key("fid", s) for s in FEATURE_SPACES]
    floor = {k: statistics.fmean(d["floor"][k] for d in docs) for k in fids}
    by_name = [{r["snapshot"]: r for r in d["snapshots"]} for d in docs]
    rows = []
    for name in (n for n in by_name[0] if all(n in b for b in by_name)):
        scored = [b[name] for b in by_name]
        kept = ("snapshot", "epoch", "training_seconds", "guide_seconds")  # the same at every seed; nothing else
        row = {k: scored[0][k] for k in kept if k in scored[0]}
        row.update(seeds=seeds, class_max_deviation=max(r["class_max_deviation"] for r in scored))
        for s in FEATURE_SPACES:
            row[space_key("fid", s)] = statistics.fmean(r[space_key("fid", s)] for r in scored)
            for k in ("precision", "recall"):
                row[space_key(k, s)] = min(r[space_key(k, s)] for r in scored)
        rows.append(row)
    return floor, sorted(rows, key=trained)


def chosen_weight(docs: list[dict], snapshot: str) -> float:
    """The autoguidance weight that files of this script, one per weight, all at one seed (a held-out one: not a
    seed that is reported), choose for ``snapshot``: the weight whose row has precision and recall ≥ ``PR_MIN`` in
    every space and the smallest worse-space FID ratio to the floor; where none has, the one whose lowest precision is
    highest. The rule the 8-epoch time-to-quality run's w = 2 was chosen by (benchmarks/README.md). Raises
    ``ValueError`` if the files differ in seed or repeat a weight."""
    if len({d.get("seed", 0) for d in docs}) != 1 or len({d["guide"]["guidance"] for d in docs}) != len(docs):
        raise ValueError("choose among files at one seed, one per autoguidance weight")
    snapshot = snapshot.removesuffix(".safetensors")

    def rank(doc: dict) -> tuple[bool, float]:
        row = next((r for r in doc["snapshots"] if r["snapshot"].removesuffix(".safetensors") == snapshot), None)
        if row is None:
            raise ValueError(f"a file holds no row for {snapshot}")
        ok = meets(row, doc["floor"], math.inf, class_max=math.inf)  # precision and recall only
        worst = max(row[space_key("fid", s)] / doc["floor"][space_key("fid", s)] for s in FEATURE_SPACES)
        return ok, -worst if ok else min(row[space_key("precision", s)] for s in FEATURE_SPACES)

    return max(docs, key=rank)["guide"]["guidance"]


def choose_main(argv: list[str]) -> int:
    """``time_to_quality.py choose SNAPSHOT FILE...``: :func:`chosen_weight`, printed."""
    p = argparse.ArgumentParser(prog="time_to_quality.py choose", description=chosen_weight.__doc__)
    p.add_argument("snapshot", help="the snapshot to choose for, e.g. epoch_008")
    p.add_argument("files", type=Path, nargs="+", help="this script's files at one held-out seed, one per weight")
    args = p.parse_args(argv)
    try:
        print(f"chosen weight: {chosen_weight([json.loads(f.read_text()) for f in args.files], args.snapshot):g}")
    except ValueError as err:
        p.error(str(err))
    return 0


def pool_main(argv: list[str]) -> int:
    """``time_to_quality.py pool FILE...``: :func:`pooled`, printed, and the first snapshot that meets the target."""
    p = argparse.ArgumentParser(prog="time_to_quality.py pool", description=pooled.__doc__)
    p.add_argument("files", type=Path, nargs="+", help="this script's files for one run, one per seed")
    p.add_argument("--target", type=float, default=2.0, help="FID target as a multiple of the pooled floor")
    args = p.parse_args(argv)
    try:
        floor, rows = pooled([json.loads(f.read_text()) for f in args.files])
    except ValueError as err:
        p.error(str(err))
    for r in rows:
        print(f"{r['snapshot']}: {trained(r) / 60:6.1f} min  " + "  ".join(
            f"{s}: FID {r[space_key('fid', s)] / floor[space_key('fid', s)]:.2f}× pooled floor, lowest P "
            f"{r[space_key('precision', s)]:.3f} R {r[space_key('recall', s)]:.3f}" for s in FEATURE_SPACES)
            + f"  classes within {r['class_max_deviation'] * 100:.1f} points, seeds {r['seeds']}")
    first = next((r for r in rows if meets(r, floor, args.target)), None)
    print("first snapshot meeting the target over the seeds: "
          + (f"{first['snapshot']}, {trained(first) / 60:.1f} min" if first else "none"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pool"]:
        return pool_main(argv[1:])
    if argv[:1] == ["choose"]:
        return choose_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path,
                   help="a training run's folder (with snapshots/), or a folder of epoch_NNN.safetensors")
    p.add_argument("--n", type=int, default=500, help="samples per snapshot, and real digits in the floor")
    p.add_argument("--sampler", default="ddim",
                   help="ddim (issue 22's reference), another of the model's samplers, or 'default': each model's own")
    p.add_argument("--steps", type=int, default=None,
                   help=f"network steps (default: {DEFAULT_STEPS} for DDIM, the model's own for 'default')")
    p.add_argument("--eta", type=float, default=DEFAULT_ETA, help="DDIM's η, and the SDE solvers' (default: the CLI's)")
    p.add_argument("--seed", type=int, default=0, help="the draws' seed, and the real floor's")
    p.add_argument("--target", type=float, default=2.0, help="FID target as a multiple of the floor")
    p.add_argument("--profile", default="book", help="results/<profile>/ gets the file")
    p.add_argument("--out", type=Path, default=None, help="default results/<profile>/time_to_quality.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vae", type=Path, default=None, help="a latent model's VAE (the model file it was trained on)")
    p.add_argument("--guide", type=Path, default=None,
                   help="autoguide every snapshot by this worse model (its training time counts too)")
    p.add_argument("--guidance", type=float, default=None, help="the autoguidance weight (default: the package's)")
    p.add_argument("--snapshots", nargs="+", default=None, metavar="NAME",
                   help="score only these snapshots (epoch_008 or epoch_008.safetensors; default: every one)")
    p.add_argument("--guidance_interval", type=float, nargs=2, default=None, metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="autoguide only at noise levels SIGMA_LO < sigma <= SIGMA_HI (default: the package's)")
    args = p.parse_args(argv)
    if (args.guidance is not None or args.guidance_interval is not None) and args.guide is None:
        p.error("--guidance and --guidance_interval weigh autoguidance: give --guide GUIDE too")
    args.steps = args.steps or (DEFAULT_STEPS if args.sampler != "default" else None)
    folder = args.run / "snapshots" if (args.run / "snapshots").is_dir() else args.run
    snaps = sorted(folder.glob("epoch_*.safetensors"))
    if not snaps:
        p.error(f"{folder} holds no epoch_NNN.safetensors: train with --snapshot_every 1")
    out = args.out or results_dir() / args.profile / "time_to_quality.json"
    old = json.loads(out.read_text()) if out.is_file() else {}
    guide = None if args.guide is None else DiffusionModel.load(args.guide, vae=args.vae, device=args.device)
    interval = None if guide is None else (tuple(args.guidance_interval) if args.guidance_interval else
                                           guide.sampling_defaults(guide=True)["guidance_interval"])
    weight = None if guide is None else (guide.sampling_defaults(guide=True)["guidance"] if args.guidance is None
                                         else args.guidance)
    guided = None if guide is None else {"file": str(args.guide), "weights_sha256": guide.meta["weights_sha256"],
                                         "guidance": weight}
    if interval is not None:
        guided["guidance_interval"] = interval_record(interval)
    metas = {snap: read_model_meta(snap) for snap in snaps}
    own = guide is not None and own_snapshot(guide, list(metas.values()))
    if own:
        guided["own_snapshot"] = True  # its seconds are inside every later snapshot's; the earlier ones are not scored
        snaps = [snap for snap in snaps if metas[snap]["seconds"] > guide.meta["seconds"]]
    if args.snapshots:
        wanted = {name.removesuffix(".safetensors") for name in args.snapshots}
        if unknown := wanted - {snap.stem for snap in snaps}:
            p.error(f"no snapshot {', '.join(sorted(unknown))} to score in {folder} "
                    f"(scorable: {', '.join(snap.stem for snap in snaps)})")
        snaps = [snap for snap in snaps if snap.stem in wanted]
    same = (old.get("run") == str(args.run) and old.get("n") == args.n and old.get("steps") == args.steps
            and old.get("eta", DEFAULT_ETA) == args.eta and old.get("sampler", "ddim") == args.sampler
            and old.get("guide") == guided and old.get("seed", 0) == args.seed)
    rows = {r["snapshot"]: r for r in old.get("snapshots", [])} if same else {}
    floor = real_floor(args.n, seed=args.seed, device=args.device, include_memorisation=False)
    cpu = device_name(args.device)
    print(f"{cpu}; n = {args.n}, {args.sampler}-{args.steps or 'default'}, η = {args.eta:g}; floor " + ", ".join(
        f"{s}: FID {floor[space_key('fid', s)]:.3f}" for s in FEATURE_SPACES))
    for snap in snaps:
        if snap.name not in rows:
            rows[snap.name] = score_snapshot(snap, args.n, args.steps, args.device, args.eta, args.vae, args.sampler,
                                             guide, weight, interval, own, args.seed)
        r = rows[snap.name]
        ratios = "  ".join(f"{s}: FID {r[space_key('fid', s)] / floor[space_key('fid', s)]:5.1f}× floor, "
                           f"P {r[space_key('precision', s)]:.3f} R {r[space_key('recall', s)]:.3f}"
                           for s in FEATURE_SPACES)
        print(f"{snap.name}: {trained(r) / 60:6.1f} min  {ratios}", flush=True)
        first = next((x for x in sorted(rows.values(), key=trained) if meets(x, floor, args.target)), None)
        doc = {"run": str(args.run), "device": cpu, "n": args.n, "seed": args.seed, "sampler": args.sampler,
               "steps": args.steps,
               "eta": args.eta, **({"guide": guided} if guided else {}),
               "target": f"FID ≤ {args.target:g} × floor, precision and recall ≥ {PR_MIN:.2f}, in both feature "
                         f"spaces; every class within ±{CLASS_MAX * 100:g} points of 10 %",
               "date": dt.date.today().isoformat(), "torch": torch.__version__.split("+")[0],
               "floor": {k: floor[k] for k in floor if isinstance(floor[k], float)},
               "first_meeting_target": first and {"snapshot": first["snapshot"],
                                                  "training_minutes": round(trained(first) / 60, 1)},
               "snapshots": sorted(rows.values(), key=trained)}
        atomic_write_json(out, doc)
    print(f"first snapshot meeting the target: {doc['first_meeting_target'] or 'none yet'}  → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
