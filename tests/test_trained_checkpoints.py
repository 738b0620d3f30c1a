"""The committed book-profile checkpoints still draw digits.

Each committed model samples a small batch on the CPU (64 samples, DDIM-20 with the default η, or the flow's Euler-20,
seed 0, float32) and the
project's classifier must find digits in them: mean confidence ≥ ``MIN_CONFIDENCE`` and at least
``MIN_CLASSES`` distinct predicted digits. A change that breaks the trained weights (the UNet's
layout, the schedule, the sampler, the VAE's decoder, a checkpoint's bytes) fails here.

The thresholds were calibrated on the trained models and on blobs (benchmarks/README.md, "CI
checkpoint test"): the trained book models clear them with room, while the smoke profile's blobs,
a model with random weights and pure noise all fail them; the last three are tested below, so the
check can fail.

The class-conditional model (chapter 7) must also draw the digit it is asked for: 10 samples of each digit,
guided with ``DEFAULT_GUIDANCE``, are read as that digit by the classifier (accuracy ≥ ``MIN_LABEL_ACCURACY``,
every digit ≥ ``MIN_DIGIT_ACCURACY``); the same samples with the label ignored (w = 0) fail it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mnistdiff.config import (
    DEFAULT_AUTOGUIDANCE,
    DEFAULT_AUTOGUIDANCE_INTERVAL,
    DEFAULT_ETA,
    DEFAULT_GUIDANCE,
    CLDMRunConfig,
    normalized,
    to_dict,
)
from mnistdiff.course.pretrained import checkpoint_path
from mnistdiff.course.profiles import BOOK, SMOKE
from mnistdiff.evaluation.guidance import balanced_labels, label_accuracy, sampler_run
from mnistdiff.evaluation.metrics import class_statistics, classifier_features
from mnistdiff.files import repo_root
from mnistdiff.model import DiffusionModel
from mnistdiff.modelfile import load_model_file, load_vae, read_model_meta
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.unet import UNet

MIN_CONFIDENCE = 0.9
MIN_CLASSES = 8
MIN_LABEL_ACCURACY = 0.9
MIN_DIGIT_ACCURACY = 0.6
N, STEPS = 64, 20


def digit_check(images: torch.Tensor) -> dict:
    """Confidence and distinct predicted classes of ``images`` (N, 1, 32, 32) in [−1, 1]."""
    _, probs = classifier_features(images, device="cpu")
    stats = class_statistics(probs)
    stats["distinct_classes"] = int(probs.argmax(1).unique().numel())
    return stats


def looks_like_digits(stats: dict) -> bool:
    return stats["confidence"] >= MIN_CONFIDENCE and stats["distinct_classes"] >= MIN_CLASSES


def _committed(kind: str):
    path = checkpoint_path(kind, BOOK)
    if not path.exists():
        pytest.fail(f"{path} is not committed: run `python -m mnistdiff train all --profile book` and commit it")
    return path


def _sample(model: DiffusionModel) -> torch.Tensor:
    images, _ = model.sample(N, sampler="ddim", steps=STEPS, eta=DEFAULT_ETA, seed=0, device="cpu", precision="fp32")
    return images


@pytest.mark.parametrize("kind", ["ddpm", "vae", "ldm", "cldm", "flow"])
def test_committed_checkpoint_is_the_book_profiles(kind):
    """The committed file was trained with exactly the book profile's settings (those added since at their
    defaults), and verifies."""
    path = _committed(kind)
    cfg = getattr(BOOK, kind)
    _, meta = load_model_file(path, kind=kind)  # the weights' SHA-256 checked against the header's
    assert normalized(type(cfg), meta["config"]) == to_dict(cfg)


def test_committed_autoguide_is_the_book_profiles():
    """The DDPM's autoguide (``ddpm_guide``, a ddpm file) was trained with the book profile's ``ddpm_guide``
    settings, and shares the DDPM's schedule, so that it can guide it."""
    path = _committed("ddpm_guide")
    _, meta = load_model_file(path, kind="ddpm")
    assert normalized(type(BOOK.ddpm_guide), meta["config"]) == to_dict(BOOK.ddpm_guide)
    DiffusionModel.load(_committed("ddpm")).check_guide(DiffusionModel.load(path))


def test_the_default_autoguidance_is_the_one_measured_and_better_in_both_spaces_at_every_seed():
    """``DEFAULT_AUTOGUIDANCE``, ``DEFAULT_AUTOGUIDANCE_INTERVAL`` and the committed guide are those of an autoguided
    seed spread at that weight and interval (``benchmarks/seed_spread.py --guide``), which the docs quote: against the
    same sampler unguided at the same seeds, a lower FID and a higher precision in both feature spaces at every seed
    (the malformed digits mended, and the style not narrowed, which w = 1.5 did: its ResNet FID rose at three seeds of
    five)."""
    root = repo_root() / "results" / "book"
    interval = None if DEFAULT_AUTOGUIDANCE_INTERVAL is None else \
        [None if math.isinf(s) else s for s in DEFAULT_AUTOGUIDANCE_INTERVAL]  # as seed_spread.py records it
    files = [json.loads(p.read_text()) for p in sorted(root.glob("seed_spread_ddpm_autoguided_*_ddim_50.json"))]
    defaults = [d for d in files if d["sampling"]["guidance"] == DEFAULT_AUTOGUIDANCE
                and d["sampling"].get("guidance_interval") == interval]
    assert len(defaults) == 1, f"one DDIM-50 seed spread at the default weight and interval, found {len(defaults)}"
    guided = defaults[0]
    plain = json.loads((root / "seed_spread_ddpm.json").read_text())
    assert guided["sampling"]["guide"]["weights_sha256"] == read_model_meta(_committed("ddpm_guide"))["weights_sha256"]
    assert guided["model"]["weights_sha256"] == plain["model"]["weights_sha256"]
    same = {k: plain["sampling"][k] for k in ("sampler", "steps", "eta")}
    assert {k: guided["sampling"][k] for k in same} == same
    by_seed = {d["seed"]: d for d in plain["draws"]}
    assert len(guided["draws"]) >= 5
    for d in guided["draws"]:
        before = by_seed[d["seed"]]
        for key in ("fid", "fid_resnet"):
            assert d[key] < before[key], (d["seed"], key, d[key], before[key])
        for key in ("precision", "precision_resnet"):
            assert d[key] > before[key], (d["seed"], key, d[key], before[key])


def test_book_ddpm_draws_digits():
    stats = digit_check(_sample(DiffusionModel.load(_committed("ddpm"))))
    assert looks_like_digits(stats), stats


def test_book_flow_draws_digits():
    """Chapter 8's flow twin, Euler in the same 20 steps (the sampler chapter 8 teaches first)."""
    model = DiffusionModel.load(_committed("flow"))
    images, _ = model.sample(N, sampler="euler", steps=STEPS, seed=0, device="cpu", precision="fp32")
    stats = digit_check(images)
    assert looks_like_digits(stats), stats


def test_book_ldm_draws_digits():
    model = DiffusionModel.load(_committed("ldm"), vae=_committed("vae"))
    stats = digit_check(_sample(model))
    assert looks_like_digits(stats), stats


def _asked_for_digits(guidance: float) -> tuple[float, list[float]]:
    model = DiffusionModel.load(_committed("cldm"), vae=_committed("vae"))
    labels = balanced_labels(100)
    images, _ = model.sample(100, sampler="ddim", steps=STEPS, eta=DEFAULT_ETA, seed=0, device="cpu",
                             precision="fp32", labels=labels, guidance=guidance)
    return label_accuracy(images, labels, "cpu")


def test_book_cldm_draws_the_digit_asked_for():
    accuracy, per_digit = _asked_for_digits(DEFAULT_GUIDANCE)
    assert accuracy >= MIN_LABEL_ACCURACY and min(per_digit) >= MIN_DIGIT_ACCURACY, (accuracy, per_digit)


def test_book_cldm_without_the_label_fails_the_check():
    accuracy, _ = _asked_for_digits(0.0)  # w = 0: the unconditional half ignores the digit asked for
    assert accuracy < 0.5, accuracy


def test_default_guidance_is_the_books_recommendation():
    """Chapter 7 measures accuracy and FID against w and recommends one; the package's default is that one."""
    path = repo_root() / "results" / "book" / "guidance.json"
    assert path.exists(), "run chapter 7 with the book profile: python -m mnistdiff course --notebooks 07"
    assert json.loads(path.read_text())["recommended_guidance"] == DEFAULT_GUIDANCE


def test_chapter_7_sweeps_with_the_cldms_default_sampler():
    """Chapter 7's sweep (``results/book/guidance.json``) drew with the sampler the package uses for the cldm where
    none is named, so its recommended w is the one for that sampler."""
    from mnistdiff.evaluation.nfe_sweep import sampler_label

    doc = json.loads((repo_root() / "results" / "book" / "guidance.json").read_text())
    assert doc["sampler"] == sampler_label(CLDMRunConfig.samplers[0], CLDMRunConfig.default_steps), doc["sampler"]


def test_cldm_default_sampler_is_measured_at_least_as_good_as_ddim_50():
    """The cldm's default sampler (its config's first, at ``default_steps``) is the one chapter 7's sweep measured
    (``benchmarks/guidance_samplers.py``) nearer the real digits than DDIM-50 in both feature spaces, with the digit
    accuracy held, at every guidance weight from the default up."""
    doc = json.loads((repo_root() / "results" / "book" / "guidance_samplers.json").read_text())
    default = sampler_run(CLDMRunConfig.samplers[0], CLDMRunConfig.default_steps)
    assert default in doc["means"], f"measure {default}: python benchmarks/guidance_samplers.py (benchmarks/README.md)"
    for w in (w for w in doc["guidance_scales"] if w >= DEFAULT_GUIDANCE):
        ours, ddim = doc["means"][default][f"{w:g}"], doc["means"]["ddim-50"][f"{w:g}"]
        assert ours["fid"] <= ddim["fid"] and ours["fid_resnet"] <= ddim["fid_resnet"], (w, ours, ddim)
        assert ours["label_accuracy"] >= ddim["label_accuracy"] - 0.01, (w, ours, ddim)


def test_the_flows_default_is_the_sampler_its_seed_spread_measured_within_32_calls():
    """Issue 23 judges the flow at its default sampler and at most 32 network calls: the default is that sampler at
    those steps, and ``benchmarks/seed_spread.py`` scored it on the committed weights."""
    from mnistdiff.config import FlowRunConfig

    model = DiffusionModel.load(_committed("flow"))
    d = model.sampling_defaults()
    assert (d["sampler"], d["steps"]) == (FlowRunConfig.samplers[0], FlowRunConfig.default_steps)
    assert model.nfe(d["sampler"], d["steps"]) <= 32
    name = f"seed_spread_flow_{d['sampler']}_{d['steps']}.json"
    path = repo_root() / "results" / "book" / name
    assert path.is_file(), f"measure it: python benchmarks/seed_spread.py {_committed('flow')} --out {path}"
    doc = json.loads(path.read_text())
    assert (doc["sampling"]["sampler"], doc["sampling"]["steps"]) == (d["sampler"], d["steps"])
    assert doc["model"]["weights_sha256"] == model.meta["weights_sha256"] and len(doc["draws"]) >= 5
    assert {k: doc["sampling"].get(k) for k in ("spacing", *model.karras_range)} == {"spacing": "karras",
                                                                                    **model.karras_range}


def test_the_book_flow_meets_issue_23s_target_in_its_seed_spread():
    """At its default sampler, over the file's seeds: mean FID within 2× the real floor's mean, and mean precision and
    recall of at least 0.80, in both feature spaces (what chapter 8 prints from the same file)."""
    model = DiffusionModel.load(_committed("flow"))
    d = model.sampling_defaults()
    name = f"seed_spread_flow_{d['sampler']}_{d['steps']}.json"
    doc = json.loads((repo_root() / "results" / "book" / name).read_text())
    for suffix in ("", "_resnet"):
        fid, floor = doc["spread"][f"fid{suffix}"]["mean"], doc["floor_spread"][f"fid{suffix}"]["mean"]
        assert fid <= 2 * floor, (suffix, fid, floor)
        for m in ("precision", "recall"):
            assert doc["spread"][f"{m}{suffix}"]["mean"] >= 0.80, (m, suffix)


@pytest.mark.parametrize("kind", ["ddpm", "ldm"])
def test_a_solver_default_is_measured_as_good_as_ddim_50_over_the_same_seeds(kind):
    """Where a kind's default sampler is a solver (its config's first, at ``default_steps``), five seeds or more of it
    (``benchmarks/seed_spread.py``, on the package's Karras σ today) are not behind DDIM-50 with the default η over
    the same seeds, in either feature space: the mean of the per-seed FID differences is at most one standard error
    above zero (``compare_over_seeds``: ahead, or level); a kind that keeps DDIM needs no such measurement."""
    from mnistdiff.config import RUN_CONFIGS
    from mnistdiff.solvers import KARRAS_SIGMA_MIN

    cfg = RUN_CONFIGS[kind]
    if cfg.samplers[0] == "ddim":
        assert cfg.default_steps == 50
        return
    results = repo_root() / "results" / "book"
    name = f"seed_spread_{kind}_{cfg.samplers[0]}_{cfg.default_steps}.json"
    assert (results / name).is_file(), f"measure it: python benchmarks/seed_spread.py … --out results/book/{name}"
    ours, ddim = (json.loads((results / f).read_text()) for f in (name, f"seed_spread_{kind}.json"))
    assert (ours["sampling"]["sampler"], ours["sampling"]["steps"]) == (cfg.samplers[0], cfg.default_steps)
    assert (ours["sampling"]["sigma_max"], ours["sampling"]["sigma_min"]) == (cfg.karras_sigma_max, KARRAS_SIGMA_MIN)
    assert [ddim["sampling"][k] for k in ("sampler", "steps", "eta")] == ["ddim", 50, DEFAULT_ETA]
    assert ours["n"] == ddim["n"] and [d["seed"] for d in ours["draws"]] == [d["seed"] for d in ddim["draws"]]
    assert len(ours["draws"]) >= 5
    committed = read_model_meta(_committed(kind))["weights_sha256"]
    assert ours["model"]["weights_sha256"] == ddim["model"]["weights_sha256"] == committed
    from mnistdiff.evaluation.nfe_sweep import compare_over_seeds

    for key in ("fid", "fid_resnet"):
        assert compare_over_seeds(ours, ddim, key)["verdict"] != "behind", (key, compare_over_seeds(ours, ddim, key))


def test_book_vae_reconstructs_digits():
    from mnistdiff.data import load_mnist

    vae = load_vae(_committed("vae"))
    real = load_mnist("test").subset(N, seed=0).images
    with torch.no_grad():
        recon = vae.decode(vae.encode(real).mode()).clamp(-1, 1)
    stats = digit_check(recon)
    assert looks_like_digits(stats), stats


# ---- the check can fail: what is not a digit does not pass it ----------------------------------


def test_pure_noise_fails_the_check():
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand((N, 1, 32, 32), generator=gen) * 2 - 1
    assert not looks_like_digits(digit_check(noise))


def test_untrained_network_fails_the_check():
    torch.manual_seed(0)
    unet = UNet(BOOK.ddpm.unet)
    for p in unet.conv_out.parameters():  # the zero-initialised output layer would predict ε = 0 everywhere
        torch.nn.init.normal_(p, std=0.02)
    model = DiffusionModel(unet.eval(), NoiseSchedule.from_config(BOOK.ddpm.diffusion), BOOK.ddpm, {})
    assert not looks_like_digits(digit_check(_sample(model)))


@pytest.mark.slow
@pytest.mark.xdist_group("smoke-models")  # with the notebooks (conftest.SMOKE_MODELS): it trains checkpoints/smoke/ddpm
def test_smoke_blobs_fail_the_check():
    from mnistdiff.course.pretrained import get_ddpm

    model = get_ddpm(SMOKE, device="cpu", progress=False)  # trains the smoke DDPM (about 20 s) unless stored
    stats = digit_check(_sample(model))
    assert not looks_like_digits(stats), stats
