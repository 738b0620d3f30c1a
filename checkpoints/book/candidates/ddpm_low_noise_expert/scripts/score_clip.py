"""DDIM-50 eta=1 on the book DDPM (or MODEL) with the x0 clip range (-C, C) (same noise as seed_spread's draws).
usage: score_clip.py C N SEED OUT.pt [MODEL]"""

import json
import sys
import time

import torch

from mnistdiff.ddim import ddim_sample_loop, ddim_timesteps
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate
from mnistdiff.model import DiffusionModel

torch.set_num_threads(2)
c, n, seed, outpt = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
m = DiffusionModel.load(sys.argv[5] if len(sys.argv) > 5 else "checkpoints/book/ddpm.safetensors")
net = m.network.eval()
gen = torch.Generator().manual_seed(seed)
xs = []
t0 = time.time()
with torch.no_grad():
    for start in range(0, n, 256):
        b = min(256, n - start)
        xs.append(
            ddim_sample_loop(
                net,
                m.schedule,
                (b, 1, 32, 32),
                eta=1.0,
                generator=gen,
                timesteps=ddim_timesteps(1000, 50),
                clip_range=(-c, c),
            ).images
        )
imgs = torch.cat(xs).clamp(-1, 1)
torch.save(imgs, outpt)
r = distribution_metrics(evaluate(imgs, seed=0, include_memorisation=False))
print(
    json.dumps(
        {
            "model": sys.argv[5] if len(sys.argv) > 5 else "book",
            "clip": c,
            "seed": seed,
            "n": n,
            "s": round(time.time() - t0),
            "fid": round(r["fid"], 4),
            "fid_resnet": round(r["fid_resnet"], 4),
            "P": r["precision"],
            "R": r["recall"],
            "P_r": r["precision_resnet"],
            "R_r": r["recall_resnet"],
        }
    ),
    flush=True,
)
