"""How much of the FID sits in the least confident samples? Drop the q least confident (by the lower of the two
networks' top probability) from generated and from real digits alike, FID of the rest, both spaces."""

import sys

import torch

from mnistdiff.evaluation.distances import frechet_distance
from mnistdiff.evaluation.features import classifier_features
from mnistdiff.evaluation.metrics import floor_images, reference_features

torch.set_num_threads(2)
sets = {"real": floor_images(2000, 0)}
for p in sys.argv[1:]:
    sets[p.split("/")[-1][:-3]] = torch.load(p)
ref = {s: reference_features(None, None, 0, space=s)[0] for s in ("classifier", "resnet")}
for name, imgs in sets.items():
    f = {}
    conf = None
    for s in ("classifier", "resnet"):
        f[s], p = classifier_features(imgs, space=s)
        c = p.max(1).values
        conf = c if conf is None else torch.minimum(conf, c)
    order = conf.argsort(descending=True)
    low = [(conf < th).float().mean().item() for th in (0.5, 0.9, 0.99)]
    row = []
    for q in (0.0, 0.05, 0.10, 0.20):
        keep = order[: int(len(order) * (1 - q))]
        fids = [frechet_distance(f[s][keep], ref[s]) for s in ("classifier", "resnet")]
        row.append(f"drop{int(q * 100)}%: {fids[0]:.3f}/{fids[1]:.3f}")
    print(f"{name:28s} conf<.5/.9/.99 = {low[0]:.3f}/{low[1]:.3f}/{low[2]:.3f} | " + " | ".join(row), flush=True)
