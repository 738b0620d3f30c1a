"""Config dataclasses and profiles: validation (ConfigError), the JSON round trip, the profile switch."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mnistdiff.config import (
    ConfigError,
    DDPMRunConfig,
    DiffusionConfig,
    LDMRunConfig,
    TrainConfig,
    UNetConfig,
    VAEConfig,
    VAERunConfig,
    from_dict,
    to_dict,
)
from mnistdiff.course import profiles


@pytest.mark.parametrize(
    "factory",
    [
        lambda: DiffusionConfig(timesteps=1),
        lambda: DiffusionConfig(timesteps=0),
        lambda: DiffusionConfig(schedule="sigmoid"),
        lambda: TrainConfig(epochs=0),
        lambda: TrainConfig(lr=0.0),
        lambda: TrainConfig(lr=-1e-3),
        lambda: TrainConfig(batch_size=0),
        lambda: TrainConfig(sample_every=0),
        lambda: TrainConfig(subset=0),
        lambda: TrainConfig(ema_decay=1.0),
        lambda: TrainConfig(ema_decay=-0.1),
        lambda: TrainConfig(num_samples=0),
        lambda: VAEConfig(norm_groups=0),
        lambda: VAERunConfig(kl_weight=-1.0),
        lambda: VAERunConfig(kl_weight=float("nan")),
        lambda: TrainConfig(lr=float("inf")),
        lambda: TrainConfig(lr=float("nan")),
        lambda: TrainConfig(warmup_steps=-1),
        lambda: TrainConfig(weight_decay=-0.1),
        lambda: TrainConfig(grad_clip=float("inf")),
        lambda: TrainConfig(precision="fp16"),
        lambda: UNetConfig(num_heads=3),  # 32, 64 channels do not split into 3 heads
        lambda: UNetConfig(channel_mults=()),
        lambda: UNetConfig(dropout=float("nan")),
        lambda: VAEConfig(channel_mults=(1, 0)),
        lambda: DiffusionConfig(min_snr_gamma=float("inf")),
    ],
)
def test_bad_settings_raise_config_error(factory):
    with pytest.raises(ConfigError):
        factory()


def test_config_error_names_the_setting():
    with pytest.raises(ConfigError, match="timesteps"):
        DiffusionConfig(timesteps=1)
    with pytest.raises(ConfigError, match="norm_groups"):
        UNetConfig(base_channels=12)
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=2.0)


@pytest.mark.parametrize(
    "factory,setting,start",
    [
        (lambda: TrainConfig(epochs=0), "epochs", "epochs must be a positive number, got 0"),
        (lambda: DiffusionConfig(timesteps=0), "timesteps", "timesteps must be a positive number"),
        (lambda: DiffusionConfig(timesteps=1), "timesteps", "timesteps must be at least 2"),
        (lambda: VAERunConfig(kl_weight=-1.0), "kl_weight", "kl_weight must be non-negative"),
        (lambda: DiffusionConfig(time_sampling="beta"), "time_sampling", "time_sampling must be 'uniform' or"),
        (lambda: TrainConfig(snapshot_every=0), "snapshot_every", "snapshot_every must be a positive number"),
        (lambda: UNetConfig(num_heads=3), "num_heads", "num_heads 3 must divide"),
        (lambda: UNetConfig(base_channels=12), None, "base_channels×mult = 12"),  # two settings together
    ],
)
def test_config_error_records_the_setting(factory, setting, start):
    """``ConfigError.setting``: the one field at fault (the command line names its option), or None."""
    with pytest.raises(ConfigError) as err:
        factory()
    assert err.value.setting == setting and str(err.value).startswith(start)


def test_attention_heads_checked_only_where_attention_is():
    """num_heads must divide the attended levels' channels and the middle block's, not the others'."""
    assert UNetConfig(base_channels=8, channel_mults=(1, 3), attention_resolutions=(), num_heads=3, norm_groups=4)
    with pytest.raises(ConfigError, match="num_heads"):
        UNetConfig(base_channels=8, channel_mults=(1, 3), attention_resolutions=(32,), num_heads=3, norm_groups=4)


def test_every_setting_has_help_text():
    """The command line's help for each option is its field's metadata: one place, never empty."""
    for cls in (UNetConfig, DiffusionConfig, VAEConfig, TrainConfig, VAERunConfig):
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(getattr(cls(), f.name)):  # a nested config's fields have the help
                assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"
    for cls in (DDPMRunConfig, VAERunConfig, LDMRunConfig):
        kind = next(f for f in dataclasses.fields(cls) if f.name == "kind")
        assert kind.metadata["cli"] is False


def test_good_edge_settings_accepted():
    assert DiffusionConfig(timesteps=2).timesteps == 2
    assert TrainConfig(subset=None, ema_decay=0.0).ema_decay == 0.0
    assert TrainConfig(warmup_steps=0, weight_decay=0.0, grad_clip=0.0).grad_clip == 0.0  # 0: no clipping
    assert VAERunConfig(kl_weight=0.0).kl_weight == 0.0


def test_configs_are_frozen():
    cfg = UNetConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.base_channels = 64  # type: ignore[misc]


def test_seed_defaults():
    """The reference defaults (the full profile): cosine, T = 1000, 32×32 pixels, latent UNet on 2×4×4."""
    d = DDPMRunConfig()
    assert (d.diffusion.timesteps, d.diffusion.schedule) == (1000, "cosine")
    assert (d.unet.in_channels, d.unet.image_size, d.unet.channel_mults) == (1, 32, (1, 2, 2))
    l = LDMRunConfig()
    assert (l.unet.in_channels, l.unet.image_size) == (2, 4)
    v = VAERunConfig()
    assert (v.vae.latent_channels, v.vae.latent_size) == (2, 4)
    assert (d.kind, v.kind, l.kind) == ("ddpm", "vae", "ldm")


@pytest.mark.parametrize("cfg", [DDPMRunConfig(), VAERunConfig(), LDMRunConfig(),
                                 profiles.SMOKE.ddpm, profiles.SMOKE.vae, profiles.SMOKE.ldm])
def test_dict_round_trip_through_json(cfg):
    data = json.loads(json.dumps(to_dict(cfg)))  # tuples become lists, as in a sidecar
    back = from_dict(type(cfg), data)
    assert back == cfg
    assert isinstance(back.train, TrainConfig)
    assert all(isinstance(getattr(back, f.name), type(getattr(cfg, f.name))) for f in dataclasses.fields(cfg))


def test_from_dict_restores_tuples():
    data = json.loads(json.dumps(to_dict(DDPMRunConfig())))
    assert isinstance(data["unet"]["channel_mults"], list)
    back = from_dict(DDPMRunConfig, data)
    assert back.unet.channel_mults == (1, 2, 2) and isinstance(back.unet.channel_mults, tuple)


def test_from_dict_partial_uses_defaults():
    back = from_dict(DDPMRunConfig, {"diffusion": {"timesteps": 50}})
    assert back.diffusion == DiffusionConfig(timesteps=50)
    assert back.unet == UNetConfig()


def test_from_dict_unknown_key_is_error():
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(DDPMRunConfig, {"unet": {"base_chanels": 8}})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(VAERunConfig, {"vae": {}, "beta": 1.0})


def test_from_dict_validates_and_rejects_non_dicts():
    with pytest.raises(ConfigError):
        from_dict(DDPMRunConfig, {"diffusion": {"timesteps": 1}})
    with pytest.raises(ConfigError, match="expected a dict"):
        from_dict(DDPMRunConfig, {"unet": [1, 2]})


# ----------------------------------------------------------------------------- profiles


def test_profiles_explicit_names():
    assert profiles.get_profile("smoke") is profiles.SMOKE
    assert profiles.get_profile("full") is profiles.FULL
    assert profiles.FULL.ddpm == DDPMRunConfig()
    with pytest.raises(ValueError, match="MNISTDIFF_PROFILE"):
        profiles.get_profile("medium")


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("MNISTDIFF_PROFILE", "full")
    assert profiles.profile_name() == "full"
    monkeypatch.setenv("MNISTDIFF_PROFILE", "smoke")
    assert profiles.get_profile().name == "smoke"
    assert profiles.profile_name("full") == "full"  # an explicit name wins
    monkeypatch.setenv("MNISTDIFF_PROFILE", "bogus")
    with pytest.raises(ValueError):
        profiles.profile_name()


def test_profile_default_without_variable(monkeypatch):
    monkeypatch.delenv("MNISTDIFF_PROFILE", raising=False)
    assert profiles.profile_name() == "book"  # the profile with committed checkpoints, on every machine


def test_smoke_profile_is_small_and_consistent():
    s = profiles.SMOKE
    assert s.ddpm.unet.base_channels < profiles.FULL.ddpm.unet.base_channels
    assert s.ddpm.diffusion.timesteps < 1000
    assert s.ldm.unet.in_channels == s.vae.vae.latent_channels
    assert s.ldm.unet.image_size == s.vae.vae.latent_size
    assert max(s.ddim_step_sweep) <= s.ddpm.diffusion.timesteps
    assert s.ddim_steps <= s.ddpm.diffusion.timesteps


def test_full_profile_latent_shapes_consistent():
    f = profiles.FULL
    assert f.ldm.unet.in_channels == f.vae.vae.latent_channels
    assert f.ldm.unet.image_size == f.vae.vae.latent_size
