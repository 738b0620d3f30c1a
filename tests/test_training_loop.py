"""The training loop's structure (issue 11): one TrainState that saves and restores itself, a short run loop.

Interrupted-and-resumed runs equal uninterrupted ones bit for bit: tests/test_robustness.py checks that
(SIGINT mid-epoch, SIGTERM at an epoch boundary, a crash between renames, a CLI subprocess). Here: the
state's round trip field by field, the on-disk keys of ``last.pt``, a ``last.pt`` whose sidecar predates
the precision field, and the size of the loop's functions.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from mnistdiff.config import TrainConfig
from mnistdiff.training import loop, precision, signals, state
from mnistdiff.training.checkpoints import load_checkpoint, save_checkpoint
from mnistdiff.training.experiment import Experiment
from mnistdiff.training.loop import TrainingInterrupted, TrainLoop, TrainTask, fit
from mnistdiff.training.state import CHECKPOINT_KEYS, SIDECAR_KEYS, TrainState

# What last.pt has held since resumable checkpoints exist: a file written by an older version must resume.
LAST_PT_KEYS = ("model", "ema", "optimizer", "scheduler", "rng", "epoch", "step", "perm", "loss_sum", "loss_count")


def _cfg(seed: int = 0) -> TrainConfig:
    return TrainConfig(epochs=3, batch_size=8, lr=1e-2, warmup_steps=2, sample_every=1, eval_size=8, seed=seed)


def _state(seed: int) -> TrainState:
    torch.manual_seed(seed)
    return TrainState.create(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), _cfg(seed), total_steps=9)


def _train(s: TrainState, steps: int) -> None:
    """A few optimiser steps drawing from the global RNG and from the state's generator."""
    s.model.train()
    for _ in range(steps):
        x = torch.randn(8, 4)[torch.randperm(8, generator=s.generator)]
        loss = s.model(x).pow(2).mean()
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        s.scheduler.step()
        s.ema.update_parameters(s.model)


def _assert_equal(a, b, path: str = "") -> None:
    """Nested dicts/lists/tuples of tensors and numbers equal exactly (dtype and shape included)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _assert_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _on_disk(obj):
    """``obj`` after torch.save/torch.load with weights_only (what a checkpoint round trip does)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_restores_every_field():
    a = _state(seed=1)
    _train(a, 5)
    a.epoch, a.step, a.perm = 1, 2, torch.randperm(24, generator=a.generator)
    a.loss_sum, a.loss_count = 3.25, 2
    a.history = [{"epoch": 1, "train_loss": 1.5, "eval_loss": 1.25, "lr": 0.01, "seconds": 0.5}]
    a.elapsed = 12.0
    saved = a.state_dict()
    assert tuple(saved) == CHECKPOINT_KEYS + SIDECAR_KEYS
    torch.manual_seed(123)  # the global RNG moves on; loading must restore it
    b = _state(seed=2)  # other initial weights, an untouched optimiser, schedule, EMA and generator
    b.load_state_dict(_on_disk(saved))

    _assert_equal(a.model.state_dict(), b.model.state_dict(), "model")
    _assert_equal(a.ema.state_dict(), b.ema.state_dict(), "ema")
    assert b.ema._updates == a.ema._updates == 5
    _assert_equal(a.optimizer.state_dict(), b.optimizer.state_dict(), "optimizer")
    _assert_equal(a.scheduler.state_dict(), b.scheduler.state_dict(), "scheduler")
    assert b.scheduler.get_last_lr() == a.scheduler.get_last_lr()
    assert torch.equal(b.generator.get_state(), a.generator.get_state())
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert (b.epoch, b.step, b.loss_sum, b.loss_count) == (1, 2, 3.25, 2)
    assert torch.equal(b.perm, a.perm)
    assert b.history == a.history and b.history is not a.history
    assert b.elapsed == pytest.approx(saved["seconds"]) and b.elapsed >= 12.0
    assert b.seconds() == pytest.approx(b.elapsed, abs=1.0)

    # and the two go on identically: the same draws, the same steps
    torch.set_rng_state(saved["rng"]["torch"])
    _train(a, 3)
    after_a = _on_disk(a.state_dict())
    torch.set_rng_state(saved["rng"]["torch"])
    _train(b, 3)
    after_b = _on_disk(b.state_dict())
    for key in CHECKPOINT_KEYS:
        _assert_equal(after_a[key], after_b[key], key)


def test_a_state_saved_by_a_fused_optimizer_resumes_with_this_machines_kernels():
    """A run started on one machine continues on another (a CPU run on a GPU): the moments and steps
    come from the checkpoint, the way the optimizer runs (fused or not) stays the one created here."""
    torch.manual_seed(0)
    a = TrainState.create(nn.Linear(4, 4), _cfg(0), total_steps=9, fused=True)
    _train(a, 3)
    b = TrainState.create(nn.Linear(4, 4), _cfg(0), total_steps=9)  # not fused, as on a CPU
    b.load_state_dict(_on_disk(a.state_dict()))
    assert b.optimizer.param_groups[0]["fused"] is False and a.optimizer.param_groups[0]["fused"] is True
    _assert_equal(a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"], "moments")


def test_between_epochs_the_permutation_round_trips_as_none():
    a = _state(seed=1)
    _train(a, 2)
    a.perm = torch.randperm(24, generator=a.generator)
    a.loss_sum, a.loss_count, a.step = 1.0, 1, 1
    a.next_epoch()
    assert (a.epoch, a.step, a.perm, a.loss_sum, a.loss_count) == (1, 0, None, 0.0, 0)
    saved = a.state_dict()
    assert saved["perm"].numel() == 0 and saved["perm"].dtype == torch.long
    b = _state(seed=1)
    b.perm = torch.arange(3)
    b.load_state_dict(_on_disk(saved))
    assert b.perm is None and b.epoch == 1


def _task() -> TrainTask:
    torch.manual_seed(0)
    model = nn.Linear(4, 4)

    def loss_fn(m, batch, gen):  # noise from the global RNG during training, like the real losses
        noise = torch.randn(batch.shape, generator=gen)
        return (m(batch + noise) - batch).pow(2).mean()

    data = torch.randn((24, 4), generator=torch.Generator().manual_seed(1))
    cfg = _cfg()
    return TrainTask("ddpm", model, loss_fn, data, data[:8], cfg)


def test_last_pt_keeps_its_keys_and_sidecar_fields(tmp_path):
    assert CHECKPOINT_KEYS == LAST_PT_KEYS
    exp = Experiment.create(tmp_path, "ddpm")
    fit(_task(), exp, progress=False)
    tensors, meta = load_checkpoint(exp.last_checkpoint, kind="ddpm-resume")
    assert tuple(tensors) == LAST_PT_KEYS
    assert (meta["epoch"], meta["step"], meta["precision"]) == (3, 0, "fp32")
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3] and meta["seconds"] > 0
    # every epoch names where and how it trained: a run resumed on another machine keeps each epoch's provenance
    here = precision.machine_name(torch.device("cpu"))
    assert {(h["machine"], h["precision"]) for h in meta["history"]} == {(here, "fp32")}
    assert set(tensors["rng"]) >= {"torch", "perm_gen"}


def test_snapshots_are_model_files_of_the_ema_with_their_training_seconds(tmp_path):
    import dataclasses

    from mnistdiff.modelfile import load_model_file

    task = _task()
    task.config = dataclasses.replace(task.config, snapshot_every=2, epochs=4)
    result = fit(task, Experiment.create(tmp_path, "ddpm"), progress=False)
    snaps = sorted((result.experiment.path / "snapshots").iterdir())
    assert [p.name for p in snaps] == ["epoch_002.safetensors", "epoch_004.safetensors"]
    (early, early_meta), (last, last_meta) = (load_model_file(p) for p in snaps)
    _assert_equal(last, {k: v for k, v in result.ema_model.state_dict().items()})  # the last one is the model's
    assert (early_meta["epoch"], last_meta["epoch"]) == (2, 4)
    assert 0 < early_meta["seconds"] < last_meta["seconds"] <= result.seconds + 1e-6
    assert any(not torch.equal(early[k], last[k]) for k in early)


def test_last_pt_without_precision_in_its_sidecar_resumes_bit_exactly(tmp_path):
    """A sidecar from before the precision field: the run resolves it again (fp32) and ends as an uninterrupted one."""
    plain = fit(_task(), Experiment.create(tmp_path / "plain", "ddpm"), progress=False)
    exp = Experiment.create(tmp_path / "old", "ddpm")
    task = _task()
    task.sample_fn = lambda model, folder, tag: os.kill(os.getpid(), signal.SIGTERM) if tag == "epoch_001" else None
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM at step 4 \(epoch 2, batch 1 of 3\)"):
        fit(task, exp, progress=False)
    tensors, meta = load_checkpoint(exp.last_checkpoint, kind="ddpm-resume")
    assert (meta["epoch"], meta["step"]) == (1, 0)
    save_checkpoint(exp.last_checkpoint, tensors, kind="ddpm-resume", config=task.run_config,
                    extra={k: meta[k] for k in ("epoch", "step", "history", "seconds")})
    assert "precision" not in json.loads(exp.last_checkpoint.with_suffix(".json").read_text())
    resumed = fit(_task(), exp, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    _assert_equal(plain.ema_model.state_dict(), resumed.ema_model.state_dict(), "ema_model")
    for key in ("model", "ema", "optimizer", "scheduler", "rng"):
        _assert_equal(load_checkpoint(plain.experiment.last_checkpoint, kind="ddpm-resume")[0][key],
                      load_checkpoint(exp.last_checkpoint, kind="ddpm-resume")[0][key], key)


def test_run_loop_is_short_and_every_function_fits_on_a_screen():
    assert len(inspect.getsource(TrainLoop.run_loop).splitlines()) <= 30
    for module in (loop, state, precision, signals):
        path = Path(module.__file__)
        text = path.read_text()
        assert len(text.splitlines()) <= 400, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                assert node.end_lineno - start + 1 <= 60, f"{path.name}: {node.name}"
                assert ast.get_docstring(node) or node.name in {"handler", "__init__"}, f"{path.name}: {node.name}"


def test_two_package_steps_equal_chapter_2s_algorithm_1_by_hand(tmp_path):
    """Chapter 2 trains with a loop of its own (``algorithm1``): AdamW without weight decay, a linear warm-up over a
    tenth of the run then a cosine decay to 10 % of the peak, the gradient norm clipped at 1, and an EMA that copies θ
    at the first update, then θ_EMA ← d_n θ_EMA + (1 − d_n) θ with d_n = min(d, (1 + n)/(10 + n)). Written here by
    hand as the chapter writes it, two of its steps must give the same weights and EMA weights as two steps of
    ``TrainLoop.train_step`` over its ``TrainState``, on the same batches and the same draws of t and ε."""
    import copy
    import math

    import torch.nn.functional as F

    from mnistdiff.config import UNetConfig
    from mnistdiff.schedules import NoiseSchedule
    from mnistdiff.training.pipelines import make_diffusion_loss
    from mnistdiff.training.signals import StopFlag
    from mnistdiff.unet import UNet

    def lr_factor(step: int, total: int) -> float:  # chapter 2's
        warmup = max(total // 10, 1)
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    batch, lr, decay, seed, epochs = 8, 2e-3, 0.999, 0, 5
    sched = NoiseSchedule.make("cosine", 100)
    data = torch.rand((4 * batch, 1, 32, 32), generator=torch.Generator().manual_seed(1)) * 2 - 1
    total = len(data) // batch * epochs  # 20 steps: a warm-up of 2, so the two steps differ in learning rate
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(2))  # the batches of both loops
    torch.manual_seed(seed)
    net = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                          num_heads=2))  # the smoke profile's tiny UNet, as in the chapter
    twin = copy.deepcopy(net)
    start = [p.detach().clone() for p in net.parameters()]

    # the chapter's loop
    ema = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(2):
        x0 = data[perm[step * batch:(step + 1) * batch]]
        noise_gen = torch.Generator().manual_seed(seed + 1 + step)
        t = torch.randint(0, sched.num_timesteps, (batch,), generator=noise_gen)
        eps = torch.randn(x0.shape, generator=noise_gen)
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, total)
        # x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with the schedule's float64-computed roots: √ of the float32 ᾱ_t rounds
        # differently, and Adam's first steps (g/√v) turn a rounding difference in a near-zero gradient into a step
        root_ab, root_1mab = sched.sqrt_alphas_cumprod[t], sched.sqrt_one_minus_alphas_cumprod[t]
        x_t = root_ab.view(-1, 1, 1, 1) * x0 + root_1mab.view(-1, 1, 1, 1) * eps
        loss = F.mse_loss(net(x_t, t), eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = 0.0 if step == 0 else min(decay, (1 + step) / (10 + step))
            for e, p in zip(ema, net.parameters()):
                e.mul_(d).add_(p.detach(), alpha=1 - d)
        losses.append(loss.item())

    # the package's step; its loss draws t and ε from the global RNG, seeded per step as the chapter seeds its own
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch, warmup_steps=max(total // 10, 1), ema_decay=decay,
                      seed=seed)
    task = TrainTask("ddpm", twin, make_diffusion_loss(sched), data, data[:batch], cfg)
    pkg = TrainLoop(task, Experiment.create(tmp_path, "ddpm"), StopFlag(), torch.device("cpu"), progress=False)
    assert pkg.steps_per_epoch * epochs == total
    for step in range(2):
        torch.manual_seed(seed + 1 + step)
        pkg.train_step(perm, step, None)

    assert pkg.state.loss_count == 2 and pkg.state.loss_sum == pytest.approx(sum(losses), rel=1e-5)
    assert pkg.state.scheduler.get_last_lr()[0] == pytest.approx(lr * lr_factor(2, total))
    for ours, theirs in zip(net.parameters(), pkg.state.model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)
    for ours, theirs in zip(ema, pkg.state.ema.module.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)
    # not vacuous: the weights moved, and the second EMA update averaged (d_1 = 2/11) rather than copied
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), start))
    assert any(not torch.allclose(e, p) for e, p in zip(ema, net.parameters()))
