"""Export a distilled student for the browser: its network and its VAE's decoder as ONNX graphs, and the constants
a page's sampler needs as JSON (issue 25; the page runs them with onnxruntime-web).

The page mirrors :meth:`mnistdiff.model.DiffusionModel.sample` for a student: for each of its timesteps t (high to
low), v̂ = student(z, t, y); x̂_0 = clip(√ᾱ_t·z − √(1 − ᾱ_t)·v̂, ±c); ε̂ = (z − √ᾱ_t·x̂_0)/√(1 − ᾱ_t); then DDIM
(η = 0) to the next timestep, z = √ᾱ_next·x̂_0 + √(1 − ᾱ_next)·ε̂ (ᾱ = 1 after the last); the image is decoder(z).
With the student's teacher exported too, the page also runs the teacher at any w and 4-64 DDIM steps (η = 0):
the same loop with x̂_0 from the guided ε̃. With the pixel DDPM exported too, the page draws unconditional digits
straight in pixels by DPM-Solver++(2M) SDE on Karras et al.'s σ (:func:`mnistdiff.solvers.dpm_solver_pp_2m_sde`,
the course's best sampler at 10 calls), its points precomputed: the network takes the fractional timesteps as floats.
``sampler.json`` holds, per network, its timesteps (or points), ᾱ at each, the clip c, what it predicts and its
guidance weight, and the latent shape and files' hashes.
:func:`check_export` runs the graphs with onnxruntime and reports their largest difference from PyTorch.

Needs the ``[export]`` extra (onnx, onnxscript, onnxruntime); nothing else in the package imports this module.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistdiff.config import DEFAULT_GUIDANCE
from mnistdiff.ddim import ddim_timesteps
from mnistdiff.files import atomic_write_bytes, atomic_write_text
from mnistdiff.flows import PathPoint
from mnistdiff.model import DiffusionModel
from mnistdiff.solvers import ddpm_path, dpm_solver_pp_2m_sde
from mnistdiff.unet import NULL_LABEL

__all__ = ["OPSET", "TEACHER_STEPS", "PIXEL_STEPS", "PIXEL_SOLVER", "export_student", "check_export", "onnx_sample",
           "onnx_pixel_sample", "pixel_noise"]

#: The ONNX opset the graphs are written in.
OPSET = 20


class _Decoder(nn.Module):
    """Scaled latents (B, c, 4, 4) → images (B, 1, 32, 32) in [−1, 1]: the VAE's decoder after z/κ."""

    def __init__(self, student: DiffusionModel) -> None:
        super().__init__()
        assert student.codec is not None
        self.vae, self.scale = student.codec.vae, float(student.codec.scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scale).clamp(-1.0, 1.0)


class _Pixel(nn.Module):
    """A pixel ε-network with real timesteps: (x (B, 1, 32, 32), t (B,) float) → ε̂ (B, 1, 32, 32)."""

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.net = model.network

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output: str, path: Path) -> Path:
    """``module`` as one self-contained ONNX graph, its batch dimension dynamic, gzipped at ``path`` (``*.onnx.gz``:
    a fifth smaller to download; the page inflates it with the browser's ``DecompressionStream``)."""
    batch = torch.export.Dim("batch")
    params = list(module.forward.__code__.co_varnames[1:1 + len(args)])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "graph.onnx"
        torch.onnx.export(module.eval(), args, str(onnx_path), input_names=names, output_names=[output], dynamo=True,
                          opset_version=OPSET, external_data=False, dynamic_shapes={p: {0: batch} for p in params})
        atomic_write_bytes(path, gzip.compress(onnx_path.read_bytes(), compresslevel=9, mtime=0))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: The step counts the page offers for the teacher (DDIM, η = 0), each with its timesteps in ``sampler.json``.
TEACHER_STEPS = (4, 8, 16, 32, 64)


def _network_constants(model: DiffusionModel, path: Path, timesteps: list[int]) -> dict[str, Any]:
    """What the page needs of one exported network: its file and hash, what it predicts, its clip, the weights it
    holds, and ᾱ at ``timesteps``."""
    assert model.schedule is not None
    abar = model.schedule.alphas_cumprod.double()
    return {"file": path.name, "sha256": _sha256(path), "prediction": model.config.diffusion.prediction,
            "clip": float(model.clip_range[1]), "weights_sha256": model.meta.get("weights_sha256"),
            "alphas_cumprod": [float(abar[s]) for s in timesteps]}


def _check_teacher(teacher: DiffusionModel, student: DiffusionModel) -> None:
    """The teacher is the class-conditional ε-model the student was distilled from (its weights' hash)."""
    if teacher.config.diffusion.prediction != "eps" or teacher.num_classes is None or teacher.distillation:
        raise ValueError("the teacher must be a class-conditional ε-prediction latent model (a cldm, not a student)")
    if teacher.sample_shape != student.sample_shape:
        raise ValueError(f"the teacher samples {teacher.sample_shape}, the student {student.sample_shape}")
    record = student.distillation or {}
    if teacher.meta.get("weights_sha256") != record.get("teacher_weights_sha256"):
        raise ValueError("the student was not distilled from this teacher (its teacher's weights differ): export it "
                         "with the cldm it was distilled from")


#: The step counts the page offers for the pixel DDPM, and its solver (DPM-Solver++(2M) SDE on Karras σ: at 10
#: calls 2.5× / 2.1× the real floor on the book's model, the course's best there; ``results/book/nfe_sweep.json``).
PIXEL_STEPS = (4, 6, 8, 10, 16)
PIXEL_SOLVER = "dpmpp_2m_sde"


def _check_pixel(pixel: DiffusionModel) -> None:
    if pixel.codec is not None or pixel.num_classes is not None or pixel.schedule is None \
            or pixel.config.diffusion.prediction != "eps":
        raise ValueError("the pixel model must be an unconditional ε-prediction pixel DDPM (python -m mnistdiff "
                         "train ddpm)")


def _pixel_constants(pixel: DiffusionModel, path: Path) -> dict[str, Any]:
    """The pixel DDPM's file, shape, clip and, per step count, the solver's points: the network's (fractional)
    timesteps and the path's a and b at each, the data point (a = 1, b = 0) last."""
    assert pixel.schedule is not None
    steps = {}
    for n in PIXEL_STEPS:
        points, _, times = ddpm_path(pixel.network, pixel.schedule, n, "karras", pixel.clip_range,
                                     pixel.karras_sigma_max)
        steps[str(n)] = {"times": times, "a": [float(p.a) for p in points], "b": [float(p.b) for p in points]}
    return {"file": path.name, "sha256": _sha256(path), "prediction": "eps", "clip": float(pixel.clip_range[1]),
            "weights_sha256": pixel.meta.get("weights_sha256"), "shape": list(pixel.sample_shape),
            "solver": PIXEL_SOLVER, "spacing": "karras", "default_steps": 10, "steps": steps}


def export_student(student: DiffusionModel, out_dir: str | Path, teacher: DiffusionModel | None = None,
                   pixel: DiffusionModel | None = None) -> dict[str, Path]:
    """Write ``student.onnx.gz`` ((z, t, y) → v̂), ``decoder.onnx.gz`` (z → image), with ``teacher`` also
    ``teacher.onnx.gz`` ((z, t, y) → ε̂, y = −1 for ∅), with ``pixel`` (a pixel DDPM) also ``pixel.onnx.gz`` ((x, t)
    → ε̂, t a float), and ``sampler.json`` into ``out_dir``. The graphs are gzipped (``gunzip -k`` gives the
    ``.onnx`` files), each self-contained, opset :data:`OPSET`."""
    record = student.distillation
    if record is None or student.codec is None or student.schedule is None:
        raise ValueError("export_student takes a distilled class-conditional latent model (mnistdiff distill)")
    if teacher is not None:
        _check_teacher(teacher, student)
    if pixel is not None:
        _check_pixel(pixel)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c, h, w = student.sample_shape
    z, t, y = torch.randn(2, c, h, w), torch.tensor(record["timesteps"][:2]), torch.tensor([3, NULL_LABEL])
    paths = {"student": _export(student.network, (z, t, y), ["z", "t", "y"], "v", out / "student.onnx.gz"),
             "decoder": _export(_Decoder(student), (z,), ["z"], "image", out / "decoder.onnx.gz")}
    constants: dict[str, Any] = {
        "opset": OPSET, "latent_shape": [c, h, w], "num_classes": student.num_classes, "null_label": NULL_LABEL,
        "decoder": {"file": paths["decoder"].name, "sha256": _sha256(paths["decoder"])},
        "student": {**_network_constants(student, paths["student"], record["timesteps"]),
                    "timesteps": [int(s) for s in record["timesteps"]], "guidance": record["guidance"]},
    }
    if teacher is not None:
        paths["teacher"] = _export(teacher.network, (z, t, y), ["z", "t", "y"], "eps", out / "teacher.onnx.gz")
        T = int(teacher.schedule.num_timesteps) if teacher.schedule is not None else 0
        constants["teacher"] = {**_network_constants(teacher, paths["teacher"], list(range(T))),
                                "steps": {str(n): ddim_timesteps(T, n) for n in TEACHER_STEPS if n <= T},
                                "guidance": DEFAULT_GUIDANCE}
    if pixel is not None:
        x, t_real = torch.randn(2, *pixel.sample_shape), torch.tensor([700.5, 3.25])
        paths["pixel"] = _export(_Pixel(pixel), (x, t_real), ["x", "t"], "eps", out / "pixel.onnx.gz")
        constants["pixel"] = _pixel_constants(pixel, paths["pixel"])
    paths["sampler"] = out / "sampler.json"
    # compact: the page downloads it
    atomic_write_text(paths["sampler"], json.dumps(constants, separators=(",", ":")) + "\n")
    return paths


def _session(path: Path) -> Any:
    """An onnxruntime session of a gzipped graph ``*.onnx.gz``."""
    import onnxruntime as ort

    return ort.InferenceSession(gzip.decompress(path.read_bytes()), providers=["CPUExecutionProvider"])


def check_export(student: DiffusionModel, out_dir: str | Path, teacher: DiffusionModel | None = None,
                 pixel: DiffusionModel | None = None, seed: int = 0) -> dict[str, float]:
    """The largest absolute difference between each exported graph under onnxruntime and PyTorch, on fixed inputs
    (four latents, timesteps from T − 1 to 0, digits with ∅ among them; four images at fractional timesteps)."""
    out = Path(out_dir)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((4, *student.sample_shape), generator=g)
    T = student.schedule.num_timesteps if student.schedule is not None else 1000
    t, y = torch.tensor([T - 1, (3 * T) // 4, T // 2, 0]), torch.tensor([0, 3, NULL_LABEL, 9])
    nets = {"student": student, **({"teacher": teacher} if teacher is not None else {})}
    errors = {}
    with torch.no_grad():
        checks = [(name, {"z": z, "t": t, "y": y}, m.network(z, t, y)) for name, m in nets.items()]
        for name, feeds, ref in [*checks, ("decoder", {"z": z}, _Decoder(student)(z))]:
            got = _session(out / f"{name}.onnx.gz").run(None, {k: v.numpy() for k, v in feeds.items()})[0]
            errors[name] = float((torch.from_numpy(got) - ref).abs().max())
        if pixel is not None:
            x, t_real = torch.randn((4, *pixel.sample_shape), generator=g), torch.tensor([999.0, 612.7, 40.25, 0.0])
            got = _session(out / "pixel.onnx.gz").run(None, {"x": x.numpy(), "t": t_real.numpy()})[0]
            errors["pixel"] = float((torch.from_numpy(got) - _Pixel(pixel)(x, t_real)).abs().max())
    return errors


def _predict_x0(net: Any, c: dict[str, Any], x: torch.Tensor, t: int, y: torch.Tensor, a: float,
                w: float | None) -> torch.Tensor:
    """x̂_0 (float64, clipped) from one network (v̂: √ᾱ·x − √(1 − ᾱ)·v̂) or, guided, from ε̃ = ε(∅) + w·(ε(y) − ε(∅))
    (x − √(1 − ᾱ)·ε̃)/√ᾱ, with one call where w is 0 or 1 and one batch of 2B otherwise, as guided_eps does."""
    def call(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        feeds = {"z": xs.float().numpy(), "t": torch.full((xs.shape[0],), t).numpy(), "y": ys.numpy()}
        return torch.from_numpy(net.run(None, feeds)[0]).double()

    if c["prediction"] == "v":
        x0 = a**0.5 * x - (1 - a) ** 0.5 * call(x, y)
    else:
        null = torch.full_like(y, NULL_LABEL)
        if w in (0.0, 1.0):
            eps = call(x, null if w == 0 else y)
        else:
            eps_y, eps_null = call(torch.cat([x, x]), torch.cat([y, null])).chunk(2)
            eps = eps_null + w * (eps_y - eps_null)
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
    return x0.clamp(-c["clip"], c["clip"])


def onnx_sample(out_dir: str | Path, z: torch.Tensor, y: torch.Tensor, *, teacher_steps: int | None = None,
                guidance: float | None = None) -> torch.Tensor:
    """The page's sampler in Python, on the exported graphs alone (onnxruntime, ``sampler.json``): from the noise
    ``z`` (B, c, h, w) and the digits ``y`` (B,) to images (B, 1, 32, 32). The student by default; with
    ``teacher_steps`` the teacher, guided with weight ``guidance`` (default: its ``guidance``). Each step: x̂_0 from
    the network, ε̂ = (z − √ᾱ_t·x̂_0)/√(1 − ᾱ_t), then DDIM (η = 0) to the next timestep (ᾱ = 1 after the last).
    The reference the page's JavaScript is checked against, itself checked against the package's samplers."""
    out = Path(out_dir)
    constants = json.loads((out / "sampler.json").read_text())
    name = "student" if teacher_steps is None else "teacher"
    c = constants[name]
    if teacher_steps is None:
        timesteps, abars, w = c["timesteps"], list(c["alphas_cumprod"]), None
    else:
        timesteps = c["steps"][str(teacher_steps)]
        abars = [c["alphas_cumprod"][s] for s in timesteps]
        w = float(c["guidance"] if guidance is None else guidance)
    net, abars = _session(out / c["file"]), [*abars, 1.0]
    x = z.double()
    for i, t in enumerate(timesteps):
        a, a_next = abars[i], abars[i + 1]
        x0 = _predict_x0(net, c, x, t, y, a, w)
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
        x = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
    return torch.from_numpy(_session(out / constants["decoder"]["file"]).run(None, {"z": x.float().numpy()})[0])


def pixel_noise(n: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise the package's DPM-Solver++(2M) SDE draws for ``n`` pixel samples in ``steps`` steps from ``seed``
    (CPU): the start x_T (n, 1, 32, 32), then one z (steps − 1, n, 1, 32, 32) for each step but the last."""
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, 1, 32, 32), generator=g)
    return x_T, torch.stack([torch.randn((n, 1, 32, 32), generator=g) for _ in range(steps - 1)])


def onnx_pixel_sample(out_dir: str | Path, n: int, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """The page's pixel sampler in Python on the exported graph alone: the package's DPM-Solver++(2M) SDE
    (:func:`mnistdiff.solvers.dpm_solver_pp_2m_sde`) on the points in ``sampler.json``, x̂_0 = clip((x − b·ε̂)/a)
    from the ONNX graph, ``n`` images (n, 1, 32, 32) from the noise ``seed`` gives (:func:`pixel_noise`: x_T, then
    one z a step). The reference the page's JavaScript, fed that same noise, is checked against."""
    out = Path(out_dir)
    c = json.loads((out / "sampler.json").read_text())["pixel"]
    pts, net = c["steps"][str(steps)], _session(out / c["file"])
    points = [PathPoint(a, b, 0.0, 0.0) for a, b in zip(pts["a"], pts["b"])]

    def denoise(x: torch.Tensor, i: int) -> torch.Tensor:
        feeds = {"x": x.float().numpy(), "t": torch.full((x.shape[0],), pts["times"][i]).float().numpy()}
        eps = torch.from_numpy(net.run(None, feeds)[0]).double()
        return ((x - points[i].b * eps) / points[i].a).clamp(-c["clip"], c["clip"])

    g = torch.Generator().manual_seed(seed)
    return dpm_solver_pp_2m_sde(denoise, points, torch.randn((n, *c["shape"]), generator=g), g).float()
