#!/usr/bin/env python
"""What running the network on pieces of each batch buys on this CPU: every book model sampled as the package samples
it, with :class:`mnistdiff.sampling.ChunkedDenoiser` choosing its pieces and with the whole batch, in one run.

    python benchmarks/chunk_speed.py --steps 20          # → results/book/chunk_speed.json

For each model and precision the same draw (``--n`` samples, seed 0, the model's default sampler and steps) is
timed ``--repeats`` times each way, alternating, so that a slow minute of a shared machine falls on both; the file
keeps every time, the median samples per second of each way, their ratio, and whether the two draws are equal bit
for bit (they must be: a piece size is kept only where its ε̂ is). Run it alone on the cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import mnistdiff.model  # noqa: E402
import mnistdiff.sampling  # noqa: E402
from mnistdiff.config import LATENT_KINDS  # noqa: E402
from mnistdiff.devices import device_name  # noqa: E402
from mnistdiff.evaluation.report import results_dir  # noqa: E402
from mnistdiff.files import atomic_write_json  # noqa: E402
from mnistdiff.model import DiffusionModel  # noqa: E402
from mnistdiff.modelfile import read_model_meta  # noqa: E402
from mnistdiff.sampling import generate  # noqa: E402

BOOK = Path("checkpoints/book")
MODELS = [BOOK / f"{kind}.safetensors" for kind in ("ddpm", "flow", "ldm", "cldm")]


def timed_draw(model: DiffusionModel, n: int, steps: int, precision: str, pieces: bool) -> tuple[torch.Tensor, float]:
    """``n`` samples (seed 0, the model's default sampler at ``steps``) and the seconds they took; ``pieces=False``:
    the whole batch in every network call."""
    labels = torch.arange(n) % 10 if model.num_classes else None
    with mock.patch.object(mnistdiff.model, "generate", functools.partial(generate, chunk=pieces)):
        start = time.perf_counter()
        images = model.sample(n, steps=steps, labels=labels, seed=0, precision=precision).images
        return images, time.perf_counter() - start


def measure(model: DiffusionModel, n: int, steps: int, precision: str, repeats: int) -> dict:
    """One model at one precision: both ways, alternating, ``repeats`` times each."""
    seconds: dict[str, list[float]] = {"pieces": [], "whole": []}
    draws: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for way in seconds:
            draws[way], sec = timed_draw(model, n, steps, precision, way == "pieces")
            seconds[way].append(round(sec, 3))
    speed = {way: round(n / statistics.median(s), 2) for way, s in seconds.items()}
    return {"precision": precision, "sampler": model.sampling_defaults()["sampler"], "steps": steps, "n": n,
            "seconds": seconds, "samples_per_second": speed, "ratio": round(speed["pieces"] / speed["whole"], 3),
            "same_bits": bool(torch.equal(draws["pieces"], draws["whole"]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="*", default=MODELS, help="model files (default: the book's four)")
    p.add_argument("--vae", type=Path, default=BOOK / "vae.safetensors", help="the VAE of the latent ones")
    p.add_argument("--n", type=int, default=512, help="samples per draw (two CPU batches of 256)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="default: each model's own (the speed per call is the same)")
    p.add_argument("--out", type=Path, default=None, help="default results/book/chunk_speed.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out = args.out or results_dir() / "book" / "chunk_speed.json"
    doc = {"device": device_name("cpu"), "date": dt.date.today().isoformat(), "torch": torch.__version__,
           "chunks": list(mnistdiff.sampling.CHUNKS), "rows": []}
    for path in args.models:
        kind = read_model_meta(path)["kind"]
        model = DiffusionModel.load(path, vae=args.vae if kind in LATENT_KINDS else None)
        model.measure_precision("cpu")
        for precision in dict.fromkeys(("fp32", model.precision)):
            steps = args.steps or model.sampling_defaults()["steps"]
            row = {"model": kind, "file": str(path), **measure(model, args.n, steps, precision, args.repeats)}
            doc["rows"].append(row)
            atomic_write_json(out, doc)
            speed = row["samples_per_second"]
            print(f"{kind:5} {precision:8} {row['sampler']}-{row['steps']}: pieces {speed['pieces']} /s, whole "
                  f"{speed['whole']} /s, ratio {row['ratio']}, same bits {row['same_bits']}", flush=True)
    print(f"→ {out} ({doc['device']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
