"""The book profile, `train all`, and the run-time precision choice."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mnistdiff.cli import main
from mnistdiff.config import ConfigError, TrainConfig, UNetConfig
from mnistdiff.course.pretrained import checkpoint_path, train_all
from mnistdiff.course.profiles import BOOK, DEFAULT_PROFILE, PROFILES, SMOKE, get_profile
from mnistdiff.devices import choices_file, clear_winner, cpu_name
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.training.experiment import Experiment
from mnistdiff.training.loop import TrainTask, fit
from mnistdiff.training.pipelines import make_diffusion_loss
from mnistdiff.training.precision import choose_precision, resolve_precision
from mnistdiff.unet import UNet


def test_profiles_and_cli_agree():
    """The command line offers the profiles of mnistdiff.course.profiles (it reads them from there)."""
    from mnistdiff.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    all_ = train._subparsers._group_actions[0].choices["all"]
    assert next(a for a in all_._actions if a.dest == "profile").choices == tuple(PROFILES)
    assert DEFAULT_PROFILE == "book"


def test_default_profile_is_book(monkeypatch):
    monkeypatch.delenv("MNISTDIFF_PROFILE", raising=False)
    assert get_profile().name == "book"


def test_book_profile_keeps_the_seed_shapes():
    assert (BOOK.ddpm.unet.in_channels, BOOK.ddpm.unet.image_size) == (1, 32)
    assert (BOOK.vae.vae.latent_channels, BOOK.vae.vae.latent_size) == (2, 4)
    assert (BOOK.ldm.unet.in_channels, BOOK.ldm.unet.image_size) == (2, 4)
    assert BOOK.ancestral_samples is not None and BOOK.ancestral_samples < BOOK.eval_samples


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp16")


def _task(precision: str | None = None) -> TrainTask:
    torch.manual_seed(0)
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(), num_heads=1)
    sched = NoiseSchedule.make("cosine", 20)
    data = torch.rand(16, 1, 32, 32) * 2 - 1
    train = TrainConfig(epochs=2, batch_size=8, lr=1e-3, warmup_steps=1, sample_every=5, num_samples=2,
                        eval_size=8, precision=precision)
    return TrainTask("ddpm", UNet(cfg), make_diffusion_loss(sched), data, data[:8], train)


def test_default_precision_is_fp32_on_cpu():
    assert resolve_precision(_task(None), torch.device("cpu")) == ("fp32", {})
    assert resolve_precision(_task("bf16"), torch.device("cpu")) == ("bf16", {})


def test_probe_changes_nothing_and_picks_a_measured_mode():
    task = _task("auto")
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    rng = torch.get_rng_state()
    chosen, speeds = resolve_precision(task, torch.device("cpu"))
    assert chosen in speeds and chosen == clear_winner(speeds)  # the first within the tie margin, not the fastest
    assert "fp32" in speeds and all(v > 0 for v in speeds.values())
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {"fp32", "fp32_cl"} <= set(speeds)  # channels_last is tried everywhere; bf16 where the CPU has it
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert set(choose_precision(task, torch.device("cpu"))) == {"fp32", "fp32_cl"}


def test_a_network_runs_in_each_precision_and_fp32_after_channels_last_is_plain_again():
    """FastDenoiser: channels_last changes float32 results by rounding only, bf16 by bf16's precision; a later
    float32 run puts the network back in the plain memory format (bit for bit what it gave before);
    measure_precision picks one of the four it timed."""
    from mnistdiff.sampling import MEASURED_PRECISIONS, FastDenoiser, measure_precision

    net = _task().model.eval()
    with torch.no_grad():  # away from the zero-initialised output layer
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x, t = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 5, 10, 19])
    with torch.no_grad():
        plain = net(x, t)
        outs = {p: FastDenoiser(net, "cpu", p)(x, t) for p in MEASURED_PRECISIONS}
        again = FastDenoiser(net, "cpu", "fp32")(x, t)
    assert MEASURED_PRECISIONS == ("fp32", "fp32_cl", "bf16", "bf16_cl")
    assert torch.equal(outs["fp32"], plain) and torch.equal(again, plain)
    assert 0 < float((outs["fp32_cl"] - plain).abs().max()) < 1e-4
    assert float((outs["bf16_cl"] - plain).abs().max()) < 0.1
    from mnistdiff.config import DDPMRunConfig
    from mnistdiff.model import DiffusionModel

    model = DiffusionModel(net, NoiseSchedule.make("cosine", 20), DDPMRunConfig(unet=net.config))
    first = model.sample(2, steps=2, seed=1, precision="fp32").images
    model.sample(2, steps=2, seed=1, precision="fp32_cl")
    assert torch.equal(model.sample(2, steps=2, seed=1, precision="fp32").images, first)  # plain again, bit for bit
    chosen, speeds = measure_precision(net, (1, 32, 32), batch_size=4, rounds=1)
    assert set(speeds) == set(MEASURED_PRECISIONS) and speeds[chosen] * 1.1 >= max(speeds.values())


def test_auto_precision_keeps_the_earlier_choice_on_a_near_tie():
    """clear_winner takes a later precision (other bits, so other samples) only when it runs over 10 % faster than
    every earlier one: a 1 % tie between fp32 and fp32_cl, which flipped the book's draws between runs, goes to fp32."""
    from mnistdiff.devices import clear_winner

    assert clear_winner({"fp32": 100.0, "fp32_cl": 101.0, "bf16": 60.0, "bf16_cl": 55.0}) == "fp32"
    assert clear_winner({"fp32": 101.0, "fp32_cl": 100.0, "bf16": 60.0, "bf16_cl": 55.0}) == "fp32"
    assert clear_winner({"fp32": 100.0, "fp32_cl": 125.0, "bf16": 60.0, "bf16_cl": 55.0}) == "fp32_cl"
    assert clear_winner({"fp32": 100.0, "fp32_cl": 104.0, "bf16": 200.0, "bf16_cl": 215.0}) == "bf16"
    assert clear_winner({"fp32": 100.0, "fp32_cl": 104.0, "bf16": 200.0, "bf16_cl": 215.0}, margin=0.0) == "bf16_cl"


def test_run_records_its_precision_and_a_resume_reads_it_back(tmp_path):
    from mnistdiff.modelfile import read_model_meta
    from mnistdiff.training.precision import started_precision

    task = _task("bf16")
    exp = Experiment.create(tmp_path, "ddpm")
    fit(task, exp, progress=False)
    side = json.loads(exp.last_checkpoint.with_suffix(".json").read_text())
    assert side["precision"] == "bf16"
    assert read_model_meta(exp.model_checkpoint)["metrics"]["precision"] == "bf16"
    assert started_precision(exp.last_checkpoint) == "bf16"  # what fit(resume=True) trains in
    assert started_precision(tmp_path / "missing" / "last.pt") is None


def test_an_auto_run_keeps_its_precision_on_its_machine_and_measures_again_on_another(tmp_path, monkeypatch):
    import mnistdiff.training.precision as prec

    task = _task("auto")
    exp = Experiment.create(tmp_path, "ddpm")
    fit(task, exp, progress=False)
    side = json.loads(exp.last_checkpoint.with_suffix(".json").read_text())
    assert side["machine"] == prec.machine_name(torch.device("cpu"))
    side["precision"] = "bf16_cl"  # as if the probe had picked it when the run started
    exp.last_checkpoint.with_suffix(".json").write_text(json.dumps(side))
    probes = []
    monkeypatch.setattr(prec, "choose_precision", lambda t, d: probes.append(1) or {"fp32": 2.0, "fp32_cl": 9.0})
    said = []
    assert prec.resumed_precision(task, torch.device("cpu"), exp.last_checkpoint, said.append) == ("bf16_cl", {})
    assert not probes and not said  # the same machine: kept, so the resume is bit for bit
    monkeypatch.setattr(prec, "machine_name", lambda device: "another CPU")
    monkeypatch.setenv("MNISTDIFF_CACHE", str(tmp_path / "another"))  # whose remembered choices are its own
    precision, speeds = prec.resumed_precision(task, torch.device("cpu"), exp.last_checkpoint, said.append)
    assert (precision, speeds) == ("fp32_cl", {"fp32": 2.0, "fp32_cl": 9.0}) and probes == [1]
    assert said[0].startswith("# resumed on another CPU, the last checkpoint written on ") and "in bf16_cl" in said[0]
    # a precision the config names is kept on any machine
    assert prec.resumed_precision(_task("fp32"), torch.device("cpu"), exp.last_checkpoint, said.append) == (
        "bf16_cl", {})


def test_cpu_name_matches_proc_cpuinfo():
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    if not info.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    lines = info.read_text().splitlines()
    model = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("model name"))
    flags = set(next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags")))
    name = cpu_name()
    assert name.startswith(model)
    assert ("amx_bf16" in name) == ("amx_bf16" in flags)
    assert ("avx512_bf16" in name) == ("avx512_bf16" in flags)
    assert ("no native bf16" in name) == (not flags & {"amx_bf16", "avx512_bf16"})


def _tiny(name: str = "tiny"):
    train = dict(epochs=1, subset=64, batch_size=32, eval_size=32, num_samples=2, sample_every=1, warmup_steps=1)
    return dataclasses.replace(
        SMOKE, name=name,
        ddpm=dataclasses.replace(SMOKE.ddpm, train=dataclasses.replace(SMOKE.ddpm.train, **train)),
        vae=dataclasses.replace(SMOKE.vae, train=dataclasses.replace(SMOKE.vae.train, **train)),
        ldm=dataclasses.replace(SMOKE.ldm, train=dataclasses.replace(SMOKE.ldm.train, **train)),
        cldm=dataclasses.replace(SMOKE.cldm, train=dataclasses.replace(SMOKE.cldm.train, **train)),
        flow=dataclasses.replace(SMOKE.flow, train=dataclasses.replace(SMOKE.flow.train, **train)),
        ddpm_guide=dataclasses.replace(SMOKE.ddpm_guide, train=dataclasses.replace(SMOKE.ddpm_guide.train, **train)),
        distill=dataclasses.replace(SMOKE.distill, iterations=2, batch_size=8, subset=32),
    )


@pytest.mark.slow
def test_train_all_trains_skips_and_resumes(tmp_path, monkeypatch, capsys):
    from mnistdiff.modelfile import read_model_meta

    monkeypatch.setenv("MNISTDIFF_CHECKPOINT_DIR", str(tmp_path))
    prof = _tiny()
    seconds = train_all(prof, device="cpu", progress=False)
    assert set(seconds) == {"ddpm", "ddpm_guide", "vae", "ldm", "cldm", "flow", "cldm_distilled"}
    student = read_model_meta(checkpoint_path("cldm_distilled", prof))
    assert student["distillation"]["teacher_weights_sha256"] == read_model_meta(checkpoint_path("cldm", prof))[
        "weights_sha256"]
    for kind in seconds:
        assert checkpoint_path(kind, prof).suffix == ".safetensors" and checkpoint_path(kind, prof).exists()
        assert not checkpoint_path(kind, prof).with_suffix(".json").exists()  # one file per model
    ddpm_weights = read_model_meta(checkpoint_path("ddpm", prof))["weights_sha256"]

    guide = read_model_meta(checkpoint_path("ddpm_guide", prof))
    assert guide["kind"] == "ddpm" and guide["config"]["train"]["epochs"] == prof.ddpm_guide.train.epochs

    # a second call finds all six trained with these settings and trains nothing
    capsys.readouterr()
    train_all(prof, device="cpu", progress=False)
    out = capsys.readouterr().out
    assert out.count("skipping") == 6 and "training the" not in out and "distilling" not in out

    # a run stopped before its final checkpoint is resumed, not restarted (the DDPM's run: the guide's comes after)
    run = sorted((tmp_path / "tiny" / "runs").glob("*-ddpm"))[0]
    assert read_model_meta(run / "checkpoints" / "model.safetensors")["weights_sha256"] == ddpm_weights
    for f in (run / "checkpoints").glob("model.*"):
        f.unlink()
    checkpoint_path("ddpm", prof).unlink()
    train_all(prof, device="cpu", progress=False)
    out = capsys.readouterr().out
    assert "resuming" in out and run.name in out
    # CPU: the resumed run ends with identical weights (the file's header differs: it records the training time)
    assert read_model_meta(checkpoint_path("ddpm", prof))["weights_sha256"] == ddpm_weights


def test_train_all_rejects_an_unknown_profile(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "all", "--profile", "huge"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_ancestral_samplers_draw_fewer_and_get_their_own_floor():
    from mnistdiff.evaluation import report as evaluation

    def draw(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.rand((n, 1, 32, 32), generator=g) * 2 - 1

    specs = [evaluation.GeneratorSpec("slow", "slow", "pixel", "ddpm", 1000, None, draw, max_samples=12),
             evaluation.GeneratorSpec("fast", "fast", "pixel", "ddim", 10, 0.0, draw)]
    samples = evaluation.draw_samples(specs, 40, seed=0, device="cpu", verbose=False)
    assert samples["slow"].images.shape[0] == 12 and samples["fast"].images.shape[0] == 40
    scores = {name: {"n": int(s.images.shape[0])} for name, s in samples.items()}
    floors = evaluation.floors_for(scores, 40, device="cpu")
    assert list(floors) == ["12"] and floors["12"]["n"] == 12
    assert floors["12"]["fid"] == pytest.approx(evaluation.floor_row(12, device="cpu")["fid"])
    results = evaluation.build_results("tiny", "cpu", 40, evaluation.floor_row(40, device="cpu"),
                                       {"slow": {"label": "slow", "n": 12, "fid": 1.0}}, other_floors=floors)
    table = evaluation.results_table(results)
    assert "real (floor), n = 12" in table and "| n |" in table.replace("| generator | n |", "| n |")


def test_course_generators_draw_each_model_once_with_the_default_sampler_unless_asked_for_more():
    """By default one row per model with the package's default sampler: its kind's solver at the kind's default
    steps, or DDIM (profile.ddim_steps, the default η) where DDIM is the default; the sweep of steps, η and solvers
    is the benchmark's. Asked for, a DDIM step sweep runs with the first η and every other η at profile.ddim_steps."""
    from types import SimpleNamespace

    from mnistdiff.config import DEFAULT_ETA
    from mnistdiff.course.generators import course_generators
    from mnistdiff.schedules import NoiseSchedule

    def model(sampler: str, steps: int) -> SimpleNamespace:
        return SimpleNamespace(schedule=NoiseSchedule.make("cosine", 1000), nfe=lambda s, k: k,
                               sampling_defaults=lambda: {"sampler": sampler, "steps": steps, "eta": DEFAULT_ETA})

    prof = get_profile("book")
    d, s = f"{DEFAULT_ETA:g}", prof.ddim_steps
    ddim = model("ddim", 50)
    specs = course_generators(ddpm=ddim, ldm=ddim, vae=None, profile=prof, device="cpu")
    assert [x.name for x in specs] == ["ddpm", f"ddim_{s}_eta{d}", "ldm_ddpm", f"ldm_ddim_{s}_eta{d}"]
    assert [(x.steps, x.eta) for x in specs if "ddim" in x.name] == [(s, DEFAULT_ETA), (s, DEFAULT_ETA)]
    labels = [x.label for x in specs if "ddim" in x.name]
    assert labels == [f"DDIM, {s} steps, η = {d}", f"LDM, DDIM, {s} steps, η = {d}"]
    solver = model("dpmpp_2m_sde", 16)
    specs = course_generators(ddpm=solver, ldm=ddim, vae=None, profile=prof, device="cpu")
    assert [x.name for x in specs] == ["ddpm", "dpmpp_2m_sde_16", "ldm_ddpm", f"ldm_ddim_{s}_eta{d}"]
    assert (specs[1].label, specs[1].sampler, specs[1].steps) == ("DPM-Solver++(2M) SDE, 16 steps", "dpmpp_2m_sde", 16)
    specs = course_generators(ddpm=ddim, ldm=solver, vae=None, profile=prof, device="cpu")
    assert [x.name for x in specs][2:] == ["ldm_ddpm", "ldm_dpmpp_2m_sde_16"]
    for m in (ddim, solver):  # asked for DDIM, DDIM it is, whatever the default
        more = course_generators(ddpm=m, ldm=m, vae=None, profile=prof, device="cpu", ddim_steps=(10, 20),
                                 etas=(DEFAULT_ETA, 0.0))
        assert [x.name for x in more] == ["ddpm", f"ddim_10_eta{d}", f"ddim_20_eta{d}", f"ddim_{s}_eta0",
                                          "ldm_ddpm", f"ldm_ddim_{s}_eta{d}", f"ldm_ddim_{s}_eta0"]


def test_the_ddpm_task_trains_on_its_configs_loss_weighting(tmp_path, monkeypatch):
    """train_ddpm hands fit the min-SNR-γ loss of its config (and L_simple without one)."""
    from mnistdiff.ddpm import diffusion_loss
    from mnistdiff.training import pipelines

    seen = {}
    monkeypatch.setattr(pipelines, "fit", lambda task, exp, **kw: seen.setdefault("task", task))
    base = get_profile("smoke").ddpm
    torch.manual_seed(0)
    batch = torch.rand(4, 1, 32, 32) * 2 - 1
    for gamma in (None, 0.5):
        cfg = dataclasses.replace(base, diffusion=dataclasses.replace(base.diffusion, min_snr_gamma=gamma))
        seen.clear()
        pipelines.train_ddpm(cfg, out=tmp_path, device="cpu", progress=False)
        task = seen["task"]
        gen = torch.Generator().manual_seed(1)
        got = task.loss_fn(task.model, batch, gen)
        gen = torch.Generator().manual_seed(1)
        t = torch.randint(0, cfg.diffusion.timesteps, (4,), generator=gen)
        noise = torch.randn(batch.shape, generator=gen)
        want = diffusion_loss(task.model, NoiseSchedule.from_config(cfg.diffusion), batch, t, noise, gamma)
        torch.testing.assert_close(got, want)


class _SlowOnBigBatches(torch.nn.Module):
    """ε̂ = 2·x (or, ``mixes``, x minus the batch's mean: a piece of the batch then gives other numbers), taking time
    that grows with the square of the batch, as a network whose activations overflow the caches does."""

    def __init__(self, mixes: bool = False) -> None:
        super().__init__()
        self.mixes, self.batches = mixes, []

    def forward(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        import time

        self.batches.append(len(x))
        time.sleep(len(x) ** 2 * 5e-6)  # 0.33 s for 256: measured (sampling.CHUNK_MIN_SECONDS); 0.02 s for 64
        return x - x.mean(0) if self.mixes else 2 * x


@pytest.mark.parametrize("mixes", [False, True])
def test_chunked_denoiser_takes_the_fastest_piece_size_that_gives_the_same_bits(mixes):
    """A chunk is chosen only where its ε̂ equals the whole batch's bit for bit: for a batch-invariant network the
    fastest piece size (here the smallest, 64), for one whose output mixes the batch never a piece. Every call, the
    measuring one included, returns the whole batch's ε̂."""
    from mnistdiff.sampling import CHUNKS, ChunkedDenoiser

    inner = _SlowOnBigBatches(mixes)
    net = ChunkedDenoiser(inner, rounds=1)
    x, t = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(256, dtype=torch.long)
    whole = inner(x, t)
    for _ in range(2):
        assert torch.equal(net(x, t), whole)
    assert net.chosen == {(256, 1, 4, 4): None if mixes else min(CHUNKS)}
    inner.batches.clear()
    net(x, t)
    assert inner.batches == ([256] if mixes else [64] * 4)
    small = ChunkedDenoiser(inner)
    small(x[:min(CHUNKS)], t[:min(CHUNKS)])  # no piece smaller than the batch: nothing to measure
    assert small.chosen == {(min(CHUNKS), 1, 4, 4): None}


def test_a_quick_network_is_run_whole_without_measuring():
    """A whole-batch call shorter than CHUNK_MIN_SECONDS is not worth the eight calls a measurement costs: the
    network runs whole, and no piece is tried."""
    from mnistdiff.sampling import CHUNK_MIN_SECONDS, ChunkedDenoiser

    seen: list[int] = []

    def quick(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return 2 * x

    net = ChunkedDenoiser(quick)
    x, t = torch.randn(256, 1, 4, 4), torch.zeros(256, dtype=torch.long)
    assert torch.equal(net(x, t), 2 * x) and torch.equal(net(x, t), 2 * x)
    assert net.chosen == {(256, 1, 4, 4): None} and seen == [256, 256] and CHUNK_MIN_SECONDS > 0.01


def test_generate_draws_the_same_bits_with_and_without_pieces(monkeypatch):
    """generate's chunking changes the speed only: 130 samples from a tiny UNet, in pieces of 64 (forced) and whole,
    are equal bit for bit, for the ancestral sampler and for DDIM, and the network saw the pieces."""
    import mnistdiff.sampling as sampling

    net = _task().model.eval()
    sched = NoiseSchedule.make("cosine", 20)
    seen: list[int] = []
    net.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    monkeypatch.setattr(sampling.ChunkedDenoiser, "_measure",
                        lambda self, *inputs: (self._run(None, *inputs), 64))
    for sampler in ("ddpm", "ddim"):  # the second draw reuses what the first measured
        kw = dict(sampler=sampler, steps=3, seed=4, precision="fp32")
        seen.clear()
        pieces = sampling.generate(net, sched, 130, batch_size=130, **kw).images
        assert seen.count(64) >= 2 and seen.count(130) == (sampler == "ddpm")  # one measuring call, then pieces
        whole = sampling.generate(net, sched, 130, batch_size=130, chunk=False, **kw).images
        assert torch.equal(pieces, whole), sampler


def test_measure_decoder_keeps_the_precision_that_decodes_fastest():
    """measure_decoder times decode(z, precision) in every measured precision and keeps the quickest (a stand-in
    decoder, slow in every precision but bf16_cl)."""
    import time

    from mnistdiff.sampling import MEASURED_PRECISIONS, measure_decoder

    def decode(z: torch.Tensor, precision: str) -> torch.Tensor:
        time.sleep(0.001 if precision == "bf16_cl" else 0.02)
        return z

    chosen, speeds = measure_decoder(decode, (2, 4, 4), batch_size=8, rounds=2)
    assert chosen == "bf16_cl" and set(speeds) == {f"decode_{p}" for p in MEASURED_PRECISIONS}
    assert speeds["decode_bf16_cl"] > 5 * speeds["decode_fp32"]


def test_timings_take_turns_and_keep_each_candidates_fastest_call():
    """sampling._seconds runs the candidates in turn, round after round, and keeps each one's fastest call: a burst
    that slows one candidate's first call (other work on the cores) does not decide the choice, as it would for a
    mean of calls made one after the other."""
    import time

    from mnistdiff.sampling import _seconds

    order: list[str] = []

    def candidate(name: str, first: float, then: float):
        def call() -> None:
            time.sleep(first if name not in order else then)
            order.append(name)
        return call

    seconds = _seconds({"bursty": candidate("bursty", 0.06, 0.002), "steady": candidate("steady", 0.01, 0.01)}, 3)
    assert order == ["bursty", "steady"] * 3
    assert min(seconds, key=seconds.__getitem__) == "bursty"
    assert 0.002 <= seconds["bursty"] < 0.01 <= seconds["steady"] < 0.06


def test_remembered_choices_lists_this_machines_by_prefix(tmp_path, monkeypatch):
    """devices.remembered_choices gives back what remembered filed for this machine and this torch, by the start of
    its ``what``; another machine's entry and another prefix are left out; no file is no choices."""
    import json

    import torch

    from mnistdiff.devices import CACHE_ENV, choices_file, remembered, remembered_choices

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert remembered_choices("bf16 attention", "cpu") == {}
    remembered("bf16 attention, forward, (1, 2)", "cpu", lambda: ("written", {"sdpa": 1.0, "written": 2.0}))
    remembered("training precision of X", "cpu", lambda: ("fp32", {"fp32": 1.0}))
    known = json.loads(choices_file().read_text())
    other = f"bf16 attention, forward, (1, 2) | GPU: some other card | torch {torch.__version__}"
    choices_file().write_text(json.dumps({**known, other: {"choice": "sdpa", "timings": {}}}))
    assert remembered_choices("bf16 attention", "cpu") == {
        "bf16 attention, forward, (1, 2)": {"choice": "written", "timings": {"sdpa": 1.0, "written": 2.0}}}


def test_the_test_run_keeps_its_speed_choices_out_of_the_users_cache(tmp_path):
    """The repository's conftest points $MNISTDIFF_CACHE at a folder of the run's before anything starts (nbval's
    kernels inherit the environment; a fixture would reach only test functions): loaded as pytest loads it, with the
    reader's own cache set, a process it starts files its choices elsewhere, and the folder goes when the run ends."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MNISTDIFF_TEST_RUN", "MNISTDIFF_RESULTS_DIR")}
    env["MNISTDIFF_CACHE"] = str(tmp_path / "users")
    child = "from mnistdiff.devices import choices_file; print(choices_file())"
    script = ("import conftest, os, subprocess, sys\n"
              "folder = os.environ['MNISTDIFF_CACHE']\n"
              "print(folder)\n"
              "print(os.path.isdir(folder))\n"
              f"seen = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True)\n"
              "print(seen.stdout.strip())\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                         check=True)
    folder, existed, seen = out.stdout.split("\n")[:3]
    assert existed == "True" and Path(seen) == Path(folder) / "choices.json"
    assert not Path(folder).is_relative_to(tmp_path) and not Path(folder).is_relative_to(Path.home())
    assert not Path(folder).exists()


def test_a_measured_choice_is_remembered_per_machine_and_read_back(tmp_path, monkeypatch):
    """devices.remembered measures once for a key on this machine, then reads the file back (the same choice, so the
    same bits, however the next timing would come out); another key measures; an unreadable file is measured over
    with a warning; an unwritable folder warns and still returns the measured choice."""
    import json

    from mnistdiff.devices import CACHE_ENV, choices_file, remembered

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def measure(choice):
        def run():
            calls.append(choice)
            return choice, {"fp32": 1.0, choice: 2.0}
        return run

    assert remembered("net A", "cpu", measure("fp32_cl")) == ("fp32_cl", {"fp32": 1.0, "fp32_cl": 2.0}, False)
    assert remembered("net A", "cpu", measure("bf16")) == ("fp32_cl", {"fp32": 1.0, "fp32_cl": 2.0}, True)
    assert remembered("net B", "cpu", measure("bf16"))[:2] == ("bf16", {"fp32": 1.0, "bf16": 2.0})
    assert calls == ["fp32_cl", "bf16"]
    assert len(json.loads(choices_file().read_text())) == 2
    choices_file().write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        assert remembered("net A", "cpu", measure("bf16_cl"))[0] == "bf16_cl"
    assert list(json.loads(choices_file().read_text()).values())[0]["choice"] == "bf16_cl"
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file" / "below"))
    with pytest.warns(UserWarning, match="could not remember"):
        assert remembered("net A", "cpu", measure("fp32")) == ("fp32", {"fp32": 2.0}, False)


def test_a_models_auto_precision_is_measured_once_per_machine(monkeypatch):
    """DiffusionModel.measure_precision times the network the first time only: a second model of the same
    architecture takes the remembered choice (and its timings), whatever a new timing would say."""
    from mnistdiff import model as model_module
    from mnistdiff.config import DDPMRunConfig
    from mnistdiff.model import DiffusionModel

    net = _task().model.eval()
    probes = []

    def probe(unet, shape, device):
        probes.append(shape)
        return ("fp32_cl", {"fp32": 1.0, "fp32_cl": 2.0}) if len(probes) == 1 else ("bf16", {"bf16": 9.0})

    monkeypatch.setattr(model_module, "measure_precision", probe)
    first = DiffusionModel(net, NoiseSchedule.make("cosine", 20), DDPMRunConfig(unet=net.config))
    second = DiffusionModel(net, NoiseSchedule.make("cosine", 20), DDPMRunConfig(unet=net.config))
    assert first.measure_precision("cpu") == second.measure_precision("cpu") == {"fp32": 1.0, "fp32_cl": 2.0}
    assert first.precision == second.precision == "fp32_cl" and len(probes) == 1
    assert first.meta["precision_remembered_in"] is None and second.meta["precision_remembered_in"]


def test_a_latent_model_names_the_file_when_only_its_decoders_choice_was_remembered(monkeypatch):
    """The decoder's choice read back from the file is reported as remembered even where the network is new to it."""
    from mnistdiff import model as model_module
    from mnistdiff.config import LDMRunConfig, UNetConfig, VAEConfig
    from mnistdiff.latent import LatentCodec
    from mnistdiff.model import DiffusionModel
    from mnistdiff.unet import UNet
    from mnistdiff.vae import VAE

    monkeypatch.setattr(model_module, "measure_precision", lambda unet, shape, device: ("fp32", {"fp32": 1.0}))
    monkeypatch.setattr(model_module, "measure_decoder", lambda decode, shape, device: ("fp32", {"decode fp32": 1.0}))
    codec = LatentCodec(VAE(VAEConfig(base_channels=8)).eval(), 1.0)

    def latent(base: int) -> DiffusionModel:
        unet = UNetConfig(in_channels=2, image_size=4, base_channels=base, channel_mults=(1,), attention_resolutions=())
        return DiffusionModel(UNet(unet).eval(), NoiseSchedule.make("cosine", 20), LDMRunConfig(unet=unet),
                              codec=codec, clip_range=(-3.0, 3.0))

    first, second = latent(8), latent(16)  # two networks, one decoder
    first.measure_precision("cpu")
    second.measure_precision("cpu")
    assert first.meta["precision_remembered_in"] is None
    assert second.meta["precision_remembered_in"] == str(choices_file())
