"""Evaluate every generator the course builds, and write the results file the book reads.

Chapter 6 asks one question of each way the course has of making a digit: how close are its
samples to real MNIST? The generators are

* the pixel-space DDPM with ancestral sampling over all ``T`` steps (Ho et al. 2020);
* DDIM with the same network at each step count of ``profile.ddim_step_sweep``, deterministic
  (η = 0) and stochastic (η = 1) (Song et al. 2020);
* latent diffusion, sampled with DDPM and with DDIM (η = 0, ``profile.ddim_steps`` steps)
  (Rombach et al. 2022);
* the VAE on its own: decoded draws from its prior ``N(0, I)`` (Kingma & Welling 2013), and its
  reconstructions of real training images — the best that latent diffusion, which can only emit
  what the decoder can draw, could reach.

Each is scored with :func:`mnistdiff.evaluation.metrics.evaluate` (classifier-FID, KID, precision/recall,
confidence, class balance, distance to the nearest training image), timed (seconds per sample), and
— with :func:`mnistdiff.evaluation.umap_eval.umap_evaluation` — placed on a UMAP of real digits with a k-NN
two-sample accuracy. Every metric depends on the sample count, so the results always carry the
real-vs-real floor at the same count (:func:`mnistdiff.evaluation.metrics.real_floor`; for the k-NN
accuracies, held-out real test images against real training images).

The results go to ``results/<profile>/evaluation.json`` (or under ``$MNISTDIFF_RESULTS_DIR``),
written atomically, with this layout::

    {"profile": "smoke", "device": "CPU (2 cores)", "n_samples": 200, "seed": 0, ...,
     "floor": {"fid": ..., "kid": ..., "knn_accuracy_umap": ..., ...},
     "generators": {"ddpm": {"label": ..., "fid": ..., ..., "seconds_per_sample": ...}, ...},
     "class_histograms": {"real (floor)": {"0": ..., ..., "9": ...}, "ddpm": {...}, ...}}

Every entry of ``floor`` and ``generators`` is a flat mapping of scalars, so the book's results
page renders ``generators`` as one table with a row per generator.

Typical use (what chapter 6 does, step by step)::

    n = PROFILE.eval_samples
    specs = course_generators(ddpm=ddpm, ldm=ldm, vae=vae, profile=PROFILE, device=DEVICE)
    samples = draw_samples(specs, n, seed=0, device=DEVICE)
    scores = score_samples(samples, seed=0, device=DEVICE)
    floor = real_floor(n, seed=0, device=DEVICE)
    real, labels, floor_images = umap_reference_sets(PROFILE.umap_real, n, seed=0)
    fig, umap_scores = umap_compare(samples, real, labels, floor_images, seed=0, device=DEVICE)
    results = build_results(PROFILE.name, DEVICE, n, floor, scores, umap_scores=umap_scores,
                            floor_umap_name=FLOOR_NAME)
    write_results(results)

or all of it at once with :func:`run_evaluation`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from mnistdiff.config import DEFAULT_ETA
from mnistdiff.course.profiles import Profile
from mnistdiff.data import load_mnist
from mnistdiff.devices import default_device, device_name
from mnistdiff.files import atomic_write_text, repo_root

__all__ = [
    "GeneratorSpec",
    "Samples",
    "course_generators",
    "draw_samples",
    "score_samples",
    "real_floor",
    "floors_for",
    "umap_reference_sets",
    "umap_compare",
    "build_results",
    "results_dir",
    "results_path",
    "write_results",
    "read_results",
    "results_table",
    "run_evaluation",
    "TABLE_COLUMNS",
    "FLOOR_NAME",
]

#: The name of the real-vs-real reference, in tables and in ``class_histograms``.
FLOOR_NAME = "real (floor)"

#: The columns of :func:`results_table`: ``(key, header, format, factor)``; a value is shown as
#: ``format.format(value * factor)``.
TABLE_COLUMNS: tuple[tuple[str, str, str, float], ...] = (
    ("n", "n", "{:d}", 1),
    ("fid", "FID ↓", "{:.2f}", 1.0),
    ("kid", "KID ↓", "{:.4f}", 1.0),
    ("precision", "precision ↑", "{:.3f}", 1.0),
    ("recall", "recall ↑", "{:.3f}", 1.0),
    ("confidence", "confidence ↑", "{:.3f}", 1.0),
    ("class_entropy", "class entropy (bits)", "{:.2f}", 1.0),
    ("nn_train_distance", "NN-train distance", "{:.2f}", 1.0),
    ("knn_accuracy_umap", "k-NN acc. UMAP", "{:.3f}", 1.0),
    ("knn_accuracy_pixels", "k-NN acc. pixels", "{:.3f}", 1.0),
    ("knn_accuracy_features", "k-NN acc. features", "{:.3f}", 1.0),
    ("seconds_per_sample", "ms / sample", "{:.4g}", 1e3),
)

#: The metrics copied from :func:`mnistdiff.evaluation.metrics.evaluate` into the results file (all scalars).
_METRIC_KEYS = (
    "fid", "kid", "kid_std", "precision", "recall", "confidence", "class_entropy", "class_max_deviation",
    "nn_train_distance", "nn_train_distance_min",
)
_UMAP_KEYS = ("knn_accuracy_umap", "knn_accuracy_pixels", "knn_accuracy_features")

Sampler = Callable[[int, int], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# the generators
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorSpec:
    """One way of making digits: a name, a description, and ``draw(n, seed)``.

    ``draw(n, seed)`` returns ``n`` images ``(n, 1, 32, 32)`` in [-1, 1] on the CPU, the same ones
    for the same seed. ``space`` is ``"pixel"``, ``"latent"`` or ``"vae"``; ``sampler`` is
    ``"ddpm"``, ``"ddim"``, ``"prior"`` or ``"reconstruction"``; ``steps`` is the number of
    network (or decoder) evaluations per sample and ``eta`` DDIM's η (None where it means nothing).
    """

    name: str
    label: str
    space: str
    sampler: str
    steps: int | None
    eta: float | None
    draw: Sampler = field(repr=False, compare=False)
    max_samples: int | None = None  # draw at most this many (the 1000-step samplers on a CPU); None: all asked for

    def describe(self) -> dict[str, Any]:
        """The scalar description stored with the generator's metrics."""
        return {"label": self.label, "space": self.space, "sampler": self.sampler, "steps": self.steps, "eta": self.eta}

    def count(self, n: int) -> int:
        """How many samples this generator draws when ``n`` are asked for."""
        return n if self.max_samples is None else min(n, self.max_samples)


def _diffusion_sampler(model: Any, device: torch.device, **kwargs: Any) -> Sampler:
    def draw(n: int, seed: int) -> torch.Tensor:
        images, _ = model.sample(n, seed=seed, device=device, **kwargs)
        return images

    return draw


def _vae_prior_sampler(vae: torch.nn.Module, device: torch.device, batch_size: int = 1024) -> Sampler:
    @torch.no_grad()
    def draw(n: int, seed: int) -> torch.Tensor:
        cfg = vae.config
        gen = torch.Generator(device=device).manual_seed(seed)
        z = torch.randn((n, cfg.latent_channels, cfg.latent_size, cfg.latent_size), generator=gen, device=device)
        vae.eval()
        return torch.cat([vae.decode(c).float().clamp(-1, 1).cpu() for c in z.split(batch_size)])

    return draw


def _vae_reconstruction_sampler(vae: torch.nn.Module, device: torch.device, batch_size: int = 1024) -> Sampler:
    @torch.no_grad()
    def draw(n: int, seed: int) -> torch.Tensor:
        # the same n training images as real_floor(n, seed=seed): the floor, passed through the VAE
        real = load_mnist("train").subset(n, seed=seed).images
        vae.eval()
        out = [vae.decode(vae.encode(c.to(device)).mode()).float().clamp(-1, 1).cpu() for c in real.split(batch_size)]
        return torch.cat(out)

    return draw


def course_generators(
    *,
    ddpm: Any | None,
    ldm: Any | None,
    vae: torch.nn.Module | None,
    profile: Profile,
    device: torch.device | str | None = None,
    ddim_steps: Sequence[int] | None = None,
    etas: Sequence[float] = (DEFAULT_ETA, 0.0),
    ldm_ddim_steps: int | None = None,
) -> list[GeneratorSpec]:
    """Every generator of the course, in the order the tables show them.

    ``ddpm``: the pixel-space :class:`~mnistdiff.training.pipelines.DiffusionModel`; ``ldm``: the latent one
    (with its ``codec``); ``vae``: the VAE. Any of them may be None to leave its generators out.
    The pixel model's DDIM runs every step count of ``ddim_steps`` (default ``profile.ddim_step_sweep``,
    capped at the model's T) with the first η of ``etas`` (the package's default sampler), and each
    further η at ``profile.ddim_steps`` only; latent diffusion's DDIM runs each η of ``etas`` at
    ``ldm_ddim_steps`` (default ``profile.ddim_steps``). The two ancestral (T-step) samplers draw at
    most ``profile.ancestral_samples``. Names: ``ddpm``, ``ddim_<S>_eta<η>``, ``ldm_ddpm``,
    ``ldm_ddim_<S>_eta<η>``, ``vae_prior``, ``vae_reconstruction``.
    """
    device = torch.device(device) if device is not None else default_device()
    specs: list[GeneratorSpec] = []
    if ddpm is not None:
        T = ddpm.schedule.num_timesteps
        specs.append(GeneratorSpec("ddpm", f"DDPM, {T} steps", "pixel", "ddpm", T, None,
                                   _diffusion_sampler(ddpm, device, mode="ddpm"), profile.ancestral_samples))
        sweep = [s for s in (ddim_steps if ddim_steps is not None else profile.ddim_step_sweep) if s <= T]
        for i, eta in enumerate(etas):
            for steps in (sweep if i == 0 else [min(profile.ddim_steps, T)]):
                specs.append(GeneratorSpec(
                    f"ddim_{steps}_eta{eta:g}", f"DDIM, {steps} steps, η = {eta:g}", "pixel", "ddim", steps, float(eta),
                    _diffusion_sampler(ddpm, device, mode="ddim", ddim_steps=steps, eta=float(eta)),
                ))
    if ldm is not None:
        T = ldm.schedule.num_timesteps
        steps = min(ldm_ddim_steps or profile.ddim_steps, T)
        specs.append(GeneratorSpec("ldm_ddpm", f"LDM, DDPM, {T} steps", "latent", "ddpm", T, None,
                                   _diffusion_sampler(ldm, device, mode="ddpm"), profile.ancestral_samples))
        for eta in etas:
            specs.append(GeneratorSpec(
                f"ldm_ddim_{steps}_eta{eta:g}", f"LDM, DDIM, {steps} steps, η = {eta:g}", "latent", "ddim", steps,
                float(eta), _diffusion_sampler(ldm, device, mode="ddim", ddim_steps=steps, eta=float(eta)),
            ))
    if vae is not None:
        specs.append(GeneratorSpec("vae_prior", "VAE prior samples", "vae", "prior", 1, None,
                                   _vae_prior_sampler(vae, device)))
        specs.append(GeneratorSpec("vae_reconstruction", "VAE reconstructions", "vae",
                                   "reconstruction", 1, None, _vae_reconstruction_sampler(vae, device)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"generator names must be unique, got {names}")
    return specs


# ----------------------------------------------------------------------------------------------
# sampling and scoring
# ----------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """One generator's output: its spec, the images ``(n, 1, 32, 32)`` in [-1, 1] (CPU) and the wall time."""

    spec: GeneratorSpec
    images: torch.Tensor
    seconds: float

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / max(int(self.images.shape[0]), 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw_samples(
    specs: Sequence[GeneratorSpec],
    n: int,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    verbose: bool = True,
) -> dict[str, Samples]:
    """Draw ``n`` samples (``spec.count(n)``) from each generator with the same ``seed``, timing each (wall clock).

    The time includes decoding (latent diffusion, VAE) and the copy to the CPU, i.e. what a user
    waits for. Returns name → :class:`Samples`, in the order of ``specs``. With ``verbose``, prints
    one line per generator.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    device = torch.device(device) if device is not None else default_device()
    out: dict[str, Samples] = {}
    for spec in specs:
        k = spec.count(n)
        _sync(device)
        t0 = time.perf_counter()
        images = spec.draw(k, seed)
        _sync(device)
        seconds = time.perf_counter() - t0
        if tuple(images.shape) != (k, 1, 32, 32):
            raise ValueError(f"generator {spec.name} returned shape {tuple(images.shape)}, expected ({k}, 1, 32, 32)")
        out[spec.name] = Samples(spec, images.detach().float().cpu(), seconds)
        if verbose:
            print(f"  {spec.label:<48} {k} samples in {seconds:7.2f} s")
    return out


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: float(metrics[k]) for k in _METRIC_KEYS if k in metrics}


def _histogram(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {str(d): float(p) for d, p in enumerate(metrics.get("class_histogram", []))}


def score_samples(
    samples: Mapping[str, Samples],
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    verbose: bool = True,
) -> dict[str, dict[str, Any]]:
    """:func:`mnistdiff.evaluation.metrics.evaluate` for each generator's samples, plus its description and timing.

    Returns name → a flat dict: the spec's ``label``, ``space``, ``sampler``, ``steps``, ``eta``;
    the scalar metrics (``fid``, ``kid``, ``kid_std``, ``precision``, ``recall``, ``confidence``,
    ``class_entropy``, ``class_max_deviation``, ``nn_train_distance``, ``nn_train_distance_min``);
    ``class_histogram`` (a list of 10 fractions, moved out by :func:`build_results`);
    ``sampling_seconds`` and ``seconds_per_sample``.
    """
    from mnistdiff.evaluation.metrics import evaluate

    out: dict[str, dict[str, Any]] = {}
    for name, s in samples.items():
        t0 = time.perf_counter()
        m = evaluate(s.images, seed=seed, device=device)
        entry = {**s.spec.describe(), "n": int(s.images.shape[0]), **_scalar_metrics(m),
                 "class_histogram": list(m["class_histogram"]),
                 "sampling_seconds": s.seconds, "seconds_per_sample": s.seconds_per_sample}
        out[name] = entry
        if verbose:
            print(f"  {s.spec.label:<48} FID {entry['fid']:8.2f}   ({time.perf_counter() - t0:.1f} s)")
    return out


def real_floor(n: int, *, seed: int = 0, device: torch.device | str | None = None) -> dict[str, Any]:
    """The real-vs-real floor at ``n`` samples: :func:`mnistdiff.evaluation.metrics.real_floor` (``n`` real
    training images scored like a generator), with its ``class_histogram``."""
    from mnistdiff.evaluation.metrics import real_floor as _floor

    m = _floor(n, seed=seed, device=device)
    return {"n": int(n), **_scalar_metrics(m), "class_histogram": list(m["class_histogram"])}


def floors_for(scores: Mapping[str, Mapping[str, Any]], n: int, *, seed: int = 0,
               device: torch.device | str | None = None) -> dict[str, dict[str, Any]]:
    """The real floor at every sample count in ``scores`` other than ``n`` (the main floor's), keyed by ``str(n)``:
    a generator scored on fewer samples is compared with the floor at its own count."""
    counts = sorted({int(e["n"]) for e in scores.values() if "n" in e} - {int(n)})
    return {str(k): {key: v for key, v in real_floor(k, seed=seed, device=device).items() if key != "class_histogram"}
            for k in counts}


def umap_reference_sets(
    n_real: int, n_floor: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The real images for the UMAP evaluation, disjoint from every generator's inputs.

    Returns ``(real_images, real_labels, floor_images)``: ``n_real`` *test* images (the UMAP is
    fitted on part of them; the rest are the held-out real points every set is compared with) and
    the ``n_floor`` *training* images of :func:`real_floor` (the real-vs-real reference, scored in
    the UMAP exactly like a generator). The VAE reconstructions are of those same training images,
    never of the test images, so no reconstruction sits on top of its own original in the map.
    """
    test = load_mnist("test").subset(n_real, seed=seed)
    floor = load_mnist("train").subset(n_floor, seed=seed)
    return test.images, test.labels, floor.images


def umap_compare(
    samples: Mapping[str, Samples],
    real_images: torch.Tensor,
    real_labels: torch.Tensor | None,
    floor_images: torch.Tensor,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    ncols: int = 4,
) -> tuple[Any, dict[str, dict[str, float]]]:
    """:func:`mnistdiff.evaluation.umap_eval.umap_evaluation` of every generator and of the real floor.

    The UMAP is fitted on part of ``real_images`` (see :func:`umap_reference_sets`); the rest are
    held out and compared, in the map, in pixel space and in classifier-feature space, with
    ``floor_images`` (real training images, the real-vs-real floor) and with each generator's
    samples. Panels are titled with the generators' labels. Returns ``(figure, scores)`` with
    ``scores`` keyed by generator name and by :data:`FLOOR_NAME`.
    """
    from mnistdiff.evaluation.umap_eval import umap_evaluation

    by_label = {FLOOR_NAME: floor_images}
    names = {FLOOR_NAME: FLOOR_NAME}
    for name, s in samples.items():
        if s.spec.label in by_label:
            raise ValueError(f"two generators share the label {s.spec.label!r}")
        by_label[s.spec.label] = s.images
        names[s.spec.label] = name
    fig, scores = umap_evaluation(real_images, real_labels, by_label, seed=seed, device=device, ncols=ncols)
    return fig, {names[label]: v for label, v in scores.items()}


# ----------------------------------------------------------------------------------------------
# the results file
# ----------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe scalars: floats rounded to 6 significant digits, NaN/inf → None."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.6g}") + 0.0  # + 0.0: no "-0.0"
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def build_results(
    profile: str,
    device: torch.device | str | None,
    n_samples: int,
    floor: Mapping[str, Any],
    generators: Mapping[str, Mapping[str, Any]],
    *,
    umap_scores: Mapping[str, Mapping[str, float]] | None = None,
    floor_umap_name: str | None = None,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
    other_floors: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble the results file's dict (see the module docstring for its layout).

    ``floor``: :func:`real_floor`'s dict; ``generators``: :func:`score_samples`'s. ``umap_scores``:
    the scores of :func:`mnistdiff.evaluation.umap_eval.umap_evaluation` (name → ``knn_accuracy_*``); the
    entry named ``floor_umap_name`` holds the real-vs-real reference and goes into ``floor``, the
    others into their generators. Class histograms move to ``class_histograms`` (so every entry of
    ``generators`` is a flat row of scalars). ``extra``: more top-level fields (e.g. timings).
    ``other_floors`` (:func:`floors_for`): the floor at the other sample counts, stored as ``floors``.
    """
    umap_scores = dict(umap_scores or {})
    floor_entry = {k: v for k, v in floor.items() if k != "class_histogram"}
    hist = {FLOOR_NAME: _histogram(floor)}
    if floor_umap_name is not None and floor_umap_name in umap_scores:
        real_scores = umap_scores.pop(floor_umap_name)
        floor_entry.update({k: real_scores[k] for k in _UMAP_KEYS if k in real_scores})
    gens: dict[str, dict[str, Any]] = {}
    for name, entry in generators.items():
        row = {k: v for k, v in entry.items() if k != "class_histogram"}
        if name in umap_scores:
            row.update({k: umap_scores[name][k] for k in _UMAP_KEYS if k in umap_scores[name]})
        # keep the timing last, as the schema shows it
        for key in ("sampling_seconds", "seconds_per_sample"):
            if key in row:
                row[key] = row.pop(key)
        gens[name] = row
        hist[name] = _histogram(entry)
    unknown = set(umap_scores) - set(generators)
    if unknown:
        raise ValueError(f"UMAP scores for unknown generators: {sorted(unknown)}")
    results = {
        "profile": profile,
        "device": device_name(device),
        "n_samples": int(n_samples),
        "seed": int(seed),
        "torch": torch.__version__.split("+")[0],
        "date": _dt.date.today().isoformat(),
        **dict(extra or {}),
        "floor": floor_entry,
        **({"floors": {str(k): dict(v) for k, v in other_floors.items()}} if other_floors else {}),
        "generators": gens,
        "class_histograms": hist,
    }
    return _clean(results)


def results_dir() -> Path:
    """``$MNISTDIFF_RESULTS_DIR`` if set, else ``results/`` at the repository root (:func:`~mnistdiff.files.repo_root`)."""
    env = os.environ.get("MNISTDIFF_RESULTS_DIR")
    return Path(env) if env else repo_root() / "results"


def results_path(profile: str | Profile) -> Path:
    """``<results_dir>/<profile>/evaluation.json``."""
    name = profile.name if isinstance(profile, Profile) else str(profile)
    return results_dir() / name / "evaluation.json"


def write_results(results: Mapping[str, Any], path: str | Path | None = None) -> Path:
    """Write ``results`` as indented JSON to ``path`` (default :func:`results_path` of its profile).

    The file is written to a temporary sibling and renamed into place, so a reader never sees half
    a file. Refuses a dict without ``profile``, ``device``, ``n_samples``, ``floor`` or
    ``generators``. Returns the path.
    """
    missing = [k for k in ("profile", "device", "n_samples", "floor", "generators") if k not in results]
    if missing:
        raise ValueError(f"results lack {missing}; build them with build_results()")
    path = Path(path) if path is not None else results_path(results["profile"])
    text = json.dumps(_clean(dict(results)), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a results file written by :func:`write_results`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _fmt(value: Any, fmt: str, factor: float = 1.0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fmt.format(value * factor)


def results_table(
    results: Mapping[str, Any], columns: Sequence[tuple[str, str, str, float]] = TABLE_COLUMNS
) -> str:
    """A Markdown table of ``results``: the real floor first, then one row per generator.

    ``columns``: ``(key, header, format, factor)`` (default :data:`TABLE_COLUMNS`); a column no row
    has is left out, a missing value shows as ``—``.
    """
    rows = [(f"**{FLOOR_NAME}**", results["floor"])]
    rows += [(f"**{FLOOR_NAME}, n = {k}**", f) for k, f in results.get("floors", {}).items()]
    rows += [(g.get("label", name), g) for name, g in results["generators"].items()]
    cols = [c for c in columns if any(c[0] in r for _, r in rows)]
    lines = [
        "| generator | " + " | ".join(c[1] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for label, row in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(row.get(key), fmt, factor) for key, _, fmt, factor in cols) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# everything at once
# ----------------------------------------------------------------------------------------------


def run_evaluation(
    profile: str | Profile | None = None,
    *,
    device: torch.device | str | None = None,
    seed: int = 0,
    n: int | None = None,
    umap: bool = True,
    path: str | Path | None = None,
    write: bool = True,
) -> tuple[dict[str, Any], Any]:
    """Load (or train) the profile's models, evaluate every generator, and write the results file.

    ``n`` defaults to ``profile.eval_samples``; with ``umap`` the UMAP figure and k-NN accuracies
    are computed too (``profile.umap_real`` real test images). Returns ``(results, figure or None)``.
    """
    from mnistdiff.course.pretrained import get_ddpm, get_ldm, get_vae
    from mnistdiff.course.profiles import get_profile
    from mnistdiff.evaluation.metrics import reference_features

    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    device = torch.device(device) if device is not None else default_device()
    n = n or prof.eval_samples
    t0 = time.perf_counter()
    ddpm = get_ddpm(prof, device=device, progress=False)
    ldm = get_ldm(prof, device=device, progress=False)
    vae, _ = get_vae(prof, device=device, progress=False)
    specs = course_generators(ddpm=ddpm, ldm=ldm, vae=vae, profile=prof, device=device)
    samples = draw_samples(specs, n, seed=seed, device=device)
    reference_features(device)
    scores = score_samples(samples, seed=seed, device=device)
    floor = real_floor(n, seed=seed, device=device)
    fig, umap_scores = None, None
    if umap:
        real, labels, floor_images = umap_reference_sets(prof.umap_real, n, seed=seed)
        fig, umap_scores = umap_compare(samples, real, labels, floor_images, seed=seed, device=device)
    results = build_results(prof.name, device, n, floor, scores, umap_scores=umap_scores, floor_umap_name=FLOOR_NAME,
                            seed=seed, extra={"umap_real": prof.umap_real, "seconds_total": time.perf_counter() - t0})
    if write:
        write_results(results, path)
    return results, fig
