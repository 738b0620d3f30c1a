"""Diagnostic only: set uint8 values <= k to 0 in a sample tensor and re-score both spaces against the floor at the
same n. usage: threshold_faint.py SAMPLES.pt [N]"""

import sys

import torch

from mnistdiff.data import load_mnist, to_uint8
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, real_floor

torch.set_num_threads(2)


def q(x, k):
    u = to_uint8(x).float()
    u = torch.where(u <= k, torch.zeros_like(u), u)
    return u / 127.5 - 1


n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
KS = (0, 3, 6)
floor = real_floor(n, seed=0, include_memorisation=False)
print("floor", round(floor["fid"], 4), round(floor["fid_resnet"], 4))
x = torch.load(sys.argv[1])[:n]
tr = load_mnist("train").images[5000 : 5000 + n]
for name, imgs in (("gen", x),):
    for k in KS:
        r = distribution_metrics(evaluate(q(imgs, k), seed=0, include_memorisation=False))
        print(
            name,
            k,
            round(r["fid"] / floor["fid"], 3),
            round(r["fid_resnet"] / floor["fid_resnet"], 3),
            r["precision"],
            r["recall"],
            r["precision_resnet"],
            r["recall_resnet"],
            flush=True,
        )
