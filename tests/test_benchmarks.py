"""The throughput benchmark (issue 6) runs on a CPU at tiny sizes and writes valid JSON.

Not a timed test: the figures a CPU gives mean nothing. It runs ``benchmarks/bench_throughput.py
--quick --device cpu`` once in a subprocess (smoke-sized models, a few steps, 2 images; well under a
minute) and checks that the JSON holds every planned figure, each with the device's name, that the
figures this CPU can measure were measured, and that the rest say why they were skipped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_throughput.py"

TRAIN_MODES = ("fp32_eager", "fp32_cl_eager", "bf16_cl_eager", "bf16_cl_compile")
SAMPLE_MODES = ("fp32_eager", "fp32_cl_eager", "bf16_cl_eager", "bf16_cl_compile", "bf16_cl_cudagraphs")


def _no_nan(value: str) -> float:
    raise ValueError(f"the JSON holds {value}, which is not valid JSON")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "nested" / "benchmark.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert out.is_file(), "the benchmark wrote no JSON"
    doc = json.loads(out.read_text(), parse_constant=_no_nan)
    return doc, proc.stdout


def test_json_names_the_device_at_the_top_and_on_every_figure(run):
    doc, _ = run
    assert doc["device"] == "cpu"
    assert doc["device_name"].startswith("CPU")
    assert doc["profile"] == "smoke" and doc["quick"] is True
    assert doc["results"], "no figures"
    for e in doc["results"]:
        assert e["device_name"] == doc["device_name"], e
        assert e["device"] == "cpu", e


def test_every_mode_of_both_models_is_planned(run):
    doc, _ = run
    names = {e["name"] for e in doc["results"]}
    s = doc["settings"]
    for model in ("ours", "diffusers"):
        for mode in TRAIN_MODES:
            bs = s["base_batch"] if mode == "fp32_eager" else s["large_batch"]
            assert f"train/{model}/{mode}/b{bs}/package" in names
        for mode in SAMPLE_MODES:
            assert f"sample/{model}/{mode}/ddim50/generate" in names
    assert "ema/ours/package" in names
    assert {"peak/matmul/fp32", "peak/matmul/bf16"} <= names


def test_every_figure_is_measured_or_skipped_with_a_reason(run):
    doc, _ = run
    for e in doc["results"]:
        assert e["status"] in ("ok", "skipped"), e
        if e["status"] == "skipped":
            assert e["reason"], e
        elif e["kind"] in ("train", "sample"):
            ips = e["images_per_second"]
            assert isinstance(ips, float) and math.isfinite(ips) and ips > 0, e
            assert e["timed_seconds"] > 0 and e["compile_seconds"] >= 0, e
        elif e["kind"] == "ema":
            assert e["ms_per_update"] > 0 and e["tensors"] > 0, e
        elif e["kind"] == "peak":
            assert e["tflops"] > 0 and e["reps"] >= 3 and e["timed_seconds"] > 0, e


def test_cpu_measures_the_eager_modes_of_our_unet_and_skips_compiled_ones(run):
    doc, _ = run
    by_name = {e["name"]: e for e in doc["results"]}
    s = doc["settings"]
    for name in (f"train/ours/fp32_eager/b{s['base_batch']}/package",
                 f"train/ours/fp32_cl_eager/b{s['large_batch']}/package",
                 f"train/ours/bf16_cl_eager/b{s['large_batch']}/package",
                 "sample/ours/fp32_eager/ddim50/generate", "sample/ours/fp32_cl_eager/ddim50/generate",
                 "sample/ours/bf16_cl_eager/ddim50/generate",
                 "ema/ours/package"):
        assert by_name[name]["status"] == "ok", by_name[name]
    for e in doc["results"]:
        if e.get("mode") in ("bf16_cl_compile", "bf16_cl_cudagraphs"):
            assert e["status"] == "skipped" and ("CUDA" in e["reason"] or "diffusers" in e["reason"]), e
    assert by_name["train/ours/fp32_eager/b8/package"]["batch_size"] == 8
    assert by_name["sample/ours/fp32_eager/ddim50/generate"]["num_images"] == 2


def test_diffusers_is_measured_when_installed_and_skipped_with_the_install_hint_otherwise(run):
    doc, _ = run
    try:
        import diffusers  # noqa: F401
        installed = True
    except Exception:  # noqa: BLE001
        installed = False
    eager = [e for e in doc["results"] if e["model"] == "diffusers" and e["mode"] in ("fp32_eager", "bf16_cl_eager")]
    assert eager
    for e in eager:
        if installed:
            assert e["status"] == "ok", e
        else:
            assert e["status"] == "skipped" and "pip install" in e["reason"], e
    if installed:
        # the smoke twin of the course configuration is exactly as large as our smoke UNet
        from mnistdiff.course.profiles import SMOKE
        from mnistdiff.unet import UNet, count_parameters

        smoke = count_parameters(UNet(SMOKE.ddpm.unet))
        assert doc["models"]["diffusers"]["parameters"] == doc["models"]["ours"]["parameters"] == smoke


def test_summary_reference_and_targets(run):
    doc, _ = run
    summ = doc["summary"]
    assert summ["device_name"] == doc["device_name"]
    assert summ["failed"] == 0 and summ["measured"] + summ["skipped"] == summ["planned"] == len(doc["results"])
    assert summ["best_train_ours_images_per_second"] > 0 and summ["best_sample_ours_images_per_second"] > 0
    assert summ["meets_train_target"] is None  # targets are judged on a GPU at full sizes only
    ref = doc["reference"]
    assert ref["train_fp32_eager_b128_images_per_second"] == 2016
    assert ref["train_bf16_cl_compile_b512_images_per_second"] == 9890
    assert doc["targets"]["train_images_per_second"] == 30_000
    assert doc["targets"]["sample_ddim50_images_per_second"] == 5_000
    assert doc["models"]["ours"]["class"] == "mnistdiff.unet.UNet"
    assert doc["models"]["ours"]["forward_gflops_per_image"] > 0
    # the best step's share of the matmul rate of its dtype: its achieved TFLOP/s over that peak entry's
    peaks = {e["dtype"]: e["tflops"] for e in doc["results"] if e["kind"] == "peak"}
    best = next(e for e in doc["results"] if e["name"] == summ["best_train_ours_name"])
    peak = peaks["bf16" if best["mode"].startswith("bf16") else "fp32"]
    assert summ["best_train_ours_share_of_peak"] == pytest.approx(best["achieved_tflops"] / peak, abs=1e-3)


def test_every_printed_figure_carries_the_device_name(run):
    doc, stdout = run
    name = doc["device_name"]
    for e in doc["results"]:
        lines = [line for line in stdout.splitlines() if line.startswith(f"[{name}] {e['name']}:")]
        assert lines, f"no printed line for {e['name']}"


def test_the_book_can_render_the_json(run):
    from mnistdiff_book.tables import render_json  # book/_ext (pytest pythonpath)

    doc, _ = run
    md = render_json(doc, "benchmark")
    assert "images_per_second" in md and doc["device_name"] in md


def test_time_to_quality_target_needs_every_space_and_class_balance():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ttq", REPO / "benchmarks" / "time_to_quality.py")
    ttq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ttq)
    floor = {"fid": 1.0, "fid_resnet": 0.5}
    row = {"fid": 1.9, "precision": 0.81, "recall": 0.85, "fid_resnet": 0.99, "precision_resnet": 0.80,
           "recall_resnet": 0.90, "class_max_deviation": 0.026}
    assert ttq.meets(row, floor, 2.0)
    for key, bad in [("fid_resnet", 1.01), ("precision", 0.79), ("recall_resnet", 0.799),
                     ("class_max_deviation", 0.032)]:
        assert not ttq.meets({**row, key: bad}, floor, 2.0), key


def test_time_to_quality_pools_seeds_as_the_fid_of_the_mean_and_every_seeds_precision():
    """Pooled over seeds: FIDs and floors averaged per space (by hand below), precision and recall the lowest seed's,
    class balance the worst seed's; a snapshot met at one seed alone is not met pooled. Files of another run, or the
    same seed twice, are refused."""
    ttq = _script("time_to_quality")

    def doc(seed, floor, fid, precision, run="r"):
        row = {"snapshot": "epoch_010.safetensors", "training_seconds": 600.0, "fid": fid, "fid_resnet": fid / 2,
               "precision": precision, "recall": 0.9, "precision_resnet": 0.85, "recall_resnet": 0.88,
               "class_max_deviation": 0.01 + seed / 100}
        return {"run": run, "n": 4, "sampler": "default", "steps": None, "eta": 1.0, "seed": seed,
                "floor": {"fid": floor, "fid_resnet": floor / 2}, "snapshots": [row]}

    low_floor, high_floor = doc(1, 0.18, 0.5, 0.81), doc(0, 0.3, 0.5, 0.83)
    assert ttq.meets(high_floor["snapshots"][0], high_floor["floor"], 2.0)  # 0.5 / 0.3 = 1.67x at this seed alone
    floor, (row,) = ttq.pooled([high_floor, low_floor])
    assert floor == pytest.approx({"fid": 0.24, "fid_resnet": 0.12})
    assert row["fid"] == 0.5 and row["precision"] == 0.81 and row["class_max_deviation"] == 0.02
    assert not ttq.meets(row, floor, 2.0)  # 0.5 / 0.24 = 2.08x in each space
    assert ttq.meets(row, floor, 2.1)
    assert not ttq.meets(ttq.pooled([high_floor, doc(1, 0.18, 0.3, 0.79)])[1][0], floor, 3.0)  # seed 1's precision
    for bad in ([high_floor, doc(1, 0.2, 0.5, 0.81, run="other")], [high_floor, doc(0, 0.2, 0.5, 0.81)]):
        with pytest.raises(ValueError):
            ttq.pooled(bad)


def test_time_to_quality_scores_a_vae_snapshot_by_its_reconstructions_of_the_floor_digits(tmp_path):
    import importlib.util

    import torch

    from mnistdiff.config import VAEConfig, VAERunConfig
    from mnistdiff.data import load_mnist
    from mnistdiff.modelfile import save_vae
    from mnistdiff.vae import VAE

    spec = importlib.util.spec_from_file_location("ttq", REPO / "benchmarks" / "time_to_quality.py")
    ttq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ttq)
    torch.manual_seed(0)
    cfg = VAERunConfig(vae=VAEConfig(base_channels=8))
    vae = VAE(cfg.vae).eval()
    path = save_vae(vae, tmp_path / "epoch_001.safetensors", cfg, seconds=12.5, epoch=1)
    images, meta = ttq.draw(path, 6, steps=50, device="cpu")
    real = load_mnist("train").subset(6, seed=0).images  # the digits real_floor(6, seed=0) scores
    torch.testing.assert_close(images, vae.reconstruct(real))
    assert meta["seconds"] == 12.5 and meta["epoch"] == 1


def test_time_to_quality_draws_with_ddim_or_each_models_default_sampler(tmp_path):
    """``--sampler default`` draws what ``DiffusionModel.sample`` draws with nothing said (the model's own sampler and
    steps); ``ddim`` draws DDIM at the steps asked, with the CLI's η."""
    import torch

    from mnistdiff.config import DEFAULT_ETA
    from mnistdiff.model import DiffusionModel

    ttq = _script("time_to_quality")
    path = _tiny_model(tmp_path, "ddpm")
    model = DiffusionModel.load(path)
    assert model.sampling_defaults()["sampler"] != "ddim"  # so the two draws below differ
    default, _ = ttq.draw(path, 4, steps=None, device="cpu", sampler="default")
    assert torch.equal(default, model.sample(4, seed=0).images)
    ddim, _ = ttq.draw(path, 4, steps=3, device="cpu")
    assert torch.equal(ddim, model.sample(4, sampler="ddim", steps=3, eta=DEFAULT_ETA, seed=0).images)
    assert not torch.equal(ddim, default)


def test_time_to_quality_autoguides_and_counts_the_guides_training(tmp_path):
    """``--guide``: each snapshot draws what ``DiffusionModel.sample(guide=…)`` draws, and its training time is the
    snapshot's plus the guide's."""
    import torch

    from mnistdiff.model import DiffusionModel

    ttq = _script("time_to_quality")
    path = _tiny_model(tmp_path, "ddpm")
    model = DiffusionModel.load(path)
    worse = DiffusionModel.load(path)
    with torch.no_grad():
        for p in worse.network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    guide = DiffusionModel.load(worse.save(tmp_path / "guide.safetensors", seconds=2.0))
    guided, _ = ttq.draw(path, 4, steps=3, device="cpu", guide=guide, guidance=2.0)
    assert torch.equal(guided, model.sample(4, sampler="ddim", steps=3, seed=0, guide=guide, guidance=2.0).images)
    assert not torch.equal(guided, ttq.draw(path, 4, steps=3, device="cpu")[0])
    assert ttq.trained({"training_seconds": 3.0, "guide_seconds": 2.0}) == 5.0
    assert ttq.trained({"training_seconds": 3.0}) == 3.0


def test_time_to_quality_an_own_snapshot_as_guide_adds_no_seconds(tmp_path):
    """A guide that is one of the run's own snapshots (the same weights) adds no seconds to the later snapshots' (they
    hold its training already) and guides only those; a guide trained apart adds its seconds to every snapshot's."""
    import json

    import torch

    from mnistdiff.model import DiffusionModel
    from mnistdiff.modelfile import read_model_meta

    ttq = _script("time_to_quality")
    model = DiffusionModel.load(_tiny_model(tmp_path, "ddpm"))
    early = model.save(tmp_path / "run" / "epoch_001.safetensors", seconds=2.0)
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(0.05)
    later = model.save(tmp_path / "run" / "epoch_002.safetensors", seconds=4.0)
    with torch.no_grad():
        for p in model.network.parameters():
            p.sub_(0.1)
    apart = model.save(tmp_path / "apart.safetensors", seconds=3.0)  # trained apart: other weights
    assert ttq.own_snapshot(DiffusionModel.load(early), [read_model_meta(early), read_model_meta(later)])
    assert not ttq.own_snapshot(DiffusionModel.load(early), [read_model_meta(later)])
    for guide, scored, seconds in ((early, ["epoch_002.safetensors"], [4.0]),
                                   (apart, ["epoch_001.safetensors", "epoch_002.safetensors"], [5.0, 7.0])):
        out = tmp_path / f"{guide.stem}.json"
        ttq.main([str(tmp_path / "run"), "--n", "4", "--steps", "2", "--guide", str(guide), "--out", str(out)])
        doc = json.loads(out.read_text())
        assert [r["snapshot"] for r in doc["snapshots"]] == scored
        assert [ttq.trained(r) for r in doc["snapshots"]] == seconds
        assert doc["guide"].get("own_snapshot", False) == (guide == early)


def test_time_to_quality_scores_only_the_snapshots_named(tmp_path, capsys):
    """``--snapshots``: only the named snapshots are drawn and scored (with or without the suffix); a name the run
    does not hold is refused before any drawing, with the names it does hold."""
    import json

    import torch

    from mnistdiff.model import DiffusionModel

    ttq = _script("time_to_quality")
    model = DiffusionModel.load(_tiny_model(tmp_path, "ddpm"))
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for p in model.network.parameters():
                p.add_(0.01)
        model.save(tmp_path / "run" / f"epoch_{epoch:03d}.safetensors", seconds=float(epoch))
    out = tmp_path / "some.json"
    ttq.main([str(tmp_path / "run"), "--n", "4", "--steps", "2", "--snapshots", "epoch_003", "epoch_001.safetensors",
              "--out", str(out)])
    assert [r["snapshot"] for r in json.loads(out.read_text())["snapshots"]] == ["epoch_001.safetensors",
                                                                                "epoch_003.safetensors"]
    with pytest.raises(SystemExit) as stop:
        ttq.main([str(tmp_path / "run"), "--n", "4", "--snapshots", "epoch_009", "--out", str(tmp_path / "no.json")])
    assert stop.value.code == 2 and not (tmp_path / "no.json").exists()
    assert "no snapshot epoch_009" in capsys.readouterr().err


def test_time_to_quality_chooses_the_weight_by_the_rule_fixed_before_the_draws():
    """``chosen_weight``: among files at one held-out seed, the weight meeting precision and recall ≥ 0.80 in both
    spaces with the smallest worse-space FID ratio (hand values below); none meeting: the highest lowest precision;
    files at two seeds, a repeated weight or a missing snapshot are refused."""
    ttq = _script("time_to_quality")
    floor = {"fid": 0.2, "fid_resnet": 0.1}

    def doc(w, fid, fid_r, p, p_r, seed=10):
        row = {"snapshot": "epoch_008.safetensors", "fid": fid, "fid_resnet": fid_r, "precision": p,
               "precision_resnet": p_r, "recall": 0.9, "recall_resnet": 0.9,
               "class_max_deviation": 0.05}  # outside ±3 points: the rule weighs precision and recall only
        return {"seed": seed, "guide": {"guidance": w}, "floor": floor, "snapshots": [row]}

    a = doc(1.5, 0.30, 0.12, 0.79, 0.85)  # the best ratios (1.5×, 1.2×) but precision 0.79
    b = doc(2.0, 0.34, 0.20, 0.81, 0.82)  # meets P and R; worse space 2.0×
    c = doc(2.5, 0.36, 0.19, 0.83, 0.84)  # meets P and R; worse space 1.9×: chosen
    assert ttq.chosen_weight([a, b, c], "epoch_008") == 2.5
    assert ttq.chosen_weight([a, b], "epoch_008.safetensors") == 2.0
    assert ttq.chosen_weight([a, doc(3.0, 0.3, 0.1, 0.70, 0.95)], "epoch_008") == 1.5  # lowest P 0.79 > 0.70
    for bad, snap in (([a, doc(2.0, 0.3, 0.1, 0.8, 0.8, seed=3)], "epoch_008"), ([a, a], "epoch_008"),
                      ([a, b], "epoch_010")):
        with pytest.raises(ValueError):
            ttq.chosen_weight(bad, snap)


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_model(tmp_path, kind: str):
    import torch

    from mnistdiff.config import DDPMRunConfig, DiffusionConfig, FlowRunConfig, UNetConfig
    from mnistdiff.model import DiffusionModel
    from mnistdiff.schedules import NoiseSchedule
    from mnistdiff.unet import UNet

    torch.manual_seed(0)
    unet_cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                          num_heads=2)
    if kind == "flow":
        cfg, sched = FlowRunConfig(unet=unet_cfg), None
    else:
        cfg = DDPMRunConfig(unet=unet_cfg, diffusion=DiffusionConfig(timesteps=20))
        sched = NoiseSchedule.from_config(cfg.diffusion)
    return DiffusionModel(UNet(unet_cfg).eval(), sched, cfg).save(tmp_path / f"{kind}.safetensors", seconds=3.0)


def _tiny_cldm(tmp_path) -> tuple:
    """A tiny class-conditional latent model and the VAE it names, as two model files (weights perturbed so that
    the label changes ε̂): what the tests can build in a second, unlike the smoke profile's trained pair."""
    import torch

    from mnistdiff.config import CLDMRunConfig, DiffusionConfig, UNetConfig, VAEConfig, VAERunConfig
    from mnistdiff.latent import LatentCodec
    from mnistdiff.model import DiffusionModel
    from mnistdiff.modelfile import load_vae, save_vae
    from mnistdiff.schedules import NoiseSchedule
    from mnistdiff.unet import UNet
    from mnistdiff.vae import VAE

    torch.manual_seed(0)
    vae_cfg = VAERunConfig(vae=VAEConfig(base_channels=8))
    vae = load_vae(save_vae(VAE(vae_cfg.vae).eval(), tmp_path / "vae.safetensors", vae_cfg, seconds=1.0))
    unet_cfg = UNetConfig(in_channels=2, image_size=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                          attention_resolutions=(), num_heads=2, num_classes=10)
    cfg = CLDMRunConfig(unet=unet_cfg, diffusion=DiffusionConfig(timesteps=20))
    unet = UNet(unet_cfg).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sched = NoiseSchedule.from_config(cfg.diffusion)
    model = DiffusionModel(unet, sched, cfg, codec=LatentCodec(vae, 1.0), clip_range=(-3.0, 3.0),
                           meta={"vae_weights_sha256": vae.meta["weights_sha256"], "latent_scale": 1.0,
                                 "latent_clip": 3.0})
    return model.save(tmp_path / "cldm.safetensors", seconds=1.0), tmp_path / "vae.safetensors"


def test_nfe_sweep_plans_each_sampler_at_the_calls_it_can_make(tmp_path):
    from mnistdiff.config import DEFAULT_ETA
    from mnistdiff.model import DiffusionModel

    sweep = _script("nfe_sweep")
    flow = DiffusionModel.load(_tiny_model(tmp_path, "flow"))
    ddpm = DiffusionModel.load(_tiny_model(tmp_path, "ddpm"))
    # a flow's Heun makes 2·steps − 1 calls (Euler's last step): 2 steps (3 calls) at both 3 and 4, listed once
    # (a flow's DPM-Solver++ on Karras σ only: the spacing's comparison is chapter 9's, on an ε-network)
    assert [(c["sampler"], c["spacing"], c["steps"], c["nfe"]) for c in sweep.configurations(flow, [3, 4])] == [
        ("dpmpp_2m_sde", "karras", 3, 3), ("euler", None, 3, 3), ("heun", None, 2, 3), ("dpmpp_2m", "karras", 3, 3),
        ("dpmpp_2m_sde", "karras", 4, 4), ("euler", None, 4, 4), ("dpmpp_2m", "karras", 4, 4)]
    only_heun = sweep.configurations(flow, [3, 4, 5], ["heun"])  # --samplers heun
    assert [(c["sampler"], c["nfe"]) for c in only_heun] == [("heun", 3), ("heun", 5)]
    plan = sweep.configurations(ddpm, [3, 4])  # EDM's Heun: 2·steps − 1 calls, so 2 steps (3 calls) for both
    # DPM-Solver++ and its SDE twin on Karras σ (the default) and on DDIM's timesteps; EDM's Heun on Karras σ only
    assert [(c["sampler"], c["eta"], c["spacing"], c["steps"], c["nfe"]) for c in plan] == [
        ("dpmpp_2m_sde", None, "karras", 3, 3), ("dpmpp_2m_sde", None, "linspace", 3, 3),
        ("ddim", 0.0, None, 3, 3), ("ddim", DEFAULT_ETA, None, 3, 3), ("dpmpp_2m", None, "karras", 3, 3),
        ("dpmpp_2m", None, "linspace", 3, 3), ("heun", None, "karras", 2, 3),
        ("dpmpp_2m_sde", None, "karras", 4, 4), ("dpmpp_2m_sde", None, "linspace", 4, 4),
        ("ddim", 0.0, None, 4, 4), ("ddim", DEFAULT_ETA, None, 4, 4), ("dpmpp_2m", None, "karras", 4, 4),
        ("dpmpp_2m", None, "linspace", 4, 4)]


def test_nfe_sweep_scores_every_configuration_and_a_rerun_reuses_them(tmp_path, capsys):
    sweep = _script("nfe_sweep")
    out = tmp_path / "sweep.json"
    argv = ["--model", str(_tiny_model(tmp_path, "flow")), "--model", str(_tiny_model(tmp_path, "ddpm")),
            "--n", "8", "--nfe", "2", "4", "--precision", "fp32", "--out", str(out)]
    assert sweep.main(argv) == 0
    doc = json.loads(out.read_text())
    keys = [r["key"] for r in doc["rows"]]
    # EDM's Heun: 1 step (1 call) within 2, 2 steps (3 calls) within 4
    assert sorted(keys) == sorted([f"{m}:{sampler}:{nfe}" for nfe in (2, 4) for m, sampler in (
        ("flow", "euler"), ("flow", "dpmpp_2m-karras"), ("flow", "dpmpp_2m_sde-karras"), ("ddpm", "ddim-eta0"),
        ("ddpm", "ddim-eta1"),
        ("ddpm", "dpmpp_2m-karras"), ("ddpm", "dpmpp_2m-linspace"), ("ddpm", "dpmpp_2m_sde-karras"),
        ("ddpm", "dpmpp_2m_sde-linspace"))]
        + ["flow:heun:1", "flow:heun:2", "ddpm:heun-karras:1", "ddpm:heun-karras:2"])
    for r in doc["rows"]:
        assert "samples_per_second" not in r and math.isfinite(r["fid"]) and math.isfinite(r["fid_resnet"])
        assert 0 <= r["precision_resnet"] <= 1 and r["weights_sha256"] == doc["models"][r["model"]]["weights_sha256"]
    assert doc["n"] == 8 and doc["device"] and "fid_resnet" in doc["floor"] and "speed" not in doc
    from mnistdiff.config import RUN_CONFIGS
    from mnistdiff.solvers import KARRAS_SIGMA_MIN

    karras = [r for r in doc["rows"] if r.get("spacing") == "karras"]
    assert {r["model"] for r in karras} == {"ddpm", "flow"}
    assert all((r["sigma_max"], r["sigma_min"]) == (RUN_CONFIGS[r["model"]].karras_sigma_max, KARRAS_SIGMA_MIN)
               for r in karras)  # each kind's own σ_max
    assert all("sigma_min" not in r for r in doc["rows"] if r.get("spacing") != "karras")
    capsys.readouterr()
    assert sweep.main(argv) == 0  # everything scored already: nothing is sampled again
    assert " NFE " not in capsys.readouterr().out  # no configuration line
    stale = json.loads(out.read_text())
    stale["rows"][[r["key"] for r in stale["rows"]].index(karras[0]["key"])]["sigma_min"] = 0.006  # other σ
    out.write_text(json.dumps(stale))
    assert sweep.main(argv) == 0  # that row alone is scored again, on the package's σ
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines() if " NFE " in line] == [karras[0]["key"]]
    doc = json.loads(out.read_text())
    assert sweep.main(argv + ["--speed", "--speed_n", "4"]) == 0  # the speed pass times every scored row, in one run
    timed = json.loads(out.read_text())
    assert [r["key"] for r in timed["rows"]] == [r["key"] for r in doc["rows"]]
    assert all(r["samples_per_second"] > 0 for r in timed["rows"]) and timed["speed"]["n"] == 4
    assert [r["fid"] for r in timed["rows"]] == [r["fid"] for r in doc["rows"]]  # the scores are kept
    with pytest.raises(SystemExit):  # nothing scored at this n: nothing to time
        sweep.main([a if a != "8" else "16" for a in argv] + ["--speed"])
    with pytest.raises(SystemExit):  # a sampler no model takes: refused before anything is sampled
        sweep.main(argv + ["--samplers", "euler", "unipc"])
    assert "--samplers: unipc samples none of these models" in capsys.readouterr().err
    import torch

    from mnistdiff.model import DiffusionModel

    flow_file = Path(argv[1])
    retrained = DiffusionModel.load(flow_file)
    with torch.no_grad():
        next(retrained.unet.parameters()).add_(0.01)
    retrained.save(flow_file, seconds=4.0)  # the flow's weights change: its old rows go, every one scored anew
    assert sweep.main(argv[:2] + argv[4:] + ["--nfe", "2"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted(r["key"] for r in rows if r["model"] == "flow") == [
        "flow:dpmpp_2m-karras:2", "flow:dpmpp_2m_sde-karras:2", "flow:euler:2", "flow:heun:1"]
    new_sha = DiffusionModel.load(flow_file).meta["weights_sha256"]
    assert all(r["weights_sha256"] == new_sha for r in rows if r["model"] == "flow")
    assert [r for r in rows if r["model"] == "ddpm"] == [r for r in timed["rows"] if r["model"] == "ddpm"]


def test_nfe_sweeps_speed_pass_makes_its_first_call_choices_before_timing_anything(tmp_path):
    """The sampler's first call of a batch shape times ways of cutting the batch (``ChunkedDenoiser._measure``): the
    warm-up draws at the timed size, so no timed row pays for that."""
    from unittest import mock

    from mnistdiff.sampling import ChunkedDenoiser

    sweep = _script("nfe_sweep")
    out = tmp_path / "sweep.json"
    argv = ["--model", str(_tiny_model(tmp_path, "ddpm")), "--n", "8", "--nfe", "2", "--samplers", "ddim",
            "--precision", "fp32", "--out", str(out)]
    assert sweep.main(argv) == 0
    measured, at_timing = [], []
    real_measure, real_speed = ChunkedDenoiser._measure, sweep.speed

    def measure(self, *inputs):
        measured.append(tuple(inputs[0].shape))
        return real_measure(self, *inputs)

    def speed(*args, **kwargs):
        at_timing.append(len(measured))
        return real_speed(*args, **kwargs)

    with mock.patch.object(ChunkedDenoiser, "_measure", measure), mock.patch.object(sweep, "speed", speed):
        assert sweep.main(argv + ["--speed", "--speed_n", "6"]) == 0
    assert (6, 1, 32, 32) in measured and len(set(at_timing)) == 1 and at_timing[0] == len(measured)


def test_nfe_sweeps_speed_pass_reads_the_load_average_before_it_loads_the_models(tmp_path):
    """The load average recorded beside the timings is the machine's before this run: loading the models and
    probing their precision would raise it, and the warning would blame another job."""
    from unittest import mock

    sweep = _script("nfe_sweep")
    out = tmp_path / "sweep.json"
    argv = ["--model", str(_tiny_model(tmp_path, "ddpm")), "--n", "8", "--nfe", "2", "--samplers", "ddim",
            "--precision", "fp32", "--out", str(out)]
    assert sweep.main(argv) == 0
    events, real_load = [], sweep.load_models

    def load_models(*args, **kwargs):
        events.append("load_models")
        return real_load(*args, **kwargs)

    def loadavg():
        events.append("loadavg")
        return (0.25, 0.0, 0.0)

    with mock.patch.object(sweep, "load_models", load_models), mock.patch.object(sweep.os, "getloadavg", loadavg):
        assert sweep.main(argv + ["--speed", "--speed_n", "4"]) == 0
    assert events == ["loadavg", "load_models"]
    assert json.loads(out.read_text())["speed"]["load_average_before"] == 0.25


def test_seed_spread_scores_each_seed_and_summarises_both_spaces(tmp_path):
    import numpy as np

    spread = _script("seed_spread")
    out = tmp_path / "spread.json"
    argv = [str(_tiny_model(tmp_path, "ddpm")), "--sampler", "ddim", "--steps", "2", "--n", "8", "--out", str(out)]
    assert spread.main([*argv, "--seeds", "0", "1", "2"]) == 0
    doc = json.loads(out.read_text())
    assert [d["seed"] for d in doc["draws"]] == [0, 1, 2] == [f["seed"] for f in doc["floors"]]
    for key in ("fid", "fid_resnet", "precision", "recall_resnet"):
        values = np.array([d[key] for d in doc["draws"]])
        assert len(set(values)) == 3 or not key.startswith("fid")  # each seed draws other samples
        assert doc["spread"][key]["mean"] == pytest.approx(values.mean())
        assert doc["spread"][key]["std"] == pytest.approx(values.std(ddof=1))
        assert doc["spread"][key]["max"] == values.max() and doc["floor_spread"][key]["min"] > 0
    assert doc["sampling"]["sampler"] == "ddim" and doc["sampling"]["steps"] == 2 and doc["sampling"]["spacing"] is None
    assert all(0 < d["class_max_deviation"] <= 0.9 for d in doc["draws"])  # 8 samples: never balanced to 10 %
    with pytest.raises(SystemExit):
        spread.main([*argv, "--seeds", "0"])


def test_seed_spread_rerun_draws_only_the_seeds_its_file_lacks(tmp_path):
    from unittest import mock

    spread = _script("seed_spread")
    out = tmp_path / "spread.json"
    argv = [str(_tiny_model(tmp_path, "ddpm")), "--sampler", "ddim", "--steps", "2", "--n", "8", "--out", str(out)]
    assert spread.main([*argv, "--seeds", "0", "1"]) == 0
    first = json.loads(out.read_text())
    with mock.patch.object(spread, "draw", wraps=spread.draw) as drawn:
        assert spread.main([*argv, "--seeds", "0", "1", "2"]) == 0
    assert [c.args[1] for c in drawn.call_args_list] == [2]  # seeds 0 and 1 kept from the file
    doc = json.loads(out.read_text())
    assert doc["draws"][:2] == first["draws"] and doc["floors"][:2] == first["floors"]
    assert [d["seed"] for d in doc["draws"]] == [0, 1, 2]
    with mock.patch.object(spread, "draw", wraps=spread.draw) as drawn:  # another sampler: nothing is kept
        assert spread.main([*argv, "--steps", "3", "--seeds", "0", "1"]) == 0  # the last --steps counts
    assert [c.args[1] for c in drawn.call_args_list] == [0, 1]


def test_seed_spread_records_a_guide_and_its_interval_and_keeps_no_draw_of_other_guidance(tmp_path):
    from unittest import mock

    spread = _script("seed_spread")
    out, model = tmp_path / "spread.json", str(_tiny_model(tmp_path, "ddpm"))
    argv = [model, "--sampler", "ddim", "--steps", "2", "--n", "8", "--out", str(out), "--seeds", "0", "1"]
    assert spread.main([*argv, "--guide", model, "--guidance", "2"]) == 0
    with mock.patch.object(spread, "draw", wraps=spread.draw) as drawn:
        assert spread.main([*argv, "--guide", model, "--guidance", "2", "--guidance_interval", "0.5", "inf"]) == 0
    assert [c.args[1] for c in drawn.call_args_list] == [0, 1]  # guided everywhere is another sampling
    sampling = json.loads(out.read_text())["sampling"]
    assert sampling["guidance"] == 2 and sampling["guidance_interval"] == [0.5, None]
    assert sampling["guide"]["file"] == model


def test_seed_spread_scores_a_vae_by_its_reconstructions_of_each_seeds_floor_digits(tmp_path):
    """A VAE file's draw at seed s is its reconstructions of real_floor's digits at s: the metrics equal evaluate()
    on vae.reconstruct of those digits, and sampler options are refused."""
    from mnistdiff.data import load_mnist
    from mnistdiff.evaluation.metrics import distribution_metrics, evaluate
    from mnistdiff.modelfile import load_vae

    spread = _script("seed_spread")
    _, vae_path = _tiny_cldm(tmp_path)
    out = tmp_path / "vae_spread.json"
    assert spread.main([str(vae_path), "--n", "8", "--seeds", "3", "4", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["model"]["kind"] == "vae" and doc["sampling"] == {"reconstruction": True}
    real = load_mnist("train").subset(8, seed=4).images
    want = distribution_metrics(evaluate(load_vae(vae_path).reconstruct(real), seed=4, include_memorisation=False))
    assert doc["draws"][1] == pytest.approx({"seed": 4, **want})
    assert doc["draws"][0]["fid"] != doc["draws"][1]["fid"]
    with pytest.raises(SystemExit):
        spread.main([str(vae_path), "--n", "8", "--seeds", "0", "1", "--steps", "3", "--out", str(out)])


def test_karras_sigmas_move_only_where_the_spacing_starts_and_ends(tmp_path):
    import torch

    from mnistdiff.model import DiffusionModel
    from mnistdiff.solvers import KARRAS_SIGMA_MIN

    study = _script("karras_sigmas")
    model = DiffusionModel.load(_tiny_model(tmp_path, "ddpm"))
    own_max = model.karras_sigma_max  # the kind's
    # the package's own σ pair draws exactly what model.sample draws; another σ_max or σ_min draws other samples
    # (the SDE solver: the untrained model's ODE lands on the same x̂_0 wherever the last point is)
    package = study.draw(model, "dpmpp_2m_sde", 3, (own_max, KARRAS_SIGMA_MIN), 4, "cpu")
    assert torch.equal(package, model.sample(4, sampler="dpmpp_2m_sde", steps=3, seed=0).images)
    assert not torch.equal(package, study.draw(model, "dpmpp_2m_sde", 3, (80.0, KARRAS_SIGMA_MIN), 4, "cpu"))
    assert not torch.equal(package, study.draw(model, "dpmpp_2m_sde", 3, (own_max, 1.0), 4, "cpu"))
    out = tmp_path / "sigma.json"
    argv = ["--model", str(tmp_path / "ddpm.safetensors"), "--sampler", "dpmpp_2m", "--steps", "3", "--n", "8",
            "--sigma_max", "20", "80", "--sigma_min", "0", "0.2", "--out", str(out)]
    assert study.main(argv) == 0
    doc = json.loads(out.read_text())
    first = float(model.schedule.alphas_cumprod.double()[0].reciprocal().sub(1).sqrt())  # the schedule's first σ
    pairs = [(20.0, first), (20.0, 0.2), (80.0, first), (80.0, 0.2)]
    assert [(r["sigma_max"], r["sigma_min"]) for r in doc["rows"]] == [pytest.approx(p) for p in pairs]
    assert (doc["package_sigma_max"], doc["package_sigma_min"]) == ({"ddpm": own_max}, KARRAS_SIGMA_MIN)
    assert all(math.isfinite(r["fid"]) and math.isfinite(r["fid_resnet"]) and r["nfe"] == 3 for r in doc["rows"])
    assert study.main(argv) == 0 and len(json.loads(out.read_text())["rows"]) == 4  # a rerun scores nothing again
    retrained = DiffusionModel.load(tmp_path / "ddpm.safetensors")
    with torch.no_grad():
        next(retrained.unet.parameters()).add_(0.01)
    retrained.save(tmp_path / "ddpm.safetensors", seconds=3.0)  # the same kind, other weights
    assert study.main([*argv[:9], "20", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]  # the earlier model's four rows are gone, the new one's one is there
    assert [(r["sigma_max"], r["sigma_min"]) for r in rows] == [pytest.approx((20.0, 0.2))]
    assert rows[0]["weights_sha256"] == DiffusionModel.load(tmp_path / "ddpm.safetensors").meta["weights_sha256"]


def test_guidance_samplers_sweeps_every_weight_for_each_sampler_and_seed(tmp_path, capsys):
    from mnistdiff.course.profiles import get_profile

    study = _script("guidance_samplers")
    out = tmp_path / "guidance_samplers.json"
    cldm, vae = _tiny_cldm(tmp_path)
    argv = [str(cldm), "--vae", str(vae), "--n", "20", "--profile", "smoke", "--out", str(out)]
    assert study.main([*argv, "--samplers", "ddim:3", "dpmpp_2m_sde:2", "--seeds", "0", "1"]) == 0
    doc = json.loads(out.read_text())
    scales = list(get_profile("smoke").guidance_scales)
    assert doc["guidance_scales"] == scales and sorted(doc["floors"]) == ["0", "1"]
    assert [(r["sampler"], r["steps"], r["seed"]) for r in doc["runs"]] == [
        ("ddim", 3, 0), ("ddim", 3, 1), ("dpmpp_2m_sde", 2, 0), ("dpmpp_2m_sde", 2, 1)]
    for run in doc["runs"]:
        assert [r["guidance"] for r in run["weights"]] == scales
        assert all(math.isfinite(r["fid"]) and math.isfinite(r["fid_resnet"]) and 0 <= r["label_accuracy"] <= 1
                   for r in run["weights"])
    first = [[r["fid"] for r in run["weights"]] for run in doc["runs"]]
    assert first[0] != first[1] and first[0] != first[2]  # another seed, another sampler: other samples
    assert list(doc["means"]) == ["ddim-3", "dpmpp_2m_sde-2"]
    for name, (a, b) in {"ddim-3": doc["runs"][:2], "dpmpp_2m_sde-2": doc["runs"][2:]}.items():
        for w, ra, rb in zip(scales, a["weights"], b["weights"]):
            for key in ("fid", "recall_resnet", "label_accuracy", "sampling_seconds"):
                assert doc["means"][name][f"{w:g}"][key] == pytest.approx((ra[key] + rb[key]) / 2)
    assert doc["floor_mean"]["fid"] == pytest.approx((doc["floors"]["0"]["fid"] + doc["floors"]["1"]["fid"]) / 2)
    with pytest.raises(SystemExit):
        study.main([*argv, "--samplers", "ddim"])
    assert "a sampler is name:steps" in capsys.readouterr().err


def test_chunk_speed_times_both_ways_and_finds_the_same_bits(tmp_path):
    """benchmarks/chunk_speed.py on a tiny model: a row per precision it ran (fp32 first), each with both ways
    timed, the ratio of their medians and the two draws equal bit for bit."""
    import statistics

    bench = _script("chunk_speed")
    out = tmp_path / "chunks.json"
    model = _tiny_model(tmp_path, "ddpm")
    assert bench.main([str(model), "--n", "70", "--steps", "2", "--repeats", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["device"].startswith("CPU") and doc["chunks"] and doc["rows"][0]["precision"] == "fp32"
    for row in doc["rows"]:
        assert row["model"] == "ddpm" and row["steps"] == 2 and row["n"] == 70 and row["same_bits"] is True
        speed = {way: round(70 / statistics.median(s), 2) for way, s in row["seconds"].items()}
        assert row["samples_per_second"] == speed and len(row["seconds"]["pieces"]) == 2
        assert row["ratio"] == round(speed["pieces"] / speed["whole"], 3)


def test_posthoc_ema_profiles_match_their_closed_forms(tmp_path):
    """EDM2's power EMA: γ from σ_rel gives a profile of that relative width; the running update averages θ_t = t
    to (γ+1)/(γ+2)·t; the profiles' inner product equals a numerical integral; a tracked profile is reconstructed
    exactly and a wider one closely."""
    import numpy as np
    import torch

    ph = _script("posthoc_ema")
    for sigma_rel in (0.05, 0.10, 0.2):
        g = ph.sigma_rel_to_gamma(sigma_rel)
        mean, second = (g + 1) / (g + 2), (g + 1) / (g + 3)  # E[τ/t], E[(τ/t)²] under (γ+1)τ^γ/t^(γ+1)
        assert abs(np.sqrt(second - mean ** 2) - sigma_rel) < 1e-9
    model = torch.nn.Linear(1, 1, bias=False)
    emas = ph.PowerEMAs(model)
    for t in range(1, 2001):
        model.weight.data.fill_(float(t))
        emas.update(model, t)
    for avg, g in zip(emas.avgs, emas.gammas):
        assert abs(avg[0].item() / 2000 - (g + 1) / (g + 2)) < 2e-3
    ta, ga, tb, gb = 300.0, 5.0, 500.0, 12.0
    tau = np.linspace(0.0, ta, 200_001)
    integrand = (ga + 1) * tau ** ga / ta ** (ga + 1) * (gb + 1) * tau ** gb / tb ** (gb + 1)
    numeric = float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(tau)))
    assert abs(ph.profile_inner(np.array(ta), np.array(ga), np.array(tb), np.array(gb)) / numeric - 1) < 1e-6
    ts = np.array([234.0 * k for k in range(1, 25)] * 2)
    gammas = np.array([ph.sigma_rel_to_gamma(0.05)] * 24 + [ph.sigma_rel_to_gamma(0.10)] * 24)
    exact = ph.solve_weights(ts, gammas, ts.max(), ph.sigma_rel_to_gamma(0.10))
    assert abs(exact[-1] - 1) < 1e-6 and np.abs(exact[:-1]).max() < 1e-6
    wide = ph.solve_weights(ts, gammas, ts.max(), ph.sigma_rel_to_gamma(0.2))
    a = ph.profile_inner(ts[:, None], gammas[:, None], ts[None, :], gammas[None, :])
    b = ph.profile_inner(ts, gammas, ts.max(), ph.sigma_rel_to_gamma(0.2))
    target = ph.profile_inner(ts.max(), ph.sigma_rel_to_gamma(0.2), ts.max(), ph.sigma_rel_to_gamma(0.2))
    assert abs(wide.sum() - 1) < 1e-9 and (wide @ a @ wide - 2 * wide @ b + target) / target < 0.01 ** 2 * 2
    # the running state comes back exactly, and an epoch's last step is read from the loop's own steps per epoch
    (tmp_path / "posthoc").mkdir()
    emas.save_state(tmp_path / "posthoc" / "state.safetensors", 2000, 468)
    again = ph.PowerEMAs(model)
    assert again.load_state(tmp_path / "posthoc" / "state.safetensors") == 2000
    assert all(torch.equal(x, y) for a1, a2 in zip(emas.avgs, again.avgs) for x, y in zip(a1, a2))
    (tmp_path / "snapshots").mkdir()
    _tiny_model(tmp_path / "snapshots", "ddpm").rename(tmp_path / "snapshots" / "epoch_003.safetensors")
    assert ph._reference(tmp_path, 3)[2] == 3 * 468


def test_ddim_spacings_are_the_lists_they_are_named_for(tmp_path):
    """Each study spacing against a list written here with numpy: DDIM's own evenly spaced one, Song et al.'s
    quadratic list, and σ evenly spaced in log σ (np.geomspace) or by Karras et al.'s eq. 5, each at the timestep
    nearest in log σ after the first at T − 1; every list decreases, and the study draws as the package's DDIM."""
    import numpy as np
    import torch

    from mnistdiff.ddim import ddim_timesteps
    from mnistdiff.schedules import NoiseSchedule
    from mnistdiff.solvers import schedule_sigmas

    study, sched = _script("ddim_spacing"), NoiseSchedule.make("cosine", 1000)
    log_sig = np.log(schedule_sigmas(sched).numpy())

    def nearest(sigma: float) -> int:
        return int(np.argmin(np.abs(log_sig - np.log(sigma))))

    i = np.arange(49) / 48
    karras = (20 ** (1 / 7) + i * (0.2 ** (1 / 7) - 20 ** (1 / 7))) ** 7
    assert study.spacing_timesteps(sched, "linspace") == ddim_timesteps(1000, 50)
    assert study.spacing_timesteps(sched, "logsnr_0.2") == [999] + [nearest(s) for s in np.geomspace(20, 0.2, 49)]
    assert study.spacing_timesteps(sched, "karras_0.2") == [999] + [nearest(s) for s in karras]
    quadratic = [round(999 * (k / 49) ** 2) for k in range(49, -1, -1)]
    assert study.spacing_timesteps(sched, "quadratic") == sorted(set(quadratic), reverse=True)
    for name in ("power_1.5", "karras_0.0064", "lin967"):
        ts = study.spacing_timesteps(sched, name)
        assert ts[0] == 999 and all(a > b for a, b in zip(ts, ts[1:])) and 45 <= len(ts) <= 50
    with pytest.raises(ValueError, match="unknown spacing"):
        study.spacing_timesteps(sched, "uniform")
    # the study draws as the package's DDIM draws: the same samples from the same seed on the same timesteps
    from mnistdiff.model import DiffusionModel

    model = DiffusionModel.load(_tiny_model(tmp_path, "ddpm"))
    ours = study.draw(model, ddim_timesteps(model.schedule.num_timesteps, 5), 3, 7, "cpu")
    assert torch.equal(ours, model.sample(3, sampler="ddim", steps=5, eta=1.0, seed=7).images)  # bit for bit
