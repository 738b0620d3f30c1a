"""Seeded random subsets and contiguous slices of 1,000 training digits, scored as if generated, in both spaces,
against the floor of 1,000 (seed 0). usage: real_slices.py"""

import torch

from mnistdiff.data import load_mnist
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, real_floor

torch.set_num_threads(2)
n = 1000
floor = real_floor(n, seed=0, include_memorisation=False)
tr = load_mnist("train")
for name, imgs in (
    ("seed1", tr.subset(n, seed=1).images),
    ("seed2", tr.subset(n, seed=2).images),
    ("[0:1000]", tr.images[:n]),
    ("[30000:31000]", tr.images[30000:31000]),
    ("[59000:60000]", tr.images[59000:]),
):
    r = distribution_metrics(evaluate(imgs, seed=0, include_memorisation=False))
    print(name, round(r["fid"] / floor["fid"], 3), round(r["fid_resnet"] / floor["fid_resnet"], 3), flush=True)
