"""The command line end to end on CPU with tiny settings: train each model once (module-scoped), sample each
mode from the DDPM and the latent model, check both folder layouts, determinism, and argument errors; and the
``train`` options made from the config dataclasses (every field an option, defaults round trip, the configs'
own messages for bad values).

Everything runs in-process through ``mnistdiff.cli.main`` (one subprocess checks the ``python -m`` entry).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistdiff import cli
from mnistdiff.cli import main
from mnistdiff.cli_options import (
    add_config_arguments,
    config_from_args,
    config_options,
    option_argv,
    option_text,
    value_parser,
)
from mnistdiff.config import (
    CLDMRunConfig,
    ConfigError,
    DDPMRunConfig,
    LDMRunConfig,
    UNetConfig,
    VAEConfig,
    VAERunConfig,
)
from mnistdiff.course.profiles import FULL, SMOKE
from mnistdiff.modelfile import load_vae, read_model_meta, weights_sha256

pytestmark = pytest.mark.slow

TINY = ["--profile", "smoke", "--subset", "64", "--epochs", "1", "--batch_size", "32", "--quiet", "--device", "cpu"]
T = 10  # diffusion timesteps of the tiny models (sampling cost is linear in T)
NUM = 4  # samples per sample command
INDIVIDUAL = 2
DDIM_STEPS = 5


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train the DDPM, the VAE and the latent model once; returns their experiment folders."""
    root = tmp_path_factory.mktemp("cli")
    out = root / "experiments"
    assert main(["train", "ddpm", *TINY, "--timesteps", str(T), "--out", str(out)]) == 0
    assert main(["train", "vae", *TINY, "--out", str(out)]) == 0
    vae_exp = _one(out, "*-vae")
    vae_ckpt = vae_exp / "checkpoints" / "model.safetensors"
    assert main(["train", "ldm", str(vae_ckpt), *TINY, "--timesteps", str(T), "--time_sampling", "logit_normal",
                 "--out", str(out)]) == 0
    assert main(["train", "cldm", str(vae_ckpt), *TINY, "--timesteps", str(T), "--p_uncond", "0.2",
                 "--out", str(out)]) == 0
    assert main(["train", "flow", *TINY, "--time_sampling", "logit_normal", "--out", str(out)]) == 0
    return {"root": root, "ddpm": _one(out, "*-ddpm"), "vae": vae_exp, "ldm": _one(out, "*-ldm"),
            "cldm": _one(out, "*-cldm"), "flow": _one(out, "*-flow")}


def _sample_args(runs, model: str) -> list[str]:
    ckpt = str(runs[model] / "checkpoints" / "model.safetensors")
    if model in ("ldm", "cldm"):
        return ["sample", model, str(runs["vae"] / "checkpoints" / "model.safetensors"), ckpt]
    return ["sample", model, ckpt]


def _sample(runs, model: str, mode: str, name: str, seed: int = 0, individual: int = INDIVIDUAL) -> Path:
    out = runs["root"] / "samples" / name
    args = [*_sample_args(runs, model), "--mode", mode, "--ddim_steps", str(DDIM_STEPS), "--num_samples", str(NUM),
            "--individual", str(individual), "--seed", str(seed), "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def samples(runs):
    """One sample folder per (model, mode)."""
    return {(m, mode): _sample(runs, m, mode, f"{m}-{mode}") for m in ("ddpm", "ldm") for mode in ("ddpm", "ddim")}


# ----------------------------------------------------------------------------- experiment folders

COMMON = ["config.txt", "training_log.txt", "loss_curves.png", "performance_metrics.txt"]
DIRS = ["epoch_samples", "final_samples", "checkpoints"]
EXTRA = {"ddpm": ["denoising_steps"], "ldm": ["denoising_steps"], "cldm": ["denoising_steps"], "vae": ["latent_space"],
         "flow": ["denoising_steps"]}


@pytest.mark.parametrize("model", ["ddpm", "vae", "ldm", "cldm", "flow"])
def test_experiment_layout(runs, model):
    exp = runs[model]
    assert exp.name.endswith(f"-{model}")
    for name in COMMON:
        assert (exp / name).is_file() and (exp / name).stat().st_size > 0, name
    for name in DIRS + EXTRA[model]:
        assert (exp / name).is_dir(), name
        assert any((exp / name).iterdir()), f"{name}/ is empty"
    for other in {"denoising_steps", "latent_space"} - set(EXTRA[model]):
        assert not (exp / other).exists()
    for name in ("model.safetensors", "last.pt", "last.json"):
        assert (exp / "checkpoints" / name).is_file(), name
    assert (exp / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (exp / "epoch_samples").iterdir())[0].startswith("epoch_001")


@pytest.mark.parametrize("model", ["ddpm", "ldm", "cldm"])
def test_denoising_steps(runs, model):
    steps = runs[model] / "denoising_steps"
    names = sorted(p.name for p in steps.glob("step_*.png"))
    # x_T, every max(T/10, 1) steps, and x_0
    assert names == [f"step_{t:04d}.png" for t in range(0, T + 1, max(T // 10, 1))]
    assert (steps / "progression.png").is_file()
    assert (runs[model] / "final_samples" / "ddpm_grid.png").is_file()


def test_vae_outputs(runs):
    exp = runs["vae"]
    assert {p.name for p in (exp / "latent_space").glob("*.png")} == {"latent_pca.png", "latent_dims_0_1.png"}
    assert {p.name for p in (exp / "final_samples").glob("*.png")} == {"reconstructions.png", "prior_samples.png"}
    metrics = (exp / "performance_metrics.txt").read_text()
    mse = float(metrics.split("test_reconstruction_mse:")[1].split()[0])
    assert 0 <= mse < 4  # images in [−1, 1]


@pytest.mark.parametrize("model", ["ddpm", "vae", "ldm", "cldm", "flow"])
def test_config_records_the_overrides(runs, model):
    body = json.loads((runs[model] / "config.txt").read_text())
    cfg = body["config"]
    assert body["kind"] == model and body["parameters"] > 0
    assert cfg["train"]["subset"] == 64 and cfg["train"]["epochs"] == 1 and cfg["train"]["batch_size"] == 32
    if model == "flow":
        assert cfg["time_sampling"] == "logit_normal" and "diffusion" not in cfg
    elif model != "vae":
        assert cfg["diffusion"]["timesteps"] == T
        assert cfg["diffusion"]["time_sampling"] == ("logit_normal" if model == "ldm" else "uniform")
    if model != "vae":
        assert cfg["unet"]["base_channels"] == getattr(SMOKE, model).unet.base_channels  # the profile's, not overridden
    side = read_model_meta(runs[model] / "checkpoints" / "model.safetensors")
    assert side["kind"] == model and side["config"] == cfg


@pytest.mark.parametrize("model", ["ddpm", "vae", "ldm", "cldm", "flow"])
def test_training_log_and_metrics(runs, model):
    lines = (runs[model] / "training_log.txt").read_text().strip().splitlines()
    assert lines[0].split("\t") == ["epoch", "train_loss", "eval_loss", "lr", "seconds"]
    assert len(lines) == 2
    fields = lines[1].split("\t")
    assert fields[0] == "1"
    assert all(math.isfinite(float(v)) for v in fields[1:])
    metrics = dict(line.split(": ", 1) for line in (runs[model] / "performance_metrics.txt").read_text().splitlines())
    assert metrics["kind"] == model and metrics["epochs"] == "1"
    assert float(metrics["training_seconds"]) > 0 and int(metrics["parameters"]) > 0


@pytest.mark.parametrize("model", ["ldm", "cldm"])
def test_latent_checkpoint_records_latent_scale_and_vae(runs, model):
    side = read_model_meta(runs[model] / "checkpoints" / "model.safetensors")
    vae = load_vae(runs["vae"] / "checkpoints" / "model.safetensors")
    assert side["latent_scale"] > 0 and math.isfinite(side["latent_scale"])
    assert 0 < side["latent_clip"] < 10
    assert side["vae_weights_sha256"] == weights_sha256(vae.state_dict())


# ----------------------------------------------------------------------------- sample folders


@pytest.mark.parametrize("model", ["ddpm", "ldm"])
@pytest.mark.parametrize("mode", ["ddpm", "ddim"])
def test_sample_folder(samples, model, mode):
    out = samples[(model, mode)]
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "grid.pdf").read_bytes()[:5] == b"%PDF-"
    with np.load(out / "samples.npz") as npz:
        x = npz["samples"]
    assert x.dtype == np.uint8 and x.shape == (NUM, 1, 32, 32)
    assert x.std() > 0  # not a constant image
    info = json.loads((out / "info.json").read_text())
    assert info["sampler"] == mode and info["num_samples"] == NUM and info["seed"] == 0
    dirs = sorted(p.name for p in out.glob("sample_*"))
    assert dirs == [f"sample_{i:03d}" for i in range(INDIVIDUAL)]
    for d in dirs:
        assert (out / d / "final.pdf").read_bytes()[:5] == b"%PDF-"
        assert (out / d / "progression.pdf").is_file()
        steps = sorted(p.name for p in (out / d / "steps").glob("*.pdf"))
        if mode == "ddpm":
            assert steps == [f"step_{t:04d}.pdf" for t in range(0, T + 1, max(T // 10, 1))]
        else:  # x_T, then one frame per DDIM step, the last being x_0
            assert len(steps) == DDIM_STEPS + 1
            assert steps[0] == "step_0000.pdf" and steps[-1] == f"step_{T:04d}.pdf"


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sample_flow_folder_and_seeds(runs, solver):
    """``sample flow --sampler euler|heun --steps N``: the folder ``sample ddpm`` writes, frames labelled 1000·t
    (x_1 … x_0, one per step), the same samples for the same seed."""
    out = runs["root"] / "samples" / f"flow-{solver}"
    args = [*_sample_args(runs, "flow"), "--sampler", solver, "--steps", "4", "--num_samples", str(NUM),
            "--individual", "1", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(out) + "-again", "--individual", "0"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["sampler"] == solver and info["steps"] == 4 and info["kind"] == "flow"
    steps = sorted(p.name for p in (out / "sample_000" / "steps").glob("*.pdf"))
    assert steps == [f"step_{t:04d}.pdf" for t in (0, 250, 500, 750, 1000)]
    with np.load(out / "samples.npz") as a, np.load(str(out) + "-again/samples.npz") as b:
        assert a["samples"].shape == (NUM, 1, 32, 32) and a["samples"].std() > 0
        assert np.array_equal(a["samples"], b["samples"])


def test_sample_flow_default_sampler_is_dpmpp_2m_sde_and_ddim_is_refused(runs, tmp_path, capsys):
    out = tmp_path / "s"
    assert main([*_sample_args(runs, "flow"), "--steps", "2", "--num_samples", "2", "--individual", "0",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "info.json").read_text())["sampler"] == "dpmpp_2m_sde"
    assert _exit_code([*_sample_args(runs, "flow"), "--sampler", "ddim", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--sampler: this flow model is sampled with dpmpp_2m_sde, euler, heun or dpmpp_2m, got 'ddim'" in err
    assert _exit_code([*_sample_args(runs, "ddpm"), "--sampler", "euler", "--out", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert "this ddpm model is sampled with dpmpp_2m_sde, ddim, ddpm, dpmpp_2m or heun, got 'euler'" in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "h").exists()


def test_sample_cldm_defaults_to_its_kinds_sampler_capped_at_t(runs, tmp_path):
    """The cldm's default sampler is DPM-Solver++(2M) SDE (CLDMRunConfig), at its 16 default steps or this tiny
    model's T = 10 if fewer; naming DDIM alone gives DDIM at DEFAULT_STEPS, capped the same way."""
    args = [*_sample_args(runs, "cldm"), "--digit", "3", "--num_samples", "2", "--individual", "0", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    info = json.loads((tmp_path / "a" / "info.json").read_text())
    assert (info["sampler"], info["steps"]) == ("dpmpp_2m_sde", min(16, T))
    assert main([*args, "--sampler", "ddim", "--out", str(tmp_path / "b")]) == 0
    info = json.loads((tmp_path / "b" / "info.json").read_text())
    assert (info["sampler"], info["steps"]) == ("ddim", min(50, T))


def test_samples_are_deterministic(runs, samples):
    """Same checkpoint and seed → identical samples.npz; another seed → different samples."""
    again = _sample(runs, "ldm", "ddim", "ldm-ddim-again", seed=0, individual=0)
    other = _sample(runs, "ldm", "ddim", "ldm-ddim-seed1", seed=1, individual=0)
    assert not list(again.glob("sample_*"))  # --individual 0: no per-sample folders
    with np.load(samples[("ldm", "ddim")] / "samples.npz") as a, np.load(again / "samples.npz") as b, \
            np.load(other / "samples.npz") as c:
        assert np.array_equal(a["samples"], b["samples"])
        assert not np.array_equal(a["samples"], c["samples"])


def test_ddpm_samples_deterministic(runs, samples):
    again = _sample(runs, "ddpm", "ddim", "ddpm-ddim-again", seed=0, individual=0)
    with np.load(samples[("ddpm", "ddim")] / "samples.npz") as a, np.load(again / "samples.npz") as b:
        assert np.array_equal(a["samples"], b["samples"])


def test_sample_modes_differ(samples):
    """DDPM and DDIM sampling are different samplers: the same seed gives different images."""
    with np.load(samples[("ddpm", "ddpm")] / "samples.npz") as a, \
            np.load(samples[("ddpm", "ddim")] / "samples.npz") as b:
        assert not np.array_equal(a["samples"], b["samples"])


# ------------------------------------------------------------------------- argument errors (exit 2, nothing written)


def _exit_code(args: list[str]) -> int:
    with pytest.raises(SystemExit) as err:
        main(args)
    return err.value.code


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "0"], "--epochs must be"),
        (["--lr", "-1"], "--lr must be"),
        (["--timesteps", "0"], "--timesteps must be"),
        (["--timesteps", "1"], "timesteps must be at least 2"),
        (["--min_snr_gamma", "0"], "--min_snr_gamma must be a positive number"),  # checked by DiffusionConfig
        (["--min_snr_gamma", "nan"], "--min_snr_gamma must be a positive number"),
        (["--base_channels", "12"], "norm_groups"),
        (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "nope"], "--device"),
    ],
)
def test_train_bad_arguments_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "exp"
    assert _exit_code(["train", "ddpm", "--profile", "smoke", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_train_ldm_rejects_non_vae_checkpoint(runs, tmp_path, capsys):
    ddpm_ckpt = runs["ddpm"] / "checkpoints" / "model.safetensors"
    assert _exit_code(["train", "ldm", str(ddpm_ckpt), "--profile", "smoke", "--out", str(tmp_path / "x")]) == 2
    assert "expected a 'vae' one" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--ddim_steps", str(T + 1)], f"--steps must be a whole number from 1 to the model's {T} timesteps"),
        (["--steps", "0"], "--steps must be"),
        (["--batch_size", "0"], "--batch_size must be a positive number"),
        (["--eta", "1.5"], "--eta must be in [0, 1]"),
        (["--num_samples", "0"], "--num_samples must be"),
        (["--sampler", "ddim", "--spacing", "karras"], "--spacing: only dpmpp_2m, dpmpp_2m_sde, heun"),  # DDIM: its own
    ],
)
def test_sample_bad_arguments_exit_2(runs, tmp_path, capsys, extra, message):
    out = tmp_path / "s"
    assert _exit_code([*_sample_args(runs, "ddpm"), "--out", str(out), "--device", "cpu", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_sample_missing_checkpoint_exit_2(tmp_path, capsys):
    assert _exit_code(["sample", "ddpm", str(tmp_path / "none.pt"), "--out", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sample_wrong_kind_exit_2(runs, tmp_path, capsys):
    """A VAE checkpoint passed as a DDPM, and a DDPM passed as the LDM's VAE, are refused by kind."""
    vae_ckpt = str(runs["vae"] / "checkpoints" / "model.safetensors")
    ddpm_ckpt = str(runs["ddpm"] / "checkpoints" / "model.safetensors")
    assert _exit_code(["sample", "ddpm", vae_ckpt, "--out", str(tmp_path / "a")]) == 2
    assert "'vae'" in capsys.readouterr().err
    assert _exit_code(["sample", "ldm", ddpm_ckpt, str(runs["ldm"] / "checkpoints" / "model.safetensors"),
                       "--out", str(tmp_path / "b")]) == 2
    assert "expected a 'vae' one" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sample cldm: digits and guidance


def _sample_cldm(runs, out: Path, *extra: str) -> list[str]:
    return [*_sample_args(runs, "cldm"), "--ddim_steps", "3", "--individual", "1", "--device", "cpu",
            "--out", str(out), *extra]


def test_cldm_records_p_uncond_and_num_classes(runs):
    cfg = read_model_meta(runs["cldm"] / "checkpoints" / "model.safetensors")["config"]
    assert cfg["p_uncond"] == 0.2 and cfg["unet"]["num_classes"] == 10


def test_sample_cldm_repeated_digits_go_into_the_npz(runs, tmp_path):
    out = tmp_path / "c"
    assert main(_sample_cldm(runs, out, "--digit", "3", "--digit", "7", "--num_samples", "2", "--guidance", "3")) == 0
    with np.load(out / "samples.npz") as data:
        assert data["samples"].shape == (4, 1, 32, 32) and data["samples"].dtype == np.uint8
        assert data["labels"].tolist() == [3, 3, 7, 7]
    info = json.loads((out / "info.json").read_text())
    assert info["digits"] == [3, 7] and info["guidance"] == 3.0 and info["num_samples"] == 4


def test_sample_cldm_all_gives_one_grid_row_per_digit(runs, tmp_path):
    from PIL import Image

    out = tmp_path / "all"
    assert main(_sample_cldm(runs, out, "--digit", "all", "--num_samples", "2")) == 0
    with np.load(out / "samples.npz") as data:
        assert data["labels"].tolist() == [d for d in range(10) for _ in range(2)]
    width, height = Image.open(out / "grid.png").size
    assert height > 4 * width  # 10 rows of 2 samples each


def test_evaluate_reads_the_digits_asked_for(runs, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(_sample_cldm(runs, out, "--digit", "all", "--num_samples", "1")) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "samples.npz"), "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert 0.0 <= metrics["label_accuracy"] <= 1.0 and metrics["n"] == 10


def test_sample_cldm_without_digit_draws_unlabelled_samples(runs, tmp_path):
    out = tmp_path / "u"
    assert main(_sample_cldm(runs, out, "--num_samples", "3")) == 0
    with np.load(out / "samples.npz") as data:
        assert data["labels"].tolist() == [-1, -1, -1]


def test_sample_cldm_guidance_changes_the_samples_and_seeds_repeat(runs, tmp_path):
    arrays = {}
    for name, w in (("a", "0"), ("b", "4"), ("c", "4")):
        assert main(_sample_cldm(runs, tmp_path / name, "--digit", "5", "--num_samples", "3", "--guidance", w)) == 0
        with np.load(tmp_path / name / "samples.npz") as data:
            arrays[name] = data["samples"]
    assert np.array_equal(arrays["b"], arrays["c"])
    assert not np.array_equal(arrays["a"], arrays["b"])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--digit", "10"], "--digit must be a digit 0-9 or 'all', got '10'"),
        (["--digit", "seven"], "--digit must be a digit 0-9"),
        (["--digit", "-1"], "--digit must be a digit 0-9"),
        (["--guidance", "-0.5"], "--guidance must be a finite number >= 0"),
        (["--guidance", "inf"], "--guidance must be a finite number >= 0"),
        (["--guidance", "nan"], "--guidance must be a finite number >= 0"),
    ],
)
def test_sample_cldm_bad_values_exit_2(runs, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert _exit_code(_sample_cldm(runs, out, "--digit", "3", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_sample_cldm_refuses_an_unconditional_checkpoint(runs, tmp_path, capsys):
    out = tmp_path / "x"
    vae, ldm = (str(runs[k] / "checkpoints" / "model.safetensors") for k in ("vae", "ldm"))
    args = ["sample", "cldm", vae, ldm, "--digit", "3", "--out", str(out)]
    assert _exit_code(args) == 2
    err = capsys.readouterr().err
    assert "holds a 'ldm' model, expected a 'cldm' one" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- sample --guide: autoguidance


@pytest.mark.parametrize("model", ["ddpm", "ldm"])
def test_sample_with_a_guide_records_it_and_a_model_guided_by_itself_draws_its_own_samples(runs, tmp_path, model):
    """ε_guide + w·(ε − ε_guide) is ε exactly when the guide is the model: the same bytes as unguided sampling."""
    ckpt = str(runs[model] / "checkpoints" / "model.safetensors")
    common = ["--steps", "3", "--num_samples", "3", "--individual", "0", "--device", "cpu", "--seed", "5"]
    assert main([*_sample_args(runs, model), *common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*_sample_args(runs, model), *common, "--guide", ckpt, "--guidance", "2.5",
                 "--out", str(tmp_path / "guided")]) == 0
    with np.load(tmp_path / "plain" / "samples.npz") as a, np.load(tmp_path / "guided" / "samples.npz") as b:
        assert np.array_equal(a["samples"], b["samples"])
    info = json.loads((tmp_path / "guided" / "info.json").read_text())
    assert info["guide"] == ckpt and info["guidance"] == 2.5
    assert "guide" not in json.loads((tmp_path / "plain" / "info.json").read_text())


def test_sample_with_a_guidance_interval_records_it(runs, tmp_path):
    """``--guidance_interval LO inf``: guided above σ = LO only; with the model as its own guide the same bytes again,
    and the interval in info.json (null: no upper end)."""
    ckpt = str(runs["ddpm"] / "checkpoints" / "model.safetensors")
    common = [*_sample_args(runs, "ddpm"), "--steps", "3", "--num_samples", "3", "--individual", "0", "--device",
              "cpu", "--seed", "5"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--guide", ckpt, "--guidance", "2.5", "--guidance_interval", "0.5", "inf",
                 "--out", str(tmp_path / "interval")]) == 0
    with np.load(tmp_path / "plain" / "samples.npz") as a, np.load(tmp_path / "interval" / "samples.npz") as b:
        assert np.array_equal(a["samples"], b["samples"])
    info = json.loads((tmp_path / "interval" / "info.json").read_text())
    assert info["guidance_interval"] == [0.5, None] and info["guidance"] == 2.5


@pytest.mark.parametrize("case, message", [
    ("weight without a guide", "--guidance weighs autoguidance on a ddpm model: pass the guide's model file too"),
    ("missing guide", "guide"),
    ("guide of another kind", "holds a 'flow' model, expected a 'ddpm' one"),
    ("bad weight", "--guidance must be a finite number >= 0"),
    ("bad interval", "--guidance_interval (sigma_lo, sigma_hi) needs 0 <= sigma_lo < sigma_hi"),
    ("interval without a guide", "--guidance_interval limits guidance: give a guide"),
])
def test_sample_bad_guides_exit_2_writing_nothing(runs, tmp_path, capsys, case, message):
    out = tmp_path / "g"
    extra = {"weight without a guide": ["--guidance", "2"],
             "missing guide": ["--guide", str(tmp_path / "none.safetensors")],
             "guide of another kind": ["--guide", str(runs["flow"] / "checkpoints" / "model.safetensors")],
             "bad weight": ["--guide", str(runs["ddpm"] / "checkpoints" / "model.safetensors"), "--guidance", "-1"],
             "bad interval": ["--guide", str(runs["ddpm"] / "checkpoints" / "model.safetensors"),
                              "--guidance_interval", "2", "1"],
             "interval without a guide": ["--guidance_interval", "0.3", "inf"],
             }[case]
    assert _exit_code([*_sample_args(runs, "ddpm"), "--steps", "2", "--device", "cpu", "--out", str(out),
                       *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and (case != "missing guide" or "does not exist" in err)
    assert not out.exists()


def test_sample_cldm_refuses_a_guide_for_digits(runs, tmp_path, capsys):
    out = tmp_path / "cg"
    cldm = str(runs["cldm"] / "checkpoints" / "model.safetensors")
    assert _exit_code(_sample_cldm(runs, out, "--digit", "3", "--guide", cldm)) == 2
    assert "autoguidance guides unconditional samples" in capsys.readouterr().err
    assert not out.exists()


def test_python_m_entry_point_reports_bad_argument(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mnistdiff", "train", "vae", "--kl_weight", "-1", "--out", str(tmp_path / "e")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "kl_weight" in proc.stderr
    assert not (tmp_path / "e").exists()


# ----------------------------------------------------------------------------- options made from the config dataclasses

RUN_CONFIGS = {"ddpm": DDPMRunConfig, "vae": VAERunConfig, "ldm": LDMRunConfig, "cldm": CLDMRunConfig}


def _leaves(cfg: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every non-dataclass field of a (nested) config and its value, walked independently of cli_options."""
    found: dict[tuple[str, ...], Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            found.update(_leaves(value, (*path, f.name)))
        elif f.name != "kind":  # the fixed tag each run config records
            found[(*path, f.name)] = value
    return found


def _help(cls: type, path: tuple[str, ...]) -> str:
    """The help text in the metadata of the field at ``path`` of run config ``cls``."""
    holder = _at(cls(), path[:-1]) if len(path) > 1 else cls
    return next(f for f in dataclasses.fields(holder) if f.name == path[-1]).metadata["help"]


def _at(cfg: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        cfg = getattr(cfg, name)
    return cfg


def _replaced(cfg: Any, path: tuple[str, ...], value: Any) -> Any:
    """``cfg`` with the field at ``path`` set, built with dataclasses.replace alone (so the config checks it)."""
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    return dataclasses.replace(cfg, **{path[0]: _replaced(getattr(cfg, path[0]), path[1:], value)})


def _train_args(model: str, *options: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["train", model, *(["vae.pt"] if model in ("ldm", "cldm") else []), *options])


def _config(model: str, *options: str) -> Any:
    return cli._train_config(_train_args(model, *options))


@pytest.mark.parametrize("model", RUN_CONFIGS)
def test_every_config_field_is_an_option(model, capsys):
    """One --<field> per field of the run config, listed in --help with the field's help text and full default."""
    with pytest.raises(SystemExit):
        main(["train", model, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    for path, value in _leaves(RUN_CONFIGS[model]()).items():
        assert f"--{path[-1]} " in text, path
        help_ = _help(RUN_CONFIGS[model], path)
        assert help_ and f"{help_} (full profile: {option_text(value) or repr('')})" in text, path
    assert {o.path for o in config_options(RUN_CONFIGS[model])} == set(_leaves(RUN_CONFIGS[model]()))


@pytest.mark.parametrize("model", RUN_CONFIGS)
def test_no_options_give_the_profile_config(model):
    """Parsing the defaults gives back the dataclass defaults (the full profile), or the smoke profile's config."""
    assert _config(model) == RUN_CONFIGS[model]() == getattr(FULL, model)
    assert _config(model, "--profile", "smoke") == getattr(SMOKE, model)


@pytest.mark.parametrize("model", RUN_CONFIGS)
def test_every_default_round_trips_through_the_command_line(model):
    """The full config's every value, written as options, rebuilds it from the smoke profile: args → config."""
    default = RUN_CONFIGS[model]()
    argv = [word for opt in config_options(default) for word in option_argv(opt, _at(default, opt.path))]
    assert len(argv) == 2 * len(_leaves(default))
    assert _config(model, "--profile", "smoke", *argv) == default
    smoke = getattr(SMOKE, model)
    smoke_argv = [word for opt in config_options(smoke) for word in option_argv(opt, _at(smoke, opt.path))]
    assert _config(model, *smoke_argv) == smoke


@pytest.mark.parametrize("model", RUN_CONFIGS)
def test_each_option_reaches_its_own_field(model):
    """Each smoke value that differs from the full one, given alone, changes that one field and nothing else."""
    default, smoke = RUN_CONFIGS[model](), getattr(SMOKE, model)
    differing = [(path, v) for path, v in _leaves(smoke).items() if v != _at(default, path)]
    assert len(differing) >= 5
    for path, value in differing:
        assert _config(model, "--" + path[-1], option_text(value) or "") == _replaced(default, path, value), path


@pytest.mark.parametrize(
    "model,argv,path,value",
    [
        ("ddpm", ["--channel_mults", "1,2"], ("unet", "channel_mults"), (1, 2)),
        ("ddpm", ["--attention_resolutions", ""], ("unet", "attention_resolutions"), ()),
        ("ddpm", ["--dropout", "0.1"], ("unet", "dropout"), 0.1),
        ("ddpm", ["--schedule", "linear"], ("diffusion", "schedule"), "linear"),
        ("ddpm", ["--min_snr_gamma", "5"], ("diffusion", "min_snr_gamma"), 5.0),
        ("ddpm", ["--precision", "bf16"], ("train", "precision"), "bf16"),
        ("ddpm", ["--ema_decay", "0.99"], ("train", "ema_decay"), 0.99),
        ("ddpm", ["--profile", "smoke", "--subset", "none"], ("train", "subset"), None),
        ("vae", ["--latent_channels", "4"], ("vae", "latent_channels"), 4),
        ("vae", ["--kl_weight", "0"], ("kl_weight",), 0.0),
        ("ldm", ["--base_channels", "32"], ("unet", "base_channels"), 32),
        ("ldm", ["--warmup_steps", "0", "--grad_clip", "0"], ("train", "warmup_steps"), 0),
        ("cldm", ["--p_uncond", "0.2"], ("p_uncond",), 0.2),
    ],
)
def test_a_non_default_option_reaches_the_config(model, argv, path, value):
    cfg = _config(model, *argv)
    assert _at(cfg, path) == value and type(_at(cfg, path)) is type(value)
    base = getattr(SMOKE if "smoke" in argv else FULL, model)
    changed = {p for p, v in _leaves(cfg).items() if v != _at(base, p)}
    assert changed == ({("train", n) for n in ("warmup_steps", "grad_clip")} if "--grad_clip" in argv else {path})


@pytest.mark.parametrize(
    "model,name,text",
    [
        ("ddpm", "dropout", "1"),
        ("ddpm", "schedule", "sigmoid"),
        ("ddpm", "precision", "fp16"),
        ("ddpm", "ema_decay", "1"),
        ("ddpm", "num_heads", "3"),
        ("ddpm", "channel_mults", "1,0"),
        ("ddpm", "warmup_steps", "-1"),
        ("ddpm", "grad_clip", "inf"),
        ("ddpm", "eval_size", "0"),
        ("vae", "latent_channels", "0"),
        ("vae", "kl_weight", "nan"),
        ("ldm", "image_size", "5"),
        ("ldm", "timesteps", "1"),
        ("ldm", "num_classes", "10"),
        ("cldm", "p_uncond", "1"),
        ("cldm", "num_classes", "none"),
    ],
)
def test_a_value_the_config_rejects_exits_2_with_its_message(model, name, text, tmp_path, capsys):
    default = RUN_CONFIGS[model]()
    opt = next(o for o in config_options(default) if o.name == name)
    with pytest.raises(ConfigError) as rejected:  # what the dataclass itself says about this value
        _replaced(default, opt.path, value_parser(opt.hint)(text))
    message = str(rejected.value)
    assert message.startswith(name)
    out = tmp_path / "exp"
    pre = ["train", model, *([str(tmp_path / "vae.pt")] if model in ("ldm", "cldm") else [])]
    assert _exit_code([*pre, "--out", str(out), f"--{name}", text]) == 2
    assert f"python -m mnistdiff: error: --{message}\n" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- the generic functions, on toy configs


@dataclass(frozen=True)
class _Inner:
    ratio: float = field(default=0.5, metadata={"help": "a ratio"})
    sizes: tuple[float, ...] = (1.0, 2.5)
    pair: tuple[int, str] = (1, "a")

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ConfigError(f"ratio must be in (0, 1), got {self.ratio}", "ratio")


@dataclass(frozen=True)
class _Toy:
    inner: _Inner = field(default_factory=_Inner)
    verbose: bool = field(default=False, metadata={"help": "say more"})
    strict: bool | None = None
    name: str | None = "x"
    tag: str = field(default="toy", metadata={"cli": False})


def _toy(*argv: str) -> _Toy:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Toy())
    return config_from_args(parser.parse_args(list(argv)), _Toy())


def test_toy_config_defaults_and_values():
    assert [o.name for o in config_options(_Toy)] == ["ratio", "sizes", "pair", "verbose", "strict", "name"]
    assert _toy() == _Toy()
    cfg = _toy("--ratio", "0.25", "--sizes", "3,4.5", "--pair", "7,b", "--verbose", "--strict", "false",
               "--name", "none")
    assert cfg == _Toy(inner=_Inner(0.25, (3.0, 4.5), (7, "b")), verbose=True, strict=False, name=None)
    assert _toy("--verbose", "--no-verbose").verbose is False
    assert _toy("--strict", "none", "--sizes", "").strict is None
    default = _Toy(inner=_Inner(0.75, (), (2, "c")), verbose=True, strict=True, name="y")
    argv = [w for o in config_options(default) for w in option_argv(o, _at(default, o.path))]
    assert _toy(*argv) == default


@pytest.mark.parametrize("argv", [["--pair", "1"], ["--pair", "x,b"], ["--strict", "maybe"], ["--ratio", "half"],
                                  ["--tag", "other"]])
def test_toy_config_bad_syntax_is_an_argparse_error(argv, capsys):
    with pytest.raises(SystemExit) as err:
        _toy(*argv)
    assert err.value.code == 2 and "error:" in capsys.readouterr().err


def test_toy_config_value_checked_by_the_dataclass():
    with pytest.raises(ConfigError, match="ratio must be in"):
        _toy("--ratio", "2")


def test_unsupported_annotations_and_shared_names_are_refused():
    @dataclass(frozen=True)
    class Odd:
        table: dict[str, int] = field(default_factory=dict)

    @dataclass(frozen=True)
    class Both:
        unet: UNetConfig = field(default_factory=UNetConfig)
        vae: VAEConfig = field(default_factory=VAEConfig)

    with pytest.raises(TypeError, match="no command-line syntax"):
        add_config_arguments(argparse.ArgumentParser(), Odd())
    with pytest.raises(TypeError, match="share the option --in_channels"):
        config_options(Both)


@pytest.mark.parametrize("model,sampler", [("ldm", "dpmpp_2m"), ("ldm", "heun"), ("cldm", "dpmpp_2m")])
def test_latent_models_sample_with_the_fast_solvers(runs, tmp_path, model, sampler):
    """DPM-Solver++(2M) and EDM's Heun run for the latent models too (decoded; a cldm guided), seeded."""
    out = tmp_path / f"{model}-{sampler}"
    digit = ["--digit", "3"] if model == "cldm" else []
    args = [*_sample_args(runs, model), "--sampler", sampler, "--steps", "4", "--num_samples", "3", "--individual",
            "1", "--device", "cpu", *digit]
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(out) + "-again", "--individual", "0"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["sampler"] == sampler and info["steps"] == 4 and info["spacing"] == "karras"
    with np.load(out / "samples.npz") as a, np.load(str(out) + "-again/samples.npz") as b:
        assert a["samples"].shape[1:] == (1, 32, 32) and np.array_equal(a["samples"], b["samples"])
    assert len(list((out / "sample_000" / "steps").glob("*.pdf"))) == 5  # x_T and one frame per step


def test_sample_spacing_moves_a_solvers_steps_and_is_recorded(runs, tmp_path):
    """``--spacing linspace`` puts DPM-Solver++'s steps on DDIM's timesteps: other samples from the same seed."""
    args = [*_sample_args(runs, "ddpm"), "--sampler", "dpmpp_2m", "--steps", "3", "--num_samples", "2", "--device",
            "cpu"]
    drawn = {}
    for spacing in ("karras", "linspace"):
        assert main([*args, "--spacing", spacing, "--out", str(tmp_path / spacing)]) == 0
        assert json.loads((tmp_path / spacing / "info.json").read_text())["spacing"] == spacing
        with np.load(tmp_path / spacing / "samples.npz") as a:
            drawn[spacing] = a["samples"]
    assert not np.array_equal(drawn["karras"], drawn["linspace"])


@pytest.fixture(scope="module")
def student(runs):
    """The tiny cldm distilled to 2 steps (from 8, two rounds of 3 iterations)."""
    vae = str(runs["vae"] / "checkpoints" / "model.safetensors")
    teacher = str(runs["cldm"] / "checkpoints" / "model.safetensors")
    path = runs["root"] / "student.safetensors"
    assert main(["distill", vae, teacher, "--steps", "2", "--start_steps", "8", "--iterations", "3", "--batch_size",
                 "16", "--subset", "64", "--quiet", "--device", "cpu", "--out", str(path)]) == 0
    return {"vae": vae, "teacher": teacher, "student": path}


def test_distill_writes_a_student_that_samples_as_it_was_distilled(runs, student, tmp_path, capsys):
    """``distill`` halves the teacher's grid round by round; the student is a cldm file whose header records its
    timesteps and folded guidance, and ``sample`` runs it so by default (η = 0, its steps), refusing other settings."""
    vae, teacher = student["vae"], student["teacher"]
    meta = read_model_meta(student["student"])
    d = meta["distillation"]
    assert meta["kind"] == "cldm" and meta["config"]["diffusion"]["prediction"] == "v"
    assert len(d["timesteps"]) == 2 and d["timesteps"][0] == T - 1 and d["guidance"] == 2.0
    assert [r["steps"] for r in d["rounds"]] == [4, 2] and meta["vae_weights_sha256"]
    out = tmp_path / "s"
    assert main(["sample", "cldm", vae, str(student["student"]), "--digit", "3", "--num_samples", "2",
                 "--individual", "0", "--device", "cpu", "--out", str(out)]) == 0
    info = json.loads((out / "info.json").read_text())
    assert (info["steps"], info["eta"], info["guidance"]) == (2, 0.0, 2.0)
    capsys.readouterr()
    assert _exit_code(["sample", "cldm", vae, str(student["student"]), "--digit", "3", "--steps", "5", "--out",
                       str(tmp_path / "bad")]) == 2
    assert "--steps: this student was distilled to sample with sampler=ddim, steps=2" in capsys.readouterr().err
    assert _exit_code(["distill", vae, teacher, "--steps", "3", "--start_steps", "8", "--out",
                       str(tmp_path / "x.safetensors")]) == 2
    assert "--start_steps must be steps × 2, 4, 8" in capsys.readouterr().err


def test_distilled_vs_teacher_benchmark_scores_every_generator(student, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dvt", Path(__file__).parents[1] / "benchmarks"
                                                  / "distilled_vs_teacher.py")
    dvt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dvt)
    out = tmp_path / "distillation.json"
    assert dvt.main([student["vae"], student["teacher"], str(student["student"]), "--n", "10", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["generators"]
    assert list(rows) == [f"teacher, DDIM-{T} (default η and w)", "teacher, DDIM-2, η = 0",
                          "teacher, DPM-Solver++(2M), 2 steps", "student, 2 steps"]
    assert rows["student, 2 steps"]["network_evaluations_per_sample"] == 2  # guidance folded: one call per step
    assert rows["teacher, DDIM-2, η = 0"]["network_evaluations_per_sample"] == 4  # guided: two per step
    assert rows[f"teacher, DDIM-{T} (default η and w)"]["network_calls"] == T  # DDIM-50, capped at the tiny T
    for r in rows.values():
        assert 0 <= r["label_accuracy"] <= 1 and r["samples_per_second"] > 0 and math.isfinite(r["fid_resnet"])


def test_export_writes_checked_onnx_files_of_a_student_and_refuses_a_teacher(student, tmp_path, capsys):
    out = tmp_path / "web"
    assert main(["export", student["vae"], str(student["student"]), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"student.onnx.gz", "decoder.onnx.gz", "sampler.json"}
    printed = capsys.readouterr().out
    assert "largest difference from PyTorch: student" in printed and "MB" in printed
    assert json.loads((out / "sampler.json").read_text())["student"]["timesteps"] == read_model_meta(
        student["student"])["distillation"]["timesteps"]
    assert _exit_code(["export", student["vae"], student["teacher"], "--out", str(tmp_path / "t")]) == 2
    assert "not a distilled student" in capsys.readouterr().err


def test_export_with_the_teacher_adds_its_graph_and_refuses_another_cldm(student, tmp_path, capsys):
    out = tmp_path / "web"
    args = ["export", student["vae"], str(student["student"]), "--teacher", student["teacher"], "--out", str(out)]
    assert main(args) == 0
    assert {p.name for p in out.iterdir()} == {"student.onnx.gz", "teacher.onnx.gz", "decoder.onnx.gz", "sampler.json"}
    assert "teacher" in capsys.readouterr().out.split("largest difference from PyTorch:")[1]
    teacher = json.loads((out / "sampler.json").read_text())["teacher"]
    assert teacher["prediction"] == "eps" and teacher["weights_sha256"] == read_model_meta(student["teacher"])[
        "weights_sha256"]
    args[4] = str(student["student"])  # the student as its own teacher (export's other refusals: test_export.py)
    assert _exit_code(args[:-1] + [str(tmp_path / "x")]) == 2
    assert "the teacher must be a class-conditional ε-prediction latent model" in capsys.readouterr().err


def test_export_with_the_pixel_ddpm_adds_its_graph_and_refuses_another_kind(runs, student, tmp_path, capsys):
    out = tmp_path / "web"
    ddpm = str(runs["ddpm"] / "checkpoints" / "model.safetensors")
    assert main(["export", student["vae"], str(student["student"]), "--pixel", ddpm, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"student.onnx.gz", "pixel.onnx.gz", "decoder.onnx.gz", "sampler.json"}
    assert "pixel" in capsys.readouterr().out.split("largest difference from PyTorch:")[1]
    pixel = json.loads((out / "sampler.json").read_text())["pixel"]
    assert pixel["weights_sha256"] == read_model_meta(ddpm)["weights_sha256"] and pixel["shape"] == [1, 32, 32]
    flow = str(runs["flow"] / "checkpoints" / "model.safetensors")
    assert _exit_code(["export", student["vae"], str(student["student"]), "--pixel", flow, "--out",
                       str(tmp_path / "x")]) == 2
    assert "ddpm" in capsys.readouterr().err and not (tmp_path / "x" / "pixel.onnx.gz").exists()


def test_only_the_command_that_runs_is_built_in_full(capsys, monkeypatch):
    """build_parser(command) gives every command its line of help but only ``command`` its options, so ``sample``
    never builds the distill options (made from DistillConfig) or the export ones; main builds the command it runs."""
    def options(parser: argparse.ArgumentParser, name: str) -> set[str]:
        sub = parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        return {a.dest for a in sub._actions} - {"help"}

    full, sample_only = cli.build_parser(), cli.build_parser("sample")
    assert set(cli.COMMANDS) == set(full._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"out", "iterations", "checkpoint"} <= options(full, "distill") and options(sample_only, "distill") == set()
    assert options(sample_only, "export") == options(sample_only, "train") == set()
    assert options(sample_only, "sample") == options(full, "sample") != set()
    built: list[str | None] = []
    real = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda command=None: built.append(command) or real(command))
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    assert built == ["distill"] and "--iterations" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])  # no command: every one is built
    assert built == ["distill", None] and "sample from a trained model" in capsys.readouterr().out
