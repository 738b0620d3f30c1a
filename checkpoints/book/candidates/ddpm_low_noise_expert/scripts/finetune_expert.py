"""eDiff-I-style low-noise expert: fine-tune a copy of the book DDPM on t < T_SPLIT with L_simple (uniform ε-MSE).
usage: finetune_expert.py BASE OUT STEPS T_SPLIT LR"""

import copy
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mnistdiff.data import load_mnist
from mnistdiff.ddpm import q_sample
from mnistdiff.model import DiffusionModel

torch.set_num_threads(2)
base, out, steps, t_split, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
m = DiffusionModel.load(base)
sched = m.schedule
net = copy.deepcopy(m.network).train()
ema = copy.deepcopy(net).eval()
for p in ema.parameters():
    p.requires_grad_(False)
opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
x = load_mnist("train").images
gen = torch.Generator().manual_seed(1234)
perm = torch.randperm(len(x), generator=gen)
pos = 0
t0 = time.time()
run = 0.0
for step in range(1, steps + 1):
    if pos + 128 > len(x):
        perm = torch.randperm(len(x), generator=gen)
        pos = 0
    xb = x[perm[pos : pos + 128]]
    pos += 128
    t = torch.randint(0, t_split, (128,), generator=gen)
    noise = torch.randn(xb.shape, generator=gen)
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, step / 100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = net(q_sample(sched, xb, t, noise), t)
    loss = F.mse_loss(pred.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    d = min(0.998, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.lerp_(pn, 1 - d)
        for be, bn in zip(ema.buffers(), net.buffers()):
            be.copy_(bn)
    run = 0.98 * run + 0.02 * loss.item()
    if step % 100 == 0:
        print(step, round(run / (1 - 0.98**step), 5), round(time.time() - t0), flush=True)
    if step % 500 == 0 or step == steps:
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, f"{out}_ema_{step}.safetensors")
print("DONE", round(time.time() - t0), flush=True)
