"""Class-conditional UNet, label dropout and classifier-free guidance (mnistdiff.unet, mnistdiff.guidance), the
labelled batches of the training loop, and the guidance evaluation's rules. Golden values are computed here by
separate network calls and plain arithmetic, never read back from the code under test."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from mnistdiff.config import (
    DEFAULT_AUTOGUIDANCE,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    CLDMRunConfig,
    ConfigError,
    DDPMRunConfig,
    LDMRunConfig,
    UNetConfig,
    normalized,
    to_dict,
)
from mnistdiff.ddim import ddim_sample_loop, ddim_step, ddim_timesteps
from mnistdiff.evaluation.guidance import balanced_labels, label_accuracy, recommend_guidance
from mnistdiff.guidance import AutoGuidedDenoiser, GuidedDenoiser, autoguided_eps, drop_labels, guided_eps
from mnistdiff.model import DiffusionModel
from mnistdiff.sampling import generate
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.solvers import network_time
from mnistdiff.training.batches import chunks, num_rows, take
from mnistdiff.unet import NULL_LABEL, UNet

SMALL = UNetConfig(in_channels=2, image_size=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                   attention_resolutions=(2,), num_heads=2)


def _randomised(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A UNet whose zero-initialised layers are random too, so that every input (the label too) reaches the output."""
    torch.manual_seed(seed)
    net = UNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def cond() -> UNet:
    return _randomised(dataclasses.replace(SMALL, num_classes=10))


def _inputs(b: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, 4, 4, generator=g), torch.randint(0, 100, (b,), generator=g)


# ----------------------------------------------------------------------------- the conditional UNet


def test_label_embedding_has_a_row_for_no_label(cond):
    assert cond.label_emb.weight.shape == (11, 4 * SMALL.base_channels)
    assert UNet(SMALL).label_emb is None


def test_no_labels_means_null_label_and_labels_change_the_prediction(cond):
    x, t = _inputs()
    with torch.no_grad():
        none = cond(x, t)
        null = cond(x, t, torch.full((6,), NULL_LABEL))
        threes, sevens = cond(x, t, torch.full((6,), 3)), cond(x, t, torch.full((6,), 7))
    torch.testing.assert_close(none, null)
    assert (threes - sevens).abs().max() > 1e-3 and (threes - null).abs().max() > 1e-3


def test_each_sample_gets_its_own_label(cond):
    """A batch of mixed labels equals the samples run one at a time with their labels."""
    x, t = _inputs(4)
    y = torch.tensor([0, 9, NULL_LABEL, 4])
    with torch.no_grad():
        batched = cond(x, t, y)
        single = torch.cat([cond(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_bad_labels_are_refused(cond):
    """The UNet checks the labels' shape; their values are checked once, by DiffusionModel.sample (below): a label
    outside the embedding is an index error here."""
    x, t = _inputs()
    with pytest.raises(ValueError, match=r"labels y must have shape \(6,\)"):
        cond(x, t, torch.zeros(5, dtype=torch.long))
    for bad in (10, -2):
        with pytest.raises(IndexError):
            cond(x, t, torch.full((6,), bad))


def test_an_unconditional_unet_refuses_labels():
    x, t = _inputs()
    with pytest.raises(ValueError, match="unconditional"):
        UNet(SMALL)(x, t, torch.zeros(6, dtype=torch.long))


# ----------------------------------------------------------------------------- configs


def test_cldm_config_needs_num_classes_and_a_p_uncond_fraction():
    assert CLDMRunConfig().unet.num_classes == 10 and CLDMRunConfig().p_uncond == 0.1
    with pytest.raises(ConfigError, match="num_classes must be set"):
        CLDMRunConfig(unet=SMALL)
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="p_uncond"):
            CLDMRunConfig(p_uncond=bad)


@pytest.mark.parametrize("cls", [DDPMRunConfig, LDMRunConfig])
def test_unconditional_configs_refuse_num_classes(cls):
    with pytest.raises(ConfigError, match="num_classes must be none"):
        cls(unet=dataclasses.replace(cls().unet, num_classes=10))


def test_an_old_sidecar_without_num_classes_still_describes_the_same_model():
    """Sidecars written before num_classes existed: normalized() fills the default, so they still match."""
    stored = json.loads(json.dumps(to_dict(LDMRunConfig())))
    del stored["unet"]["num_classes"]
    assert normalized(LDMRunConfig, stored) == to_dict(LDMRunConfig())
    assert stored != json.loads(json.dumps(to_dict(LDMRunConfig())))  # plain equality would have refused it


def test_usable_accepts_an_old_sidecar_and_refuses_another_architecture(tmp_path, monkeypatch):
    from mnistdiff.course import pretrained
    from mnistdiff.course.profiles import SMOKE

    monkeypatch.setattr(pretrained, "read_model_meta", lambda path: {"config": sidecar})
    path = tmp_path / "ldm.safetensors"
    path.write_bytes(b"x")
    sidecar = json.loads(json.dumps(to_dict(SMOKE.ldm)))
    del sidecar["unet"]["num_classes"]
    assert pretrained._usable(path, SMOKE.ldm)
    sidecar["unet"]["base_channels"] = 32
    assert not pretrained._usable(path, SMOKE.ldm)
    sidecar = to_dict(SMOKE.vae)  # another kind's config altogether
    assert not pretrained._usable(path, SMOKE.ldm)


# ----------------------------------------------------------------------------- label dropout


def test_drop_labels_extremes_and_rate():
    y = torch.randint(0, 10, (100_000,))
    assert torch.equal(drop_labels(y, 0.0), y)
    dropped = drop_labels(y, 0.15, torch.Generator().manual_seed(0))
    rate = float((dropped == NULL_LABEL).float().mean())
    assert abs(rate - 0.15) < 4 * (0.15 * 0.85 / 1e5) ** 0.5  # within 4σ of a binomial
    kept = dropped != NULL_LABEL
    assert torch.equal(dropped[kept], y[kept])  # the rest keep their own labels
    again = drop_labels(y, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)


# ----------------------------------------------------------------------------- guidance


def test_guided_eps_against_separate_calls(cond):
    x, t = _inputs()
    y = torch.tensor([1, 2, 3, 4, 5, 6])
    with torch.no_grad():
        eps_y, eps_null = cond(x, t, y), cond(x, t, torch.full_like(y, NULL_LABEL))
        torch.testing.assert_close(guided_eps(cond, x, t, y, 0.0), eps_null)
        torch.testing.assert_close(guided_eps(cond, x, t, y, 1.0), eps_y)
        for w in (0.5, 2.0, 7.5):
            torch.testing.assert_close(guided_eps(cond, x, t, y, w), eps_null + w * (eps_y - eps_null),
                                       rtol=1e-4, atol=1e-5)


def _cldm(cond: UNet) -> DiffusionModel:
    cfg = CLDMRunConfig(unet=cond.config)
    return DiffusionModel(cond, NoiseSchedule.make("cosine", 10), cfg, clip_range=(-3.0, 3.0))


def test_a_cldm_samples_with_its_kinds_default_and_another_sampler_at_default_steps(cond):
    """The cldm's default is its config's first sampler at ``default_steps`` (DPM-Solver++(2M) SDE, 16 steps);
    naming another sampler alone gives ``DEFAULT_STEPS``; either is capped at the model's T."""
    model = DiffusionModel(cond, NoiseSchedule.make("cosine", 1000), CLDMRunConfig(unet=cond.config),
                           clip_range=(-3.0, 3.0))
    assert (CLDMRunConfig.samplers[0], CLDMRunConfig.default_steps) == ("dpmpp_2m_sde", 16)
    assert {k: model.sampling_defaults()[k] for k in ("sampler", "steps")} == {"sampler": "dpmpp_2m_sde", "steps": 16}
    assert model.sampling_defaults("ddim")["steps"] == DEFAULT_STEPS == 50
    assert model.sampling_defaults("dpmpp_2m_sde")["steps"] == 16
    assert _cldm(cond).sampling_defaults("ddim")["steps"] == 10  # T = 10
    seen: list[int] = []
    hook = cond.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    try:
        model.sample(2, labels=3, seed=0)
    finally:
        hook.remove()
    assert sum(seen) == 2 * 2 * model.nfe("dpmpp_2m_sde", 16)  # guided: ε(y) and ε(∅) for each of 2 samples


@pytest.mark.parametrize("w", [-1.0, float("nan"), float("inf")])
def test_bad_guidance_weights_are_refused_once_before_sampling(cond, w):
    """The model checks w once, before any network call (guided_eps and GuidedDenoiser check nothing per call)."""
    calls = []
    model = _cldm(cond)
    handle = cond.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ConfigError, match="guidance must be a finite number >= 0") as err:
            model.sample(2, labels=3, guidance=w, steps=2)
        model.sample(1, labels=3, guidance=2.0, steps=1)  # the hook sees calls when there are any
    finally:
        handle.remove()
    assert err.value.setting == "guidance" and calls == [1]


@pytest.mark.parametrize("labels, message", [
    (torch.arange(6), r"labels must be one digit or one per sample \(7\), got \(6,\)"),
    (10, r"labels must be digits 0-9 \(or -1: none\), got \[10\]"),
    ([-2] * 7, r"labels must be digits 0-9"),
])
def test_bad_labels_are_refused_by_the_model(cond, labels, message):
    with pytest.raises(ConfigError, match=message):
        _cldm(cond).sample(7, labels=labels, steps=2)


def test_an_unconditional_model_refuses_labels():
    cfg = DDPMRunConfig(unet=UNetConfig(base_channels=8, channel_mults=(1,), attention_resolutions=(), num_heads=1,
                                        norm_groups=4, image_size=8))
    model = DiffusionModel(UNet(cfg.unet), NoiseSchedule.make("cosine", 10), cfg)
    with pytest.raises(ConfigError, match="unconditional and cannot be asked for a digit"):
        model.sample(2, labels=3, steps=2)


def _ddim_by_hand(eps_of, sched: NoiseSchedule, n: int, steps: int, seed: int) -> torch.Tensor:
    """DDIM, η = 1, written out: ``eps_of(x, t)`` gives each step's (guided) ε; the draws in the order ``generate``
    makes them (x_T, then one noise per step), x̂_0 clipped to (−3, 3)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 2, 4, 4), generator=gen)
    taus = ddim_timesteps(sched.num_timesteps, steps)
    with torch.no_grad():
        for i, t in enumerate(taus):
            eps = eps_of(x, torch.full((n,), t))
            noise = torch.randn(x.shape, generator=gen)
            x, _ = ddim_step(sched, x, eps, t, taus[i + 1] if i + 1 < steps else -1, 1.0, noise, (-3.0, 3.0))
    return x


def test_generate_with_labels_equals_a_guided_ddim_loop_by_hand(cond):
    sched = NoiseSchedule.make("cosine", 50)
    y = torch.tensor([0, 1, 2, 3, 8])
    w, steps = 3.0, 6
    images, _ = generate(cond, sched, 5, shape=(2, 4, 4), sampler="ddim", steps=steps, eta=1.0, seed=4,
                         labels=y, guidance=w, clip_range=(-3.0, 3.0))

    def guided(x, tt):
        eps_y, eps_null = cond(x, tt, y), cond(x, tt, torch.full_like(y, NULL_LABEL))
        return eps_null + w * (eps_y - eps_null)

    torch.testing.assert_close(images, _ddim_by_hand(guided, sched, 5, steps, seed=4), rtol=1e-4, atol=1e-4)


def test_generate_gives_each_batch_its_own_labels():
    """With batches of 3, the labels reach the network in order, three at a time."""
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, y):
            seen.append(y.clone())
            return torch.zeros_like(x)

    sched = NoiseSchedule.make("cosine", 10)
    y = torch.arange(7)
    generate(Recorder(), sched, 7, shape=(2, 4, 4), steps=1, labels=y, guidance=1.0, batch_size=3)
    assert [s.tolist() for s in seen] == [[0, 1, 2], [3, 4, 5], [6]]


def test_guided_denoiser_runs_in_the_ancestral_sampler_too(cond):
    sched = NoiseSchedule.make("cosine", 8)
    y = torch.tensor([2, 2])
    a = ddim_sample_loop(GuidedDenoiser(cond, y, 2.0), sched, (2, 2, 4, 4), ddim_steps=8, eta=1.0,
                         generator=torch.Generator().manual_seed(0), clip_range=None).images
    b, _ = generate(cond, sched, 2, shape=(2, 4, 4), sampler="ddpm", seed=0, labels=y, guidance=2.0, clip_range=None)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # DDIM η = 1 over every step is DDPM (chapter 3)


# ----------------------------------------------------------------------------- labelled batches in the loop


def test_tuple_batches_keep_labels_with_their_rows():
    data = (torch.arange(10.0)[:, None] * 2, torch.arange(10))
    assert num_rows(data) == 10
    picked = take(data, torch.tensor([7, 2, 5]))
    assert picked[0][:, 0].tolist() == [14.0, 4.0, 10.0] and picked[1].tolist() == [7, 2, 5]
    assert [num_rows(c) for c in chunks(data, 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="same number of rows"):
        num_rows((torch.zeros(3), torch.zeros(4)))


def test_fit_sees_each_image_with_its_own_label(tmp_path):
    """A loss that checks every batch: the image's value is its label, whatever the shuffled order."""
    from mnistdiff.config import TrainConfig
    from mnistdiff.training.experiment import Experiment
    from mnistdiff.training.loop import TrainTask, fit

    labels = torch.arange(40) % 10
    images = labels.float()[:, None].repeat(1, 3)
    checked = []

    def loss_fn(model, batch, gen):
        x, y = batch
        assert torch.equal(x[:, 0], y.float())
        checked.append(len(y))
        return model(x).pow(2).mean()

    cfg = TrainConfig(epochs=2, batch_size=8, warmup_steps=1, sample_every=1, num_samples=1, eval_size=8)
    task = TrainTask("toy", torch.nn.Linear(3, 1), loss_fn, (images, labels), (images[:8], labels[:8]), cfg)
    fit(task, Experiment.create(tmp_path, "toy"), progress=False)
    assert sum(checked) >= 2 * 40  # every training row of both epochs (and the evaluations) was checked


# ----------------------------------------------------------------------------- evaluation rules


def test_balanced_labels_and_recommendation_rule():
    assert balanced_labels(12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    rows = {"w = 0": {"guidance": 0.0, "label_accuracy": 0.10, "fid": 0.5},
            "w = 1": {"guidance": 1.0, "label_accuracy": 0.90, "fid": 0.6},
            "w = 2": {"guidance": 2.0, "label_accuracy": 0.975, "fid": 0.9},
            "w = 4": {"guidance": 4.0, "label_accuracy": 0.99, "fid": 1.5},
            "w = 8": {"guidance": 8.0, "label_accuracy": 0.99, "fid": 3.0}}
    assert recommend_guidance(rows) == 4.0  # within 0.01 of 0.99: w = 4, 8 (not 2's 0.975); the best FID of those
    assert recommend_guidance(rows, tolerance=0.02) == 2.0  # 2, 4, 8
    assert recommend_guidance(rows, tolerance=0.0) == 4.0
    assert recommend_guidance(rows, tolerance=1.0) == 0.0
    with pytest.raises(ValueError):
        recommend_guidance({})


def test_label_statistics_by_hand():
    from mnistdiff.evaluation.distances import label_statistics

    probs = torch.eye(10)[[0, 1, 2, 2, 5]]  # read as 0, 1, 2, 2, 5
    stats = label_statistics(probs, torch.tensor([0, 1, 1, -1, 5]))  # the fourth asked for nothing
    assert stats["label_accuracy"] == 0.75  # 3 of the 4 labelled rows
    assert stats["per_class_accuracy"][:3] == [1.0, 0.5, None] and stats["per_class_accuracy"][5] == 1.0
    with pytest.raises(ValueError, match="no sample has a label"):
        label_statistics(probs, torch.full((5,), -1))
    with pytest.raises(ValueError, match="labels"):
        label_statistics(probs, torch.zeros(4, dtype=torch.long))


def test_label_accuracy_reads_real_digits_and_not_shuffled_labels():
    from mnistdiff.data import load_mnist

    real = load_mnist("test").subset(300, seed=0)
    acc, per_class = label_accuracy(real.images, real.labels)
    assert acc > 0.97 and len(per_class) == 10 and min(per_class) > 0.85
    shuffled = real.labels[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    assert label_accuracy(real.images, shuffled)[0] < 0.3


# ----------------------------------------------------------------------------- autoguidance (Karras et al. 2024)


def _ddpm(seed: int, timesteps: int = 50) -> DiffusionModel:
    """A tiny unconditional DDPM whose every layer is random (``seed``), so that two seeds are two networks."""
    net = _randomised(SMALL, seed)
    return DiffusionModel(net, NoiseSchedule.make("cosine", timesteps), DDPMRunConfig(unet=SMALL),
                          clip_range=(-3.0, 3.0))


def test_autoguided_eps_against_separate_calls():
    main, guide = _randomised(SMALL, 0), _randomised(SMALL, 1)
    x, t = _inputs()
    calls: list[str] = []
    hooks = [main.register_forward_hook(lambda *a: calls.append("main")),
             guide.register_forward_hook(lambda *a: calls.append("guide"))]
    try:
        with torch.no_grad():
            eps, eps_guide = main(x, t), guide(x, t)
            calls.clear()
            torch.testing.assert_close(autoguided_eps(main, guide, x, t, 1.0), eps)
            torch.testing.assert_close(autoguided_eps(main, guide, x, t, 0.0), eps_guide)
            assert calls == ["main", "guide"]  # w = 1 and w = 0: one network each
            for w in (0.5, 1.5, 3.0):
                torch.testing.assert_close(AutoGuidedDenoiser(main, guide, w)(x, t),
                                           eps_guide + w * (eps - eps_guide), rtol=1e-4, atol=1e-5)
    finally:
        for h in hooks:
            h.remove()
    assert not torch.allclose(eps, eps_guide)  # two different networks, or the test could not fail


def test_generate_with_a_guide_equals_an_autoguided_ddim_loop_by_hand():
    main, guide = _ddpm(0), _ddpm(1)
    w, steps = 1.7, 5
    images, _ = main.sample(3, sampler="ddim", steps=steps, eta=1.0, seed=2, guide=guide, guidance=w)

    def autoguided(x, tt):
        eps, eps_guide = main.unet(x, tt), guide.unet(x, tt)
        return eps_guide + w * (eps - eps_guide)

    torch.testing.assert_close(images, _ddim_by_hand(autoguided, main.schedule, 3, steps, seed=2), rtol=1e-4,
                               atol=1e-4)
    plain, _ = main.sample(3, sampler="ddim", steps=steps, eta=1.0, seed=2)
    assert not torch.allclose(images, plain, atol=1e-3)


def test_a_model_guided_by_itself_draws_its_own_samples_bit_for_bit():
    """ε_guide + w·(ε − ε_guide) with ε_guide = ε is ε exactly, for every sampler and w."""
    model = _ddpm(0)
    for sampler in ("ddim", "dpmpp_2m_sde"):
        plain, _ = model.sample(4, sampler=sampler, steps=4, seed=3)
        guided, _ = model.sample(4, sampler=sampler, steps=4, seed=3, guide=model, guidance=2.5)
        assert torch.equal(plain, guided)


def test_guided_samples_count_two_network_calls_a_step_and_default_to_the_measured_weight():
    main, guide = _ddpm(0), _ddpm(1)
    seen: list[str] = []
    hooks = [main.unet.register_forward_pre_hook(lambda *a: seen.append("main")),
             guide.unet.register_forward_pre_hook(lambda *a: seen.append("guide"))]
    try:
        main.sample(2, sampler="ddim", steps=4, seed=0, guide=guide)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == main.nfe("ddim", 4, guide=True) == 8 and seen.count("guide") == 4
    assert main.sampling_defaults("ddim", guide=True)["guidance"] == DEFAULT_AUTOGUIDANCE
    assert main.sampling_defaults("ddim")["guidance"] == DEFAULT_GUIDANCE


@pytest.mark.parametrize("which, message", [
    ("schedule", "cannot guide this ddpm model"),
    ("shape", "cannot guide this ddpm model"),
    ("labels", "autoguidance guides unconditional samples"),
    ("not a model", "guide must be a DiffusionModel"),
])
def test_a_guide_that_does_not_fit_is_refused_before_any_network_call(cond, which, message):
    main, guide = (_cldm(cond), _cldm(cond)) if which == "labels" else (_ddpm(0), _ddpm(1))
    if which == "schedule":
        guide = _ddpm(1, timesteps=40)
    if which == "shape":
        guide = DiffusionModel(_randomised(dataclasses.replace(SMALL, image_size=8), 1), main.schedule,
                               DDPMRunConfig(unet=dataclasses.replace(SMALL, image_size=8)))
    calls: list[int] = []
    hook = main.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ConfigError, match=message) as err:
            main.sample(2, steps=2, guide=main.unet if which == "not a model" else guide,
                        labels=3 if which == "labels" else None)
    finally:
        hook.remove()
    assert err.value.setting == "guide" and calls == []


# ----------------------------------------------------------------------------- a guidance interval


def _sigma(sched: NoiseSchedule, t: int) -> float:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t), from the schedule's ᾱ directly."""
    abar = float(sched.alphas_cumprod[t])
    return ((1 - abar) / abar) ** 0.5


def test_network_time_maps_noise_levels_to_each_kind_of_time():
    sched = NoiseSchedule.make("cosine", 50)
    for t in (0, 7, 31, 49):
        assert network_time(sched, _sigma(sched, t)) == pytest.approx(t, abs=1e-6)
    halfway = (_sigma(sched, 20) * _sigma(sched, 21)) ** 0.5  # the geometric mean: halfway in log σ
    assert network_time(sched, halfway) == pytest.approx(20.5, abs=1e-6)
    assert network_time(sched, 0.0) == -math.inf and network_time(sched, math.inf) == math.inf
    assert network_time(sched, _sigma(sched, 0) / 2) == -math.inf and network_time(sched, 1e9) == math.inf
    assert network_time(None, 1.0) == pytest.approx(500.0) and network_time(None, 3.0) == pytest.approx(750.0)


def test_an_interval_guides_only_between_its_noise_levels_and_skips_the_guide_elsewhere():
    """DDIM by hand, autoguided where σ_lo < σ_t and the model alone below: what ``sample`` draws with
    ``guidance_interval=(σ_lo, inf)``, with a call of the guide at the guided steps only."""
    main, guide = _ddpm(0), _ddpm(1)
    w, steps = 1.7, 5
    taus = ddim_timesteps(50, steps)
    sigma_lo = (_sigma(main.schedule, taus[2]) + _sigma(main.schedule, taus[3])) / 2  # guided at the first three
    seen: list[str] = []
    hook = guide.unet.register_forward_pre_hook(lambda *a: seen.append("guide"))
    try:
        images, _ = main.sample(3, sampler="ddim", steps=steps, eta=1.0, seed=2, guide=guide, guidance=w,
                                guidance_interval=(sigma_lo, math.inf))
    finally:
        hook.remove()

    def autoguided_above(x, tt):
        eps = main.unet(x, tt)
        if _sigma(main.schedule, int(tt[0])) <= sigma_lo:
            return eps
        eps_guide = guide.unet(x, tt)
        return eps_guide + w * (eps - eps_guide)

    torch.testing.assert_close(images, _ddim_by_hand(autoguided_above, main.schedule, 3, steps, seed=2), rtol=1e-4,
                               atol=1e-4)
    assert len(seen) == 3
    everywhere, _ = main.sample(3, sampler="ddim", steps=steps, eta=1.0, seed=2, guide=guide, guidance=w)
    assert not torch.allclose(images, everywhere, atol=1e-3)
    whole, _ = main.sample(3, sampler="ddim", steps=steps, eta=1.0, seed=2, guide=guide, guidance=w,
                           guidance_interval=(0.0, math.inf))
    assert torch.equal(whole, everywhere)
    plain, _ = main.sample(3, sampler="ddim", steps=steps, eta=1.0, seed=2)
    none, _ = main.sample(3, sampler="ddim", steps=steps, eta=1.0, seed=2, guide=guide, guidance=w,
                          guidance_interval=(1e6, math.inf))  # above every σ the solver meets: never guided
    assert torch.equal(none, plain)


def test_a_classifier_free_interval_leaves_the_conditional_model_outside_it(cond):
    """Where t is outside (lo, hi], ε(x_t, t, y) alone; inside, ε(∅) + w·(ε(y) − ε(∅)); a batch of mixed t both."""
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    times = (30.0, 70.0)
    with torch.no_grad():
        out = GuidedDenoiser(cond, y, 2.5, times)(x, t)
        for i in range(len(t)):
            xi, ti, yi = x[i:i + 1], t[i:i + 1], y[i:i + 1]
            want = guided_eps(cond, xi, ti, yi, 2.5) if times[0] < int(t[i]) <= times[1] else cond(xi, ti, yi)
            torch.testing.assert_close(out[i:i + 1], want, rtol=1e-4, atol=1e-5)
    inside = ((t > 30) & (t <= 70)).tolist()
    assert any(inside) and not all(inside)  # the batch mixes both, or the test could not tell


@pytest.mark.parametrize("interval, guided, message", [
    ((0.5, 0.1), True, "needs 0 <= sigma_lo < sigma_hi"),
    ((-1.0, 2.0), True, "needs 0 <= sigma_lo < sigma_hi"),
    ((0.3,), True, "must be two noise levels"),
    ("ab", True, "must be two noise levels"),
    ((0.3, math.inf), False, "guidance_interval limits guidance"),
])
def test_a_bad_guidance_interval_is_refused_before_any_network_call(interval, guided, message):
    main, guide = _ddpm(0), _ddpm(1)
    calls: list[int] = []
    hook = main.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ConfigError, match=message) as err:
            main.sample(2, steps=2, guide=guide if guided else None, guidance_interval=interval)
    finally:
        hook.remove()
    assert err.value.setting == "guidance_interval" and calls == []


def test_a_guide_without_an_interval_takes_the_default_one_and_0_inf_is_every_step(monkeypatch):
    import mnistdiff.model

    main, guide = _ddpm(0), _ddpm(1)
    taus = ddim_timesteps(50, 5)
    sigma_lo = (_sigma(main.schedule, taus[1]) + _sigma(main.schedule, taus[2])) / 2
    monkeypatch.setattr(mnistdiff.model, "DEFAULT_AUTOGUIDANCE_INTERVAL", (sigma_lo, math.inf))
    assert main.sampling_defaults(guide=True)["guidance_interval"] == (sigma_lo, math.inf)
    assert "guidance_interval" not in main.sampling_defaults()  # nothing to limit without a guide
    kw = {"sampler": "ddim", "steps": 5, "eta": 1.0, "seed": 2, "guide": guide, "guidance": 2.0}
    default, _ = main.sample(3, **kw)
    explicit, _ = main.sample(3, **kw, guidance_interval=(sigma_lo, math.inf))
    everywhere, _ = main.sample(3, **kw, guidance_interval=(0.0, math.inf))
    assert torch.equal(default, explicit) and not torch.allclose(default, everywhere, atol=1e-3)
