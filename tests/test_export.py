"""The browser export (``mnistdiff.export``, issue 25) on a tiny distilled student: the ONNX graphs run under
onnxruntime and agree with PyTorch within 1e-4 on fixed inputs; ``sampler.json`` holds the student's own constants;
and the page's sampler written in Python on the exported files alone (``onnx_sample``) reproduces the same loop
run in PyTorch (float64 DDIM from v̂, the student's timesteps)."""

from __future__ import annotations

import json

import pytest
import torch

from mnistdiff.config import CLDMRunConfig, DiffusionConfig, UNetConfig, VAEConfig
from mnistdiff.ddpm import EpsFromV
from mnistdiff.export import check_export, export_student, onnx_sample
from mnistdiff.latent import LatentCodec
from mnistdiff.model import DiffusionModel
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.unet import UNet
from mnistdiff.vae import VAE

T, TIMESTEPS, CLIP = 50, [49, 30, 12], 2.5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    unet_cfg = UNetConfig(in_channels=2, image_size=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                          attention_resolutions=(2,), num_heads=2, num_classes=10)
    cfg = CLDMRunConfig(unet=unet_cfg, diffusion=DiffusionConfig(timesteps=T, prediction="v"))
    unet = UNet(unet_cfg).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sched = NoiseSchedule.from_config(cfg.diffusion)
    codec = LatentCodec(VAE(VAEConfig(base_channels=8)).eval(), 1.7)
    student = DiffusionModel(EpsFromV(unet, sched), sched, cfg, codec=codec, clip_range=(-CLIP, CLIP),
                             meta={"distillation": {"timesteps": TIMESTEPS, "guidance": 2.0}, "weights_sha256": "x"})
    out = tmp_path_factory.mktemp("export")
    return student, out, export_student(student, out)


def test_the_graphs_agree_with_pytorch(exported):
    student, out, _ = exported
    errors = check_export(student, out)
    assert set(errors) == {"unet", "decoder"} and max(errors.values()) < 1e-4, errors


def test_sampler_json_holds_the_students_constants(exported):
    student, out, paths = exported
    constants = json.loads(paths["sampler"].read_text())
    abar = student.schedule.alphas_cumprod.double()
    assert constants["timesteps"] == TIMESTEPS and constants["clip"] == CLIP and constants["latent_shape"] == [2, 4, 4]
    assert constants["alphas_cumprod"] == pytest.approx([float(abar[t]) for t in TIMESTEPS])
    assert constants["guidance"] == 2.0 and constants["num_classes"] == 10 and constants["prediction"] == "v"
    assert {f["name"] for f in constants["files"].values()} == {"unet.onnx", "decoder.onnx"}


def test_the_pages_sampler_on_the_exported_files_matches_pytorch(exported):
    student, out, _ = exported
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(4, 2, 4, 4, generator=g), torch.tensor([1, 4, 7, 9])
    abar = [float(a) for a in student.schedule.alphas_cumprod.double()[TIMESTEPS]] + [1.0]
    x = z.double()
    with torch.no_grad():
        for i, t in enumerate(TIMESTEPS):
            v = student.network(x.float(), torch.full((4,), t), y).double()
            x0 = (abar[i] ** 0.5 * x - (1 - abar[i]) ** 0.5 * v).clamp(-CLIP, CLIP)
            eps = (x - abar[i] ** 0.5 * x0) / (1 - abar[i]) ** 0.5
            x = abar[i + 1] ** 0.5 * x0 + (1 - abar[i + 1]) ** 0.5 * eps
        want = student.codec.decode(x.float())
    torch.testing.assert_close(onnx_sample(out, z, y), want, rtol=0, atol=1e-4)


def test_only_a_distilled_latent_student_is_exported(tmp_path):
    cfg = CLDMRunConfig(unet=UNetConfig(in_channels=2, image_size=4, base_channels=8, channel_mults=(1,),
                                        num_res_blocks=1, attention_resolutions=(), num_heads=2, num_classes=10))
    teacher = DiffusionModel(UNet(cfg.unet), NoiseSchedule.make("cosine", 10), cfg)
    with pytest.raises(ValueError, match="takes a distilled class-conditional latent model"):
        export_student(teacher, tmp_path)


def test_the_package_samples_the_student_as_the_page_will(exported):
    """``DiffusionModel.sample`` of the student draws what ``onnx_sample`` draws from the same noise: a v-model's ε̂
    is formed in float64 from the ᾱ the sampler reads, so x̂_0 = √ᾱ·z − √(1 − ᾱ)·v̂ survives even where ᾱ ≈ 0."""
    student, out, _ = exported
    y = torch.tensor([2, 5, 8])
    images, _ = student.sample(3, labels=y, seed=11)
    z = torch.randn((3, 2, 4, 4), generator=torch.Generator().manual_seed(11))  # the sampler's first draw
    torch.testing.assert_close(onnx_sample(out, z, y), images, rtol=0, atol=1e-4)
