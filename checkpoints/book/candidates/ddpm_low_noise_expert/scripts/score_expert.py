"""DDIM-50 eta=1 with a low-noise expert for t < T_SPLIT (eDiff-I's ensemble of expert denoisers), seed, n; both spaces,
faint-background fraction. usage: score_expert.py BASE EXPERT|none T_SPLIT N SEED OUTPT [CLIP]: x0 clipped to
(-CLIP, CLIP), default 1 (samples clamped to [-1, 1] before scoring, as `evaluate` does within its tolerance)."""

import copy
import json
import sys
import time

import torch
from safetensors.torch import load_file

from mnistdiff.data import to_uint8
from mnistdiff.ddim import ddim_sample_loop, ddim_timesteps
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, real_floor
from mnistdiff.model import DiffusionModel

torch.set_num_threads(2)
base, expert, t_split, n, seed, outpt = (
    sys.argv[1],
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
    int(sys.argv[5]),
    sys.argv[6],
)
clip = float(sys.argv[7]) if len(sys.argv) > 7 else 1.0
m = DiffusionModel.load(base)
sched = m.schedule
net = m.network.eval()


class Experts(torch.nn.Module):
    def __init__(self, hi, lo, split):
        super().__init__()
        self.hi, self.lo, self.split = hi, lo, split

    def forward(self, x, t, *a):
        return (self.lo if int(t.max()) < self.split else self.hi)(x, t, *a)


if expert != "none":
    lo = copy.deepcopy(net)
    lo.load_state_dict(load_file(expert))
    net = Experts(net, lo.eval(), t_split)
gen = torch.Generator().manual_seed(seed)
xs = []
t0 = time.time()
with torch.no_grad():
    for start in range(0, n, 256):
        b = min(256, n - start)
        xs.append(
            ddim_sample_loop(
                net,
                sched,
                (b, 1, 32, 32),
                eta=1.0,
                generator=gen,
                timesteps=ddim_timesteps(1000, 50),
                clip_range=(-clip, clip),
            ).images
        )
imgs = torch.cat(xs).clamp(-1, 1)
torch.save(imgs, outpt)
floor = real_floor(n, seed=0, include_memorisation=False)
r = distribution_metrics(evaluate(imgs, seed=0, include_memorisation=False))
u = to_uint8(imgs[..., 2:30, 2:30]).float()
print(
    json.dumps(
        {
            "expert": expert,
            "seed": seed,
            "n": n,
            "s": round(time.time() - t0),
            "ratio": round(r["fid"] / floor["fid"], 3),
            "ratio_resnet": round(r["fid_resnet"] / floor["fid_resnet"], 3),
            "fid": round(r["fid"], 4),
            "fid_resnet": round(r["fid_resnet"], 4),
            "P": r["precision"],
            "R": r["recall"],
            "P_r": r["precision_resnet"],
            "R_r": r["recall_resnet"],
            "faint": round(((u > 0) & (u < 26)).float().mean().item(), 4),
        }
    ),
    flush=True,
)
