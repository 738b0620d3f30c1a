"""Export a distilled student for the browser: its network and its VAE's decoder as ONNX graphs, and the constants
a page's sampler needs as JSON (issue 25; the page runs them with onnxruntime-web).

The page mirrors :meth:`mnistdiff.model.DiffusionModel.sample` for a student: for each of its timesteps t (high to
low), v̂ = unet(z, t, y); x̂_0 = clip(√ᾱ_t·z − √(1 − ᾱ_t)·v̂, ±c); ε̂ = (z − √ᾱ_t·x̂_0)/√(1 − ᾱ_t); then DDIM (η = 0)
to the next timestep, z = √ᾱ_next·x̂_0 + √(1 − ᾱ_next)·ε̂ (ᾱ = 1 after the last); the image is decoder(z).
``sampler.json`` holds the timesteps, ᾱ at each, the clip c, the latent shape and the guidance weight folded in.
:func:`check_export` runs the graphs with onnxruntime and reports their largest difference from PyTorch.

Needs the ``[export]`` extra (onnx, onnxscript, onnxruntime); nothing else in the package imports this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistdiff.files import atomic_write_text
from mnistdiff.model import DiffusionModel

__all__ = ["OPSET", "export_student", "check_export", "onnx_sample"]

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


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output: str, path: Path) -> Path:
    """``module`` as one self-contained ONNX file at ``path``, its batch dimension dynamic."""
    batch = torch.export.Dim("batch")
    params = list(module.forward.__code__.co_varnames[1:1 + len(args)])
    torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=[output], dynamo=True,
                      opset_version=OPSET, external_data=False, dynamic_shapes={p: {0: batch} for p in params})
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_student(student: DiffusionModel, out_dir: str | Path) -> dict[str, Path]:
    """Write ``unet.onnx`` ((z, t, y) → v̂), ``decoder.onnx`` (z → image) and ``sampler.json`` into ``out_dir``."""
    record = student.distillation
    if record is None or student.codec is None or student.schedule is None:
        raise ValueError("export_student takes a distilled class-conditional latent model (mnistdiff distill)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c, h, w = student.sample_shape
    z, t, y = torch.randn(2, c, h, w), torch.tensor(record["timesteps"][:2]), torch.tensor([3, 7])
    paths = {"unet": _export(student.network, (z, t, y), ["z", "t", "y"], "v", out / "unet.onnx"),
             "decoder": _export(_Decoder(student), (z,), ["z"], "image", out / "decoder.onnx")}
    abar = student.schedule.alphas_cumprod.double()
    constants: dict[str, Any] = {
        "timesteps": [int(s) for s in record["timesteps"]],
        "alphas_cumprod": [float(abar[s]) for s in record["timesteps"]],
        "clip": float(student.clip_range[1]), "latent_shape": [c, h, w], "guidance": record["guidance"],
        "num_classes": student.num_classes, "prediction": "v", "opset": OPSET,
        "files": {k: {"name": p.name, "sha256": _sha256(p)} for k, p in paths.items()},
        "student_weights_sha256": student.meta.get("weights_sha256"),
    }
    paths["sampler"] = out / "sampler.json"
    atomic_write_text(paths["sampler"], json.dumps(constants, indent=2) + "\n")
    return paths


def check_export(student: DiffusionModel, out_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """The largest absolute difference between the exported graphs under onnxruntime and PyTorch, on fixed inputs."""
    import onnxruntime as ort

    out = Path(out_dir)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((4, *student.sample_shape), generator=g)
    t = torch.tensor([999, 745, 492, 0]).clamp(max=student.schedule.num_timesteps - 1 if student.schedule else 999)
    y = torch.tensor([0, 3, 7, 9])
    errors = {}
    with torch.no_grad():
        for name, feeds, ref in (
            ("unet", {"z": z, "t": t, "y": y}, student.network(z, t, y)),
            ("decoder", {"z": z}, _Decoder(student)(z)),
        ):
            session = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
            got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
            errors[name] = float((torch.from_numpy(got) - ref).abs().max())
    return errors


def onnx_sample(out_dir: str | Path, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The page's sampler in Python, on the exported graphs alone (onnxruntime, ``sampler.json``): from the noise
    ``z`` (B, c, h, w) and the digits ``y`` (B,) to images (B, 1, 32, 32). The reference the page's JavaScript is
    checked against, itself checked against :meth:`~mnistdiff.model.DiffusionModel.sample`."""
    import onnxruntime as ort

    out = Path(out_dir)
    constants = json.loads((out / "sampler.json").read_text())
    unet = ort.InferenceSession(str(out / "unet.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    abars = [*constants["alphas_cumprod"], 1.0]
    x = z.double()
    for i, t in enumerate(constants["timesteps"]):
        feeds = {"z": x.float().numpy(), "t": torch.full((x.shape[0],), t).numpy(), "y": y.numpy()}
        v = torch.from_numpy(unet.run(None, feeds)[0]).double()
        a, a_next = abars[i], abars[i + 1]
        x0 = (a**0.5 * x - (1 - a) ** 0.5 * v).clamp(-constants["clip"], constants["clip"])
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
        x = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps
    return torch.from_numpy(decoder.run(None, {"z": x.float().numpy()})[0])
