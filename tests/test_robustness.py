"""Robustness of the command line and of checkpoints (issue 7).

* checkpoints: atomic pair (.pt + JSON sidecar) with format version, kind, config and SHA-256;
  truncated / corrupt / wrong-kind / wrong-config / code-running files are refused with a message
  saying what was expected; a full disk leaves the previous checkpoint intact; a crash between
  the two renames is survived through ``last.prev.pt``;
* training: ``--resume`` after Ctrl-C / SIGTERM (mid-epoch, at an epoch boundary, in a subprocess)
  or after a crash gives bit-identical weights to an uninterrupted run on CPU; a NaN loss stops
  with the step named and keeps the last good checkpoint;
* the command line refuses bad arguments with exit code 2 before writing anything, and names a
  damaged MNIST file (exit code 1).

Everything trains a tiny DDPM (smoke profile, 64 images, batch 32, T = 20) with one CPU thread:
on a shared two-core machine more threads are slower, and a fixed thread count keeps the float
results of different runs identical.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnistdiff import cli
from mnistdiff.config import to_dict
from mnistdiff.course.profiles import SMOKE
from mnistdiff.data import ASSET_DIR
from mnistdiff.modelfile import load_model_file, save_model_file
from mnistdiff.training import checkpoints as C
from mnistdiff.training import pipelines
from mnistdiff.training.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from mnistdiff.training.loop import TrainingDiverged, TrainingInterrupted
from mnistdiff.unet import UNet

REPO = Path(__file__).resolve().parent.parent

# The tiny run every training test uses (3 epochs × 2 steps; samples after every epoch, so that the
# epoch-sample callback sits between a checkpoint and the next step).
TINY = ["--profile", "smoke", "--subset", "64", "--epochs", "3", "--batch_size", "32", "--timesteps", "20",
        "--sample_every", "1"]
COMMON = ["--quiet", "--device", "cpu"]


def tiny_cfg():
    return cli._train_config(cli.build_parser().parse_args(["train", "ddpm", *TINY]))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(argv: list[str]) -> int:
    """``python -m mnistdiff ARGV`` in-process: its exit code (argparse's SystemExit included)."""
    try:
        return cli.main(argv)
    except SystemExit as err:
        return int(err.code or 0)


def only_experiment(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def state_tensors(obj, prefix=""):
    """Flatten nested dicts/lists of tensors and numbers to {path: value}."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(state_tensors(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(state_tensors(v, f"{prefix}{i}."))
    else:
        out[prefix] = obj
    return out


def assert_same_run(exp_a: Path, exp_b: Path) -> None:
    """Bit-identical final EMA weights (the model file) and final model/EMA/optimiser/scheduler/RNG (last.pt)."""
    ma, _ = load_model_file(exp_a / "checkpoints" / "model.safetensors", kind="ddpm")
    mb, _ = load_model_file(exp_b / "checkpoints" / "model.safetensors", kind="ddpm")
    la, _ = load_checkpoint(exp_a / "checkpoints" / "last.pt", kind="ddpm-resume")
    lb, _ = load_checkpoint(exp_b / "checkpoints" / "last.pt", kind="ddpm-resume")
    for a, b in ((ma, mb), (la, lb)):
        fa, fb = state_tensors(a), state_tensors(b)
        assert fa.keys() == fb.keys()
        for key in fa:
            va, vb = fa[key], fb[key]
            if isinstance(va, torch.Tensor):
                assert va.dtype == vb.dtype and va.shape == vb.shape and torch.equal(va, vb), f"{key} differs"
            else:
                assert va == vb, f"{key}: {va!r} != {vb!r}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny run: the weights every interrupted-and-resumed run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("reference")
    result = pipelines.train_ddpm(tiny_cfg(), out=out, device="cpu", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    return result.experiment.path


def hook_loss(monkeypatch, hook):
    """Wrap the diffusion loss: ``hook(kind, n, loss)`` is called on the n-th training ("train") or eval call."""
    real = pipelines.make_diffusion_loss

    def make(*args, **kwargs):
        inner = real(*args, **kwargs)
        count = {"train": 0, "eval": 0}

        def loss_fn(model, batch, gen):
            kind = "train" if gen is None else "eval"
            count[kind] += 1
            return hook(kind, count[kind], inner(model, batch, gen))

        return loss_fn

    monkeypatch.setattr(pipelines, "make_diffusion_loss", make)


# ------------------------------------------------------------------------------------------
# Checkpoint files
# ------------------------------------------------------------------------------------------

DDPM_CFG = json.loads(json.dumps(to_dict(SMOKE.ddpm)))  # as the sidecar stores it (lists)


def _tiny_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn((4, 3), generator=g), "b": torch.zeros(3)}, "epoch": seed,
            "rng": torch.ones(2, dtype=torch.uint8)}


def test_save_writes_verified_pair(tmp_path):
    path = save_checkpoint(tmp_path / "ck" / "model.pt", _tiny_state(), kind="ddpm", config=DDPM_CFG,
                           extra={"epoch": 3})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format_version"] == C.FORMAT_VERSION and meta["kind"] == "ddpm" and meta["config"] == DDPM_CFG
    assert meta["sha256"] == C.sha256_file(path) and meta["bytes"] == path.stat().st_size and meta["epoch"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.pt"]  # no temporary file left
    state, meta2 = load_checkpoint(path, kind="ddpm", expect_config={"diffusion": DDPM_CFG["diffusion"]})
    assert torch.equal(state["model"]["w"], _tiny_state()["model"]["w"]) and meta2 == meta


@pytest.mark.parametrize("damage, match", [
    ("truncate", r"is truncated: its SHA-256 does not match"),
    ("flip", r"is corrupt: its SHA-256 does not match"),
    ("no_sidecar", r"has no sidecar model\.json"),
    ("bad_sidecar", r"not JSON"),
    ("old_format", r"format version 0, expected 1: retrain"),
    ("missing", r"does not exist"),
])
def test_damaged_checkpoint_is_refused(tmp_path, damage, match):
    path = save_checkpoint(tmp_path / "model.pt", _tiny_state(), kind="ddpm", config=DDPM_CFG)
    side = path.with_suffix(".json")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    elif damage == "no_sidecar":
        side.unlink()
    elif damage == "bad_sidecar":
        side.write_text("{not json")
    elif damage == "old_format":
        side.write_text(json.dumps({**json.loads(side.read_text()), "format_version": 0}))
    elif damage == "missing":
        path.unlink()
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path, kind="ddpm")


def test_wrong_kind_and_config_are_refused(tmp_path):
    vae = save_checkpoint(tmp_path / "vae.pt", _tiny_state(), kind="vae", config=to_dict(SMOKE.vae))
    with pytest.raises(CheckpointError, match=r"holds a 'vae' model, expected 'ddpm': check which file"):
        load_checkpoint(vae, kind="ddpm")
    with pytest.raises(CheckpointError, match=r"expected 'ddpm' or 'ldm'"):
        load_checkpoint(vae, kind=("ddpm", "ldm"))
    ddpm = save_checkpoint(tmp_path / "ddpm.pt", _tiny_state(), kind="ddpm", config=DDPM_CFG)
    want = {**DDPM_CFG, "diffusion": {**DDPM_CFG["diffusion"], "timesteps": 1000}}
    with pytest.raises(CheckpointError, match=r"incompatible config: diffusion\.timesteps: expected 1000, "
                                              r"checkpoint has 100\. Use the settings"):
        load_checkpoint(ddpm, kind="ddpm", expect_config=want)
    # and through the loader the command line uses: a VAE's model file is not a DDPM
    from mnistdiff.model import DiffusionModel
    from mnistdiff.vae import VAE

    vae_file = save_model_file(tmp_path / "vae.safetensors", VAE(SMOKE.vae.vae).state_dict(),
                               {"kind": "vae", "config": to_dict(SMOKE.vae)})
    with pytest.raises(CheckpointError,
                       match="holds a 'vae' model, expected a 'ddpm' or 'ldm' or 'cldm' or 'flow' one"):
        DiffusionModel.load(vae_file)


class _RunsCode:
    """Unpickling this calls os.mkdir(target): what a malicious checkpoint could do."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    # a sidecar that matches the file exactly, so that only the unpickling can refuse it
    meta = {"format_version": C.FORMAT_VERSION, "kind": "ddpm", "config": DDPM_CFG,
            "sha256": C.sha256_file(path), "bytes": path.stat().st_size}
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"refused: torch\.load\(weights_only=True\)"):
        load_checkpoint(path, kind="ddpm")
    assert not marker.exists(), "loading a checkpoint ran code"
    # the file really is malicious: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.is_dir()


class _FullDiskWriter:
    """A file whose write() stores half the bytes and then fails with ENOSPC."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        self._f.write(bytes(data[: len(data) // 2]))
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def fill_disk(monkeypatch, name_contains: str, after: int = 0) -> dict:
    """Make writes of temporary files whose name contains ``name_contains`` fail midway (after ``after`` successes)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to see which file is being written")
    real = os.fdopen
    seen = {"n": 0, "failed": 0}

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        if name_contains in os.readlink(f"/proc/self/fd/{fd}"):
            seen["n"] += 1
            if seen["n"] > after:
                seen["failed"] += 1
                return _FullDiskWriter(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return seen


@pytest.mark.parametrize("which", [".last.pt.", ".last.json."])
def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch, which):
    path = save_checkpoint(tmp_path / "last.pt", _tiny_state(1), kind="ddpm-resume", config=DDPM_CFG)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    seen = fill_disk(monkeypatch, which)
    with pytest.raises(CheckpointError, match=r"ran out of disk space while writing .*last\.pt; the previous "
                                              r"last\.pt is intact \(it still loads\) and no temporary file"):
        save_checkpoint(path, _tiny_state(2), kind="ddpm-resume", config=DDPM_CFG, keep_previous=True)
    monkeypatch.undo()
    assert seen["failed"] == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file, nothing replaced
    state, _ = load_checkpoint(path, kind="ddpm-resume")
    assert state["epoch"] == 1


def test_crash_between_renames_falls_back_to_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _tiny_state(1), kind="ddpm-resume", config=DDPM_CFG, keep_previous=True)
    save_checkpoint(path, _tiny_state(2), kind="ddpm-resume", config=DDPM_CFG, keep_previous=True)
    assert load_checkpoint(C.previous_path(path))[0]["epoch"] == 1

    class Crash(BaseException):
        pass

    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("last.json"):
            raise Crash  # the power goes out after last.pt was renamed, before its sidecar was
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        save_checkpoint(path, _tiny_state(3), kind="ddpm-resume", config=DDPM_CFG, keep_previous=True)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_checkpoint(path)  # the newest pair is inconsistent...
    state, meta = load_checkpoint(path, fallback=True)  # ...and the previous good one is used
    assert state["epoch"] == 2 and meta["loaded_from"].endswith("last.prev.pt") and "SHA-256" in meta["fallback_reason"]
    # the next save must not rotate the broken pair into last.prev.pt
    save_checkpoint(path, _tiny_state(4), kind="ddpm-resume", config=DDPM_CFG, keep_previous=True)
    assert load_checkpoint(C.previous_path(path))[0]["epoch"] == 2
    assert load_checkpoint(path)[0]["epoch"] == 4


# ------------------------------------------------------------------------------------------
# Interrupt, resume, diverge, run out of disk (tiny real training runs)
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_mid_epoch_then_resume_is_bit_exact(tmp_path, monkeypatch, reference):
    def hook(kind, n, loss):
        if kind == "train" and n == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 1: caught, saved at step 2
        return loss

    hook_loss(monkeypatch, hook)
    with pytest.raises(TrainingInterrupted) as info:
        pipelines.train_ddpm(tiny_cfg(), out=tmp_path, device="cpu", progress=False)
    msg = str(info.value)
    assert info.value.signum == signal.SIGINT
    assert "SIGINT at step 2 (epoch 1, batch 2 of 2)" in msg and "--resume" in msg
    exp = only_experiment(tmp_path)
    state, meta = load_checkpoint(exp / "checkpoints" / "last.pt", kind="ddpm-resume")
    assert (meta["epoch"], meta["step"]) == (0, 1) and state["perm"].numel() == 64  # mid-epoch: data order kept
    assert not (exp / "checkpoints" / "model.safetensors").exists()
    monkeypatch.undo()
    pipelines.train_ddpm(tiny_cfg(), device="cpu", resume=exp, progress=False)
    assert_same_run(reference, exp)


@pytest.mark.slow
def test_sigterm_at_epoch_boundary_then_resume_is_bit_exact(tmp_path, monkeypatch, reference, capsys):
    def hook(kind, n, loss):
        if kind == "eval" and n == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # during the end-of-epoch-1 evaluation
        return loss

    hook_loss(monkeypatch, hook)
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM after epoch 1;") as info:
        pipelines.train_ddpm(tiny_cfg(), out=tmp_path, device="cpu", progress=False)
    assert info.value.signum == signal.SIGTERM
    exp = only_experiment(tmp_path)
    _, meta = load_checkpoint(exp / "checkpoints" / "last.pt", kind="ddpm-resume")
    assert (meta["epoch"], meta["step"]) == (1, 0)
    monkeypatch.undo()
    # Resume through the command line (the run's settings are read from it), and interrupt again: Ctrl-C
    # while epoch 2's samples are drawn is seen at step 0 of epoch 3, after its data order was drawn.
    real_save_grid = pipelines.save_grid
    calls = {"n": 0}

    def save_grid(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save_grid(*args, **kwargs)

    monkeypatch.setattr(pipelines, "save_grid", save_grid)
    assert run_cli(["train", "ddpm", "--resume", str(exp), *COMMON]) == 128 + signal.SIGINT
    monkeypatch.undo()
    state, meta = load_checkpoint(exp / "checkpoints" / "last.pt", kind="ddpm-resume")
    assert (meta["epoch"], meta["step"]) == (2, 0) and state["perm"].numel() == 64
    assert run_cli(["train", "ddpm", "--resume", str(exp), *COMMON]) == 0
    assert_same_run(reference, exp)


@pytest.mark.slow
def test_crash_between_renames_then_resume_is_bit_exact(tmp_path, monkeypatch, reference):
    """The process dies after last.pt was replaced but before its sidecar: resume falls back to last.prev.pt."""

    class Crash(BaseException):
        pass

    real = os.replace
    seen = {"n": 0}

    def replace(src, dst):
        if str(dst).endswith(os.path.join("checkpoints", "last.json")):
            seen["n"] += 1
            if seen["n"] == 2:  # the save after epoch 2
                raise Crash
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        pipelines.train_ddpm(tiny_cfg(), out=tmp_path, device="cpu", progress=False)
    monkeypatch.undo()
    exp = only_experiment(tmp_path)
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_checkpoint(exp / "checkpoints" / "last.pt")
    with pytest.warns(RuntimeWarning, match=r"Resuming from the previous checkpoint .*last\.prev\.pt"):
        pipelines.train_ddpm(tiny_cfg(), device="cpu", resume=exp, progress=False)
    assert_same_run(reference, exp)
    assert "failed verification; resuming from" in (exp / "training_log.txt").read_text()


@pytest.mark.slow
def test_sigterm_to_cli_subprocess_then_resume_is_bit_exact(tmp_path, reference):
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mnistdiff", "train", "ddpm", *TINY, *COMMON, "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        # training_log.txt is written once fit() has installed its signal handlers
        while not list(out.glob("*/training_log.txt")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "training stopped by SIGTERM" in stderr and "--resume" in stderr, stderr
    exp = only_experiment(out)
    _, meta = load_checkpoint(exp / "checkpoints" / "last.pt", kind="ddpm-resume")
    assert meta["epoch"] * 2 + meta["step"] < 6
    assert not (exp / "checkpoints" / "model.safetensors").exists()
    assert run_cli(["train", "ddpm", "--resume", str(exp), *COMMON]) == 0
    assert_same_run(reference, exp)


def _linear_task(sample_fn=None):
    from mnistdiff.config import TrainConfig
    from mnistdiff.training.loop import TrainTask

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)

    def loss_fn(m, batch, gen):  # draws its noise from the global RNG during training, like the real losses
        noise = torch.randn(batch.shape, generator=gen)
        return (m(batch + noise) - batch).pow(2).mean()

    data = torch.randn((24, 4), generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, warmup_steps=2, sample_every=1, eval_size=8)
    return TrainTask("ddpm", model, loss_fn, data, data[:8], cfg, sample_fn=sample_fn)


def test_epoch_callbacks_do_not_shift_the_training_noise(tmp_path):
    """Sampling between epochs may draw from the global RNG; the weights must not depend on it."""
    from mnistdiff.training.experiment import Experiment
    from mnistdiff.training.loop import fit

    def greedy_sample_fn(model, folder, tag):
        torch.rand(1000)

    plain = fit(_linear_task(), Experiment.create(tmp_path / "a", "ddpm"), progress=False)
    greedy = fit(_linear_task(greedy_sample_fn), Experiment.create(tmp_path / "b", "ddpm"), progress=False)
    for a, b in zip(plain.ema_model.state_dict().values(), greedy.ema_model.state_dict().values()):
        assert torch.equal(a, b)


def test_signal_after_last_epoch_then_resume_writes_the_model(tmp_path):
    """A signal during the last epoch's samples: training is complete, --resume only writes the final files."""
    from mnistdiff.training.experiment import Experiment
    from mnistdiff.training.loop import fit

    plain = fit(_linear_task(), Experiment.create(tmp_path / "a", "ddpm"), progress=False)
    calls = {"n": 0}

    def sample_fn(model, folder, tag):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    exp = Experiment.create(tmp_path / "b", "ddpm")
    with pytest.raises(TrainingInterrupted,
                       match=r"SIGTERM after the last epoch, before the final samples and model\.safetensors"):
        fit(_linear_task(sample_fn), exp, progress=False)
    assert not exp.model_checkpoint.exists()
    resumed = fit(_linear_task(), exp, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(plain.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    assert load_model_file(exp.model_checkpoint, kind="ddpm")[1]["history"] == resumed.history


def test_second_ctrl_c_stops_at_once(tmp_path):
    from mnistdiff.training.experiment import Experiment
    from mnistdiff.training.loop import fit

    task = _linear_task()
    inner = task.loss_fn
    count = {"n": 0}

    def loss_fn(m, batch, gen):
        if gen is None:
            count["n"] += 1
            if count["n"] == 4:  # Ctrl-C pressed twice during one step
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs during the sleep (PEP 475): two presses, not one coalesced signal
                os.kill(os.getpid(), signal.SIGINT)
        return inner(m, batch, gen)

    task.loss_fn = loss_fn
    exp = Experiment.create(tmp_path, "ddpm")
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
    with pytest.raises(KeyboardInterrupt, match="second Ctrl-C: stopped without saving") as info:
        fit(task, exp, progress=False)
    assert not isinstance(info.value, TrainingInterrupted)
    _, meta = load_checkpoint(exp.last_checkpoint, kind="ddpm-resume")  # the epoch-1 checkpoint is kept
    assert (meta["epoch"], meta["step"]) == (1, 0)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


@pytest.mark.slow
def test_nan_loss_names_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    hook_loss(monkeypatch, lambda kind, n, loss: loss * float("nan") if kind == "train" and n == 3 else loss)
    assert run_cli(["train", "ddpm", *TINY, *COMMON, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 3 (epoch 2, batch 1 of 2)" in err
    assert "last.pt (after epoch 1) is kept as the latest" in err and "--lr" in err
    exp = only_experiment(tmp_path)
    state, meta = load_checkpoint(exp / "checkpoints" / "last.pt", kind="ddpm-resume")  # still verifies
    assert meta["epoch"] == 1 and int(state["epoch"]) == 1 and len(meta["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (exp / "checkpoints" / "model.safetensors").exists()


@pytest.mark.slow
def test_nan_in_first_epoch_raises_training_diverged(tmp_path, monkeypatch):
    hook_loss(monkeypatch, lambda kind, n, loss: loss * float("inf") if kind == "train" and n == 2 else loss)
    with pytest.raises(TrainingDiverged, match=r"loss became (inf|nan) at step 2 .*no checkpoint had been written"):
        pipelines.train_ddpm(tiny_cfg(), out=tmp_path, device="cpu", progress=False)
    assert not (only_experiment(tmp_path) / "checkpoints" / "last.pt").exists()


@pytest.mark.slow
def test_full_disk_during_training_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys):
    seen = fill_disk(monkeypatch, ".last.pt.", after=1)  # the save after epoch 2 fails midway
    assert run_cli(["train", "ddpm", *TINY, *COMMON, "--out", str(tmp_path)]) == 1
    monkeypatch.undo()
    assert seen["failed"] == 1
    err = capsys.readouterr().err
    assert "ran out of disk space while writing" in err and "the previous last.pt is intact" in err
    assert "--resume" in err
    exp = only_experiment(tmp_path)
    _, meta = load_checkpoint(exp / "checkpoints" / "last.pt", kind="ddpm-resume")
    assert meta["epoch"] == 1
    assert not [p for p in (exp / "checkpoints").iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------
# Command-line arguments: exit code 2 and a message, before anything is written
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A DDPM (T = 20) and a VAE model file (untrained weights) and two resumable runs."""
    from mnistdiff.vae import VAE

    root = tmp_path_factory.mktemp("ckpts")
    cfg = tiny_cfg()
    ddpm = save_model_file(root / "ddpm" / "model.safetensors", UNet(cfg.unet).state_dict(),
                           {"kind": "ddpm", "config": to_dict(cfg)})
    vae = save_model_file(root / "vae" / "model.safetensors", VAE(SMOKE.vae.vae).state_dict(),
                          {"kind": "vae", "config": to_dict(SMOKE.vae)})
    resume = save_checkpoint(root / "vae_run" / "checkpoints" / "last.pt", {"epoch": 1}, kind="vae-resume",
                             config=to_dict(SMOKE.vae))
    ddpm_run = save_checkpoint(root / "ddpm_run" / "checkpoints" / "last.pt", {"epoch": 1}, kind="ddpm-resume",
                               config=to_dict(cfg))
    return {"ddpm": ddpm, "vae": vae, "vae_run": resume.parent.parent, "ddpm_run": ddpm_run.parent.parent}


BAD_ARGS = [
    # training
    (["train", "ddpm", "--epochs", "0"], r"--epochs must be a positive number, got 0"),
    (["train", "ddpm", "--epochs", "-3"], r"--epochs must be a positive number"),
    (["train", "ddpm", "--batch_size", "0"], r"--batch_size must be a positive number"),
    (["train", "ddpm", "--timesteps", "0"], r"--timesteps must be a positive number"),
    (["train", "ddpm", "--timesteps", "1"], r"timesteps must be at least 2"),
    (["train", "ddpm", "--lr", "nan"], r"--lr must be a positive number"),
    (["train", "ddpm", "--subset", "0"], r"--subset must be a positive number"),
    (["train", "vae", "--kl_weight", "-1"], r"kl_weight must be non-negative"),
    (["train", "ddpm", "--data_dir", "{tmp}/nowhere"], r"--data_dir .*nowhere is not a folder"),
    (["train", "ddpm", "--out", "{tmp}/a_file/sub"], r"output folder .* is not writable"),
    (["train", "ddpm", "--device", "cuda:0" if not torch.cuda.is_available() else "nonsense"], r"--device"),
    (["train", "ddpm", "--resume", "{tmp}/nowhere"], r"no checkpoints/last\.pt there to resume from"),
    (["train", "ddpm", "--resume", "{vae_run}"], r"holds a 'vae' training run, expected a 'ddpm' one"),
    (["train", "ddpm", "--resume", "{ddpm_run}", "--epochs", "7"],
     r"--resume continues a run with the settings it was started with, but train\.epochs: the run has 3, the "
     r"options give 7\. Drop those options"),
    (["train", "ldm", "{ddpm}"], r"holds a 'ddpm' model, expected a 'vae' one"),
    (["train", "ldm", "{tmp}/missing.safetensors"], r"VAE checkpoint .*missing\.safetensors does not exist or is not"),
    # sampling
    (["sample", "ddpm", "{ddpm}", "--ddim_steps", "0"], r"--steps must be a whole number from 1 to the model's 20"),
    (["sample", "ddpm", "{ddpm}", "--steps", "21"], r"--steps must be a whole number from 1 to the model's 20 "
                                                    r"timesteps, got 21"),
    (["sample", "ddpm", "{ddpm}", "--sampler", "ddpm", "--guidance", "1"], r"--guidance weighs autoguidance"),
    (["sample", "ddpm", "{ddpm}", "--eta", "-0.1"], r"--eta must be in \[0, 1\]"),
    (["sample", "ddpm", "{ddpm}", "--eta", "1.5"], r"--eta must be in \[0, 1\]"),
    (["sample", "ddpm", "{ddpm}", "--num_samples", "0"], r"--num_samples must be a positive number"),
    (["sample", "ddpm", "{ddpm}", "--num_samples", "-4"], r"--num_samples must be a positive number"),
    (["sample", "ddpm", "{ddpm}", "--batch_size", "0"], r"--batch_size must be a positive number"),
    (["sample", "ddpm", "{vae}"], r"holds a 'vae' model, expected a 'ddpm' one: check which file you passed"),
    (["sample", "ddpm", "{tmp}/missing.safetensors"], r"checkpoint .*missing\.safetensors does not exist"),
    (["sample", "ddpm", "{tmp}/a_file"], r"a_file is not a model file \(not in the safetensors format\)"),
    (["sample", "ddpm", "{ddpm}", "--out", "/proc/nope"], r"output folder /proc/nope is not writable"),
    (["course", "--notebooks", "99"], r"unknown chapter '99'; choose from 00_the_idea, 01_unet"),
    (["sample", "ddpm", "{ddpm}", "--ddim_steps", "10", "--out", "{tmp}/a_file"],
     r"output folder .*a_file is not writable"),
    (["sample", "ldm", "{ddpm}", "{ddpm}"], r"holds a 'ddpm' model, expected a 'ldm' one"),
    (["umap", "{vae}"], r"holds a 'vae' model, expected a 'ddpm' or 'ldm' or 'cldm' or 'flow' one"),
    (["umap", "{ddpm}", "--ddim_steps", "10", "--real", "0"], r"--real must be a positive number"),
]


@pytest.mark.parametrize("argv, match", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_exit_2_and_write_nothing(argv, match, tmp_path, monkeypatch, capsys, fake_checkpoints):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.chdir(work)  # default outputs (experiments/, generated_samples/, umap/) would land here
    subs = {"tmp": str(tmp_path), **{k: str(v) for k, v in fake_checkpoints.items()}}
    argv = [a.format(**subs) for a in argv]
    watched = [tmp_path, fake_checkpoints["ddpm"].parent.parent]
    before = [files_under(p) for p in watched]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert [files_under(p) for p in watched] == before, "a refused command wrote something"


def _deny(monkeypatch, target: Path, mode: int) -> None:
    """Pretend ``target`` lacks permission ``mode`` (as root chmod does not stop anything)."""
    real = os.access

    def access(path, m, *args, **kwargs):
        if Path(path).resolve() == target.resolve() and m & mode:
            return False
        return real(path, m, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("how", ["chmod", "os.access"])
def test_unreadable_checkpoint_is_refused(tmp_path, monkeypatch, capsys, fake_checkpoints, how):
    ckpt = tmp_path / "model.safetensors"
    shutil.copyfile(fake_checkpoints["ddpm"], ckpt)
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod 000 does not stop root from reading (the os.access case covers it)")
        ckpt.chmod(0)
    else:
        _deny(monkeypatch, ckpt, os.R_OK)
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    try:
        assert run_cli(["sample", "ddpm", str(ckpt)]) == 2
    finally:
        ckpt.chmod(0o644)
    assert re.search(r"checkpoint .*model\.safetensors is not readable: check its permissions", capsys.readouterr().err)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("how", ["chmod", "os.access"])
@pytest.mark.parametrize("command", ["train", "sample"])
def test_unwritable_output_folder_is_refused(tmp_path, monkeypatch, capsys, fake_checkpoints, how, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod 555 does not stop root from writing (the os.access case covers it)")
        locked.chmod(0o555)
    else:
        _deny(monkeypatch, locked, os.W_OK)
    argv = (["train", "ddpm", *TINY] if command == "train"
            else ["sample", "ddpm", str(fake_checkpoints["ddpm"]), "--ddim_steps", "10"])
    try:
        assert run_cli([*argv, "--out", str(locked / "new" / "deeper")]) == 2
    finally:
        locked.chmod(0o755)
    assert re.search(r"output folder .*locked/new/deeper is not writable .*choose another --out",
                     capsys.readouterr().err)
    assert list(locked.iterdir()) == []


# ------------------------------------------------------------------------------------------
# Damaged MNIST files: exit code 1, the file named, how to restore it
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["corrupt", "missing", "truncated_no_sums"])
def test_damaged_mnist_is_named_with_the_fix(tmp_path, capsys, damage):
    data = tmp_path / "mnist"
    shutil.copytree(ASSET_DIR, data)
    for p in data.iterdir():
        p.chmod(0o644)
    if damage == "corrupt":
        target = data / "train-images-idx3-ubyte.gz"
        blob = bytearray(target.read_bytes())
        blob[1000:1010] = b"\0" * 10
        target.write_bytes(bytes(blob))
        expected = r"MNIST file .*train-images-idx3-ubyte\.gz is corrupt"
    elif damage == "missing":
        (data / "train-labels-idx1-ubyte.gz").unlink()
        expected = r"MNIST file train-labels-idx1-ubyte\(\.gz\) is missing from"
    else:  # no checksums to compare with: the broken gzip stream is what gives it away
        for s in data.glob("SHA256SUMS.*"):
            s.unlink()
        target = data / "train-images-idx3-ubyte.gz"
        target.write_bytes(target.read_bytes()[:5000])
        expected = r"MNIST file .*train-images-idx3-ubyte\.gz is not valid gzip"
    out = tmp_path / "runs"
    assert run_cli(["train", "ddpm", *TINY, *COMMON, "--data_dir", str(data), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert "git checkout -- mnistdiff/assets/mnist" in err and "--data_dir" in err
    assert not out.exists()  # refused before the experiment folder was made

