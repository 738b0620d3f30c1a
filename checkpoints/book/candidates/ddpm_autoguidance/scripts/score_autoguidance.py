"""DDIM-50 eta=1 with autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself",
eq. 2 in eps form: eps = eps_guide + w * (eps_main - eps_guide)), both feature spaces, paired with the package's
draws (same generator sequence as `seed_spread.py`). usage: score_autoguidance.py MAIN GUIDE|none W N SEED OUTPT
[T_LO]: guided only at t >= T_LO (a guidance interval, Kynkaanniemi et al. 2024), the main network alone below."""

import json
import sys
import time

import torch

from mnistdiff.data import to_uint8
from mnistdiff.ddim import ddim_sample_loop, ddim_timesteps
from mnistdiff.evaluation.metrics import distribution_metrics, evaluate, real_floor
from mnistdiff.model import DiffusionModel

torch.set_num_threads(2)
main_path, guide_path, w, outpt = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[6]
n, seed = int(sys.argv[4]), int(sys.argv[5])
t_lo = int(sys.argv[7]) if len(sys.argv) > 7 else 0
main = DiffusionModel.load(main_path)
net = main.network.eval()


class Autoguided(torch.nn.Module):
    """(x_t, t) -> eps_guide + w (eps_main - eps_guide); both networks see the same x_t and t."""

    def __init__(self, main, guide, w, t_lo):
        super().__init__()
        self.main, self.guide, self.w, self.t_lo = main, guide, w, t_lo

    def forward(self, x, t, *a):
        if int(t.max()) < self.t_lo:
            return self.main(x, t, *a)
        eps_g = self.guide(x, t, *a)
        return eps_g + self.w * (self.main(x, t, *a) - eps_g)


if guide_path != "none":
    guide = DiffusionModel.load(guide_path)
    assert guide.schedule.alphas_cumprod.equal(main.schedule.alphas_cumprod), "guide must share the schedule"
    net = Autoguided(net, guide.network.eval(), w, t_lo)
gen = torch.Generator().manual_seed(seed)
xs = []
t0 = time.time()
with torch.no_grad():
    for start in range(0, n, 256):
        b = min(256, n - start)
        xs.append(
            ddim_sample_loop(
                net, main.schedule, (b, 1, 32, 32), eta=1.0, generator=gen, timesteps=ddim_timesteps(1000, 50)
            ).images
        )
seconds = time.time() - t0
imgs = torch.cat(xs).clamp(-1, 1)
torch.save(imgs, outpt)
floor = real_floor(n, seed=0, include_memorisation=False)
r = distribution_metrics(evaluate(imgs, seed=0, include_memorisation=False))
u = to_uint8(imgs[..., 2:30, 2:30]).float()
print(
    json.dumps(
        {
            "guide": guide_path,
            "w": w,
            "t_lo": t_lo,
            "seed": seed,
            "n": n,
            "s": round(seconds),
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
