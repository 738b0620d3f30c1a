"""The browser export (``mnistdiff.export``, issue 25) on a tiny distilled student and its tiny teacher: the ONNX
graphs run under onnxruntime and agree with PyTorch within 1e-4 on fixed inputs (∅ labels included);
``sampler.json`` holds each network's own constants; and the page's sampler written in Python on the exported files
alone (``onnx_sample``) reproduces the package's own samplers: the student's loop, and the teacher's guided DDIM
(η = 0) at w = 0, 1 and 2.5, from the same noise; and the pixel DDPM's DPM-Solver++(2M) SDE (``onnx_pixel_sample``,
the package's solver on the exported graph) draws the package's digits, on points that are Karras et al.'s σ (eq. 5,
closed form), from the noise ``pixel_noise`` gives the page."""

from __future__ import annotations

import json

import pytest
import torch

from mnistdiff.config import CLDMRunConfig, DDPMRunConfig, DiffusionConfig, UNetConfig, VAEConfig
from mnistdiff.ddim import ddim_timesteps
from mnistdiff.ddpm import EpsFromV
from mnistdiff.export import PIXEL_STEPS, check_export, export_student, onnx_pixel_sample, onnx_sample, pixel_noise
from mnistdiff.latent import LatentCodec
from mnistdiff.model import DiffusionModel
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.solvers import ddpm_path
from mnistdiff.unet import NULL_LABEL, UNet
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
                             meta={"weights_sha256": "x", "distillation": {
                                 "timesteps": TIMESTEPS, "guidance": 2.0, "teacher_weights_sha256": "t"}})
    teacher_cfg = CLDMRunConfig(unet=unet_cfg, diffusion=DiffusionConfig(timesteps=T, prediction="eps"))
    teacher_unet = UNet(unet_cfg).eval()
    with torch.no_grad():
        for p in teacher_unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    teacher = DiffusionModel(teacher_unet, sched, teacher_cfg, codec=codec, clip_range=(-CLIP, CLIP),
                             meta={"weights_sha256": "t"})
    out = tmp_path_factory.mktemp("export")
    return student, out, export_student(student, out, teacher, _pixel_model()), teacher


def _pixel_model(timesteps: int = T) -> DiffusionModel:
    """A tiny unconditional pixel ε-model, its weights perturbed so that its ε̂ depends on x and t."""
    cfg = DDPMRunConfig(unet=UNetConfig(in_channels=1, image_size=32, base_channels=8, channel_mults=(1, 2),
                                        num_res_blocks=1, attention_resolutions=(), num_heads=2),
                        diffusion=DiffusionConfig(timesteps=timesteps))
    torch.manual_seed(1)
    unet = UNet(cfg.unet).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DiffusionModel(unet, NoiseSchedule.from_config(cfg.diffusion), cfg, meta={"weights_sha256": "p"})


@pytest.fixture(scope="module")
def pixel(exported):
    return _pixel_model()


def test_the_graphs_agree_with_pytorch(exported, pixel):
    student, out, _, teacher = exported
    errors = check_export(student, out, teacher, pixel)
    assert set(errors) == {"student", "teacher", "decoder", "pixel"} and max(errors.values()) < 1e-4, errors


def test_sampler_json_holds_each_networks_constants(exported):
    student, out, paths, _ = exported
    constants = json.loads(paths["sampler"].read_text())
    abar = student.schedule.alphas_cumprod.double()
    s, t = constants["student"], constants["teacher"]
    assert s["timesteps"] == TIMESTEPS and s["clip"] == CLIP and constants["latent_shape"] == [2, 4, 4]
    assert s["alphas_cumprod"] == pytest.approx([float(abar[t]) for t in TIMESTEPS])
    assert s["guidance"] == 2.0 and constants["num_classes"] == 10 and s["prediction"] == "v"
    assert t["prediction"] == "eps" and t["alphas_cumprod"] == pytest.approx(abar.tolist()) and t["guidance"] == 2.0
    assert t["steps"] == {str(n): ddim_timesteps(T, n) for n in (4, 8, 16, 32)}  # 64 > T is left out
    files = (s["file"], t["file"], constants["decoder"]["file"])
    assert files == ("student.onnx.gz", "teacher.onnx.gz", "decoder.onnx.gz")
    assert constants["null_label"] == NULL_LABEL and s["weights_sha256"] == "x" and t["weights_sha256"] == "t"


def test_the_pages_sampler_on_the_exported_files_matches_pytorch(exported):
    student, out, _, _ = exported
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


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
def test_the_pages_teacher_sampler_matches_the_packages_guided_ddim(exported, w):
    """The teacher on the page is the package's DDIM (η = 0) with classifier-free guidance, from the same noise."""
    _, out, _, teacher = exported
    y = torch.tensor([0, 6, 9])
    images, _ = teacher.sample(3, sampler="ddim", steps=8, eta=0.0, labels=y, guidance=w, seed=5)
    z = torch.randn((3, 2, 4, 4), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(onnx_sample(out, z, y, teacher_steps=8, guidance=w), images, rtol=0, atol=1e-4)


def test_a_teacher_that_does_not_fit_is_refused(exported, tmp_path):
    student, _, _, teacher = exported
    with pytest.raises(ValueError, match="must be a class-conditional ε-prediction"):
        export_student(student, tmp_path, student)
    other = DiffusionModel(teacher.network, teacher.schedule, teacher.config, codec=teacher.codec,
                           clip_range=teacher.clip_range, meta={"weights_sha256": "another"})
    with pytest.raises(ValueError, match="not distilled from this teacher"):
        export_student(student, tmp_path / "other", other)
    assert not (tmp_path / "other").exists()  # refused before anything is written


def test_only_a_distilled_latent_student_is_exported(tmp_path):
    cfg = CLDMRunConfig(unet=UNetConfig(in_channels=2, image_size=4, base_channels=8, channel_mults=(1,),
                                        num_res_blocks=1, attention_resolutions=(), num_heads=2, num_classes=10))
    teacher = DiffusionModel(UNet(cfg.unet), NoiseSchedule.make("cosine", 10), cfg)
    with pytest.raises(ValueError, match="takes a distilled class-conditional latent model"):
        export_student(teacher, tmp_path)


def test_the_package_samples_the_student_as_the_page_will(exported):
    """``DiffusionModel.sample`` of the student draws what ``onnx_sample`` draws from the same noise: a v-model's ε̂
    is formed in float64 from the ᾱ the sampler reads, so x̂_0 = √ᾱ·z − √(1 − ᾱ)·v̂ survives even where ᾱ ≈ 0."""
    student, out, _, _ = exported
    y = torch.tensor([2, 5, 8])
    images, _ = student.sample(3, labels=y, seed=11)
    z = torch.randn((3, 2, 4, 4), generator=torch.Generator().manual_seed(11))  # the sampler's first draw
    torch.testing.assert_close(onnx_sample(out, z, y), images, rtol=0, atol=1e-4)


def test_the_pixel_models_points_are_karras_sigmas(exported):
    """Each step count's points lie on the variance-preserving path (a² + b² = 1) at σ = b/a of Karras et al.'s
    eq. 5 from σ_max = 20 down to σ_min = 0.2 (or the schedule's first σ, if larger), then the data (a = 1, b = 0)."""
    _, out, _, _ = exported
    c = json.loads((out / "sampler.json").read_text())["pixel"]
    abar0 = float(_pixel_model().schedule.alphas_cumprod.double()[0])
    lo, hi = max(0.2, ((1 - abar0) / abar0) ** 0.5) ** (1 / 7), 20.0 ** (1 / 7)  # the first σ: √((1 − ᾱ_0)/ᾱ_0)
    assert sorted(map(int, c["steps"])) == list(PIXEL_STEPS) and c["solver"] == "dpmpp_2m_sde" and c["clip"] == 1.0
    for n, pts in c["steps"].items():
        n = int(n)
        want = [(hi + i / (n - 1) * (lo - hi)) ** 7 for i in range(n)]
        a, b = torch.tensor(pts["a"], dtype=torch.float64), torch.tensor(pts["b"], dtype=torch.float64)
        assert len(pts["times"]) == n and (a[-1], b[-1]) == (1.0, 0.0)
        torch.testing.assert_close(a[:-1] ** 2 + b[:-1] ** 2, torch.ones(n, dtype=torch.float64))
        torch.testing.assert_close(b[:-1] / a[:-1], torch.tensor(want, dtype=torch.float64))
        assert all(t0 > t1 for t0, t1 in zip(pts["times"], pts["times"][1:]))


@pytest.mark.parametrize("steps", [4, 10])
def test_the_pages_pixel_sampler_matches_the_packages_dpm_solver_sde(exported, pixel, steps):
    """On the exported graph and the points of ``sampler.json``, the page's sampler gives the package's digits."""
    _, out, _, _ = exported
    images, _ = pixel.sample(3, sampler="dpmpp_2m_sde", steps=steps, seed=4)
    got = onnx_pixel_sample(out, 3, steps, seed=4)
    torch.testing.assert_close(got, images, rtol=0, atol=1e-4)
    assert (got - onnx_pixel_sample(out, 3, steps, seed=5)).abs().max() > 1e-2  # the seed's noise is used


def test_pixel_noise_is_the_noise_the_solver_draws(exported):
    """``pixel_noise`` (what the browser test feeds the page) is x_T and then each step's z in the solver's order:
    with x̂_0 = 0 the first step is x = (b_1/b_0)·e^{−h}·x_T + b_1·√(1 − e^{−2h})·z_0 exactly."""
    import math

    from mnistdiff.flows import PathPoint
    from mnistdiff.solvers import dpm_solver_pp_2m_sde

    _, out, _, _ = exported
    pts = json.loads((out / "sampler.json").read_text())["pixel"]["steps"]["4"]
    points = [PathPoint(a, b, 0.0, 0.0) for a, b in zip(pts["a"], pts["b"])]
    seen = {}
    g = torch.Generator().manual_seed(9)
    x_start = torch.randn((2, 1, 32, 32), generator=g)
    dpm_solver_pp_2m_sde(lambda x, i: torch.zeros_like(x), points, x_start, g, lambda i, x: seen.setdefault(i, x))
    x_T, z = pixel_noise(2, 4, seed=9)
    (a0, b0), (a1, b1) = (points[0].a, points[0].b), (points[1].a, points[1].b)
    h = math.log(a1 / b1) - math.log(a0 / b0)
    want = b1 / b0 * math.exp(-h) * x_T.double() + b1 * math.sqrt(-math.expm1(-2 * h)) * z[0].double()
    assert torch.equal(x_T, x_start) and z.shape == (3, 2, 1, 32, 32)
    torch.testing.assert_close(seen[1], want, rtol=0, atol=1e-12)


def test_only_a_pixel_ddpm_is_exported_as_the_pixel_model(exported, tmp_path):
    student, _, _, teacher = exported
    with pytest.raises(ValueError, match="unconditional ε-prediction pixel DDPM"):
        export_student(student, tmp_path / "p", None, teacher)
    assert not (tmp_path / "p").exists()


def test_the_books_generator_runs_the_committed_models():
    """``book/_assets/generator/models`` is the export of the committed book student and its teacher: each graph's
    hash is the one ``sampler.json`` records, and the weights it records are those of the model files. (After
    retraining, re-export: ``python -m mnistdiff export checkpoints/book/vae.safetensors
    checkpoints/book/cldm_distilled.safetensors --teacher checkpoints/book/cldm.safetensors --pixel
    checkpoints/book/ddpm.safetensors --out book/_assets/generator/models``.)"""
    import hashlib
    from pathlib import Path

    from mnistdiff.modelfile import read_model_meta

    repo = Path(__file__).resolve().parents[1]
    models, book = repo / "book" / "_assets" / "generator" / "models", repo / "checkpoints" / "book"
    constants = json.loads((models / "sampler.json").read_text())
    for name, model_file in (("student", "cldm_distilled"), ("teacher", "cldm"), ("pixel", "ddpm")):
        want = read_model_meta(book / f"{model_file}.safetensors")["weights_sha256"]
        assert constants[name]["weights_sha256"] == want, f"the page's {name} is not {model_file}: re-export"
    for name in ("student", "teacher", "decoder", "pixel"):
        entry = constants[name]
        assert hashlib.sha256((models / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], name
    assert read_model_meta(book / "cldm_distilled.safetensors")["vae_weights_sha256"] == read_model_meta(
        book / "vae.safetensors")["weights_sha256"]
    # and the page's pixel points are the package's own: Karras σ from KARRAS_SIGMA_MAX to KARRAS_SIGMA_MIN today
    pixel = DiffusionModel.load(book / "ddpm.safetensors")
    for n, pts in constants["pixel"]["steps"].items():
        points, _, times = ddpm_path(pixel.network, pixel.schedule, int(n), "karras", pixel.clip_range,
                                     pixel.karras_sigma_max)
        assert pts["times"] == times and pts["b"] == [float(p.b) for p in points], f"{n} steps: re-export"
