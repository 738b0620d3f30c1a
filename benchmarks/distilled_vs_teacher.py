#!/usr/bin/env python
"""A distilled student against its teacher, in one run: quality in both feature spaces, digit accuracy, samples/s.

    python benchmarks/distilled_vs_teacher.py checkpoints/book/vae.safetensors checkpoints/book/cldm.safetensors \\
        checkpoints/book/cldm_distilled.safetensors --n 2000          # → results/book/distillation.json

Every generator is asked for the same ``n`` digits (0, 1, …, 9, 0, … in turn) from seed 0: the teacher at DDIM-50
with the package's default η and guidance (the reference of issue 24's target), the teacher at the student's step
count (DDIM, η = 0, and DPM-Solver++(2M)), and the student at its own steps. Each is timed (samples per second, on
the CPU named in the file, in the precision measured fastest for it) and scored by
:func:`mnistdiff.evaluation.metrics.evaluate` (both feature spaces, the accuracy against the digits asked for)
beside the real floor at the same ``n``. Time nothing while another job shares the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnistdiff.config import DEFAULT_STEPS, MNIST_CLASSES  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.classifier import FEATURE_SPACES  # noqa: E402
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, real_floor, space_key  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_json  # noqa: E402
from mnistdiff.guidance import balanced_labels  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402
from mnistdiff.modelfile import load_vae  # noqa: E402


def generators(teacher: DiffusionModel, student: DiffusionModel) -> dict[str, tuple[DiffusionModel, dict]]:
    """name → (model, sample() options): the teacher's reference, the teacher at the student's steps, the student."""
    steps = student.sampling_defaults()["steps"]
    ref = min(DEFAULT_STEPS, teacher.schedule.num_timesteps if teacher.schedule is not None else DEFAULT_STEPS)
    return {
        f"teacher, DDIM-{ref} (default η and w)": (teacher, {"sampler": "ddim", "steps": ref}),
        f"teacher, DDIM-{steps}, η = 0": (teacher, {"sampler": "ddim", "steps": steps, "eta": 0.0}),
        f"teacher, DPM-Solver++(2M), {steps} steps": (teacher, {"sampler": "dpmpp_2m", "steps": steps}),
        f"student, {steps} steps": (student, {}),
    }


def score(model: DiffusionModel, options: dict, n: int, device: str) -> dict:
    """Draw ``n`` balanced digits with ``options`` (seed 0), time them, and score them."""
    labels = balanced_labels(n, MNIST_CLASSES)
    model.sample(min(n, 64), labels=labels[: min(n, 64)], seed=1, device=device, **options)  # warm-up, not timed
    t0 = time.perf_counter()
    images, _ = model.sample(n, labels=labels, seed=0, device=device, **options)
    seconds = time.perf_counter() - t0
    m = evaluate(images, labels=labels, seed=0, device=device, include_memorisation=False)
    d = model.sampling_defaults()
    calls = model.nfe(options.get("sampler", d["sampler"]), options.get("steps", d["steps"]))
    guided = model.distillation is None and options.get("guidance", d["guidance"]) not in (0.0, 1.0)
    return {"network_calls": calls, "network_evaluations_per_sample": calls * (2 if guided else 1),
            "sampling_seconds": round(seconds, 2), "samples_per_second": round(n / seconds, 1),
            "label_accuracy": m["label_accuracy"], "class_max_deviation": m["class_max_deviation"],
            **distribution_metrics(m)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("vae", type=Path)
    p.add_argument("teacher", type=Path)
    p.add_argument("student", type=Path)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--profile", default="book")
    p.add_argument("--out", type=Path, default=None, help="default results/<profile>/distillation.json")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    vae = load_vae(args.vae, args.device)
    teacher = DiffusionModel.load(args.teacher, vae=vae, device=args.device)
    student = DiffusionModel.load(args.student, vae=vae, device=args.device)
    for model in (teacher, student):
        model.measure_precision(args.device)
    floor = real_floor(args.n, seed=0, device=args.device, include_memorisation=False)
    cpu = device_name(args.device)
    print(f"{cpu}; n = {args.n}; floor " + ", ".join(f"{s}: FID {floor[space_key('fid', s)]:.3f}"
                                                     for s in FEATURE_SPACES), flush=True)
    rows = {}
    for name, (model, options) in generators(teacher, student).items():
        rows[name] = score(model, options, args.n, args.device)
        r = rows[name]
        print(f"{name:40s} {r['samples_per_second']:7.1f} samples/s  accuracy {r['label_accuracy']:.3f}  " + "  ".join(
            f"{s}: FID {r[space_key('fid', s)]:.3f} ({r[space_key('fid', s)] / floor[space_key('fid', s)]:.1f}× "
            f"floor) P {r[space_key('precision', s)]:.3f} R {r[space_key('recall', s)]:.3f}" for s in FEATURE_SPACES),
            flush=True)
    doc = {"device": cpu, "n": args.n, "date": dt.date.today().isoformat(), "torch": torch.__version__.split("+")[0],
           "teacher": {"file": str(args.teacher), "weights_sha256": teacher.meta["weights_sha256"],
                       "precision": teacher.precision, "decode_precision": teacher.decode_precision,
                       "sampling_speeds": teacher.meta.get("sampling_speeds")},
           "student": {"file": str(args.student), "weights_sha256": student.meta["weights_sha256"],
                       "precision": student.precision, "decode_precision": student.decode_precision,
                       "sampling_speeds": student.meta.get("sampling_speeds"), "distillation": student.distillation,
                       "seconds": student.meta.get("seconds")},
           "floor": {k: floor[k] for k in floor if isinstance(floor[k], float)}, "generators": rows}
    out = args.out or results_dir() / args.profile / "distillation.json"
    atomic_write_json(out, doc)
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
