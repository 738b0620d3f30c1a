"""The one-file model format (:mod:`mnistdiff.modelfile`) and the converter from the old ``.pt`` pairs.

Golden values come from independent computations: the weights hash is recomputed here with hashlib over
numpy bytes, the header is read with safetensors' own reader, and a converted model must sample exactly
the images its old checkpoint samples.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from mnistdiff import modelfile as M
from mnistdiff.config import (
    DDPMRunConfig,
    DiffusionConfig,
    LDMRunConfig,
    UNetConfig,
    VAEConfig,
    VAERunConfig,
    from_dict,
    to_dict,
)
from mnistdiff.ddim import ddim_sample_loop
from mnistdiff.modelfile import (
    CheckpointError,
    CheckpointIntegrityError,
    load_model_file,
    read_model_meta,
    save_model_file,
    weights_sha256,
)
from mnistdiff.schedules import NoiseSchedule
from mnistdiff.training import checkpoints as C
from mnistdiff.training.convert import convert_checkpoint
from mnistdiff.unet import UNet
from mnistdiff.vae import VAE

TINY_UNET = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                       attention_resolutions=(), num_heads=1, norm_groups=4)
TINY_LATENT_UNET = UNetConfig(in_channels=2, image_size=4, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                              attention_resolutions=(), num_heads=1, norm_groups=4)
TINY_VAE = VAEConfig(base_channels=8, channel_mults=(1, 2, 2), norm_groups=4)
DDPM_CFG = DDPMRunConfig(unet=TINY_UNET, diffusion=DiffusionConfig(timesteps=20))
LDM_CFG = LDMRunConfig(unet=TINY_LATENT_UNET, diffusion=DiffusionConfig(timesteps=20))
VAE_CFG = VAERunConfig(vae=TINY_VAE)
#: an LDM's latent numbers as training stores them: κ a float64 Python float, the clip range a float32 value
LATENT_SCALE = 0.7241622700912861
LATENT_CLIP = float(torch.tensor(4.398531436920166, dtype=torch.float32))
NP_DTYPES = {torch.float32: "<f4", torch.float64: "<f8", torch.int64: "<i8", torch.int32: "<i4", torch.uint8: "u1"}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _seeded(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with every parameter perturbed by seeded noise (the UNet's zero-initialised output layer
    would otherwise make every set of weights predict ε = 0 and sample the same images)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _unet(cfg: UNetConfig = TINY_UNET, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return _seeded(UNet(cfg), seed)


def _vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return _seeded(VAE(TINY_VAE), seed)


def _mixed_tensors() -> dict[str, torch.Tensor]:
    """A state dict with the dtypes and shapes a model file must keep: float32/64, bf16, ints, bool, 0-d, empty,
    and a non-contiguous view."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 3, generator=g)
    return {**_unet().state_dict(), "x.bf16": torch.randn(5, generator=g).to(torch.bfloat16),
            "x.f64": torch.randn(2, 2, generator=g, dtype=torch.float64), "x.i64": torch.arange(7),
            "x.bool": torch.tensor([True, False, True]), "x.scalar": torch.tensor(2.5), "x.empty": torch.zeros(0, 3),
            "x.transposed": w.t()}


def _meta(kind: str = "ddpm") -> dict:
    return {"kind": kind, "config": json.loads(json.dumps(to_dict(DDPM_CFG))), "seconds": 1.5}


def _ref_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """The documented weights hash, written independently: numpy bytes of each tensor in C order, little-endian."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        arr = np.asarray(tensors[key].numpy(), dtype=np.dtype(NP_DTYPES[tensors[key].dtype]))
        name = str(tensors[key].dtype).split(".")[1]
        h.update(json.dumps([key, name, list(arr.shape)], ensure_ascii=False).encode("utf-8") + b"\n")
        h.update(arr.tobytes(order="C"))
    return h.hexdigest()


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def _sample(model: torch.nn.Module, diffusion: DiffusionConfig, shape: tuple[int, ...], clip: float = 1.0):
    return ddim_sample_loop(model, NoiseSchedule.from_config(diffusion), shape, ddim_steps=5, eta=1.0,
                            generator=torch.Generator().manual_seed(0), clip_range=(-clip, clip)).images


@pytest.fixture
def good(tmp_path) -> Path:
    """A valid model file of a tiny DDPM."""
    return save_model_file(tmp_path / "model.safetensors", _unet().state_dict(), _meta())


def _old_pair(folder: Path, name: str, state: dict, kind: str, config, **extra) -> Path:
    """An old ``NAME.pt`` + ``NAME.json`` pair as training wrote it: the latent numbers in both files."""
    latent = {k: extra[k] for k in ("latent_scale", "latent_clip") if k in extra}
    extra.update({k: float(v) for k, v in latent.items()})
    return C.save_checkpoint(folder / f"{name}.pt", {"model": state, **latent}, kind=kind, config=to_dict(config),
                             extra=extra)


# --------------------------------------------------------------------------------------------
# Round trip and the weights hash
# --------------------------------------------------------------------------------------------


def test_round_trip_keeps_every_bit_and_dtype(tmp_path):
    tensors = _mixed_tensors()
    path = save_model_file(tmp_path / "m.safetensors", tensors, _meta())
    assert path == tmp_path / "m.safetensors"
    loaded, meta = load_model_file(path, kind="ddpm", device=torch.device("cpu"))
    _assert_same_tensors(loaded, tensors)
    assert meta["kind"] == "ddpm" and meta["config"] == _meta()["config"] and meta["seconds"] == 1.5
    assert meta["format_version"] == 2 and meta["weights_sha256"] == weights_sha256(tensors)
    assert meta["torch_version"] == torch.__version__ and "git_commit" in meta
    assert read_model_meta(path) == meta
    assert load_model_file(path, kind=("vae", "ddpm"))[1] == meta


def test_the_classes_and_git_commit_are_shared_with_the_old_format():
    assert C.CheckpointError is M.CheckpointError and C.CheckpointIntegrityError is M.CheckpointIntegrityError
    assert issubclass(CheckpointIntegrityError, CheckpointError) and C.git_commit is M.git_commit


@pytest.mark.parametrize("meta", [{}, {"kind": ""}, {"kind": 3}, {"kind": "ddpm", "bad": object()}])
def test_save_refuses_meta_without_kind_or_not_json(tmp_path, meta):
    with pytest.raises(ValueError, match="kind|JSON"):
        save_model_file(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, meta)
    assert list(tmp_path.iterdir()) == []


def test_weights_sha256_is_the_documented_hash():
    tensors = {"b": torch.arange(6, dtype=torch.int64).reshape(2, 3), "a": torch.linspace(-1, 1, 5),
               "c": torch.tensor(0.25, dtype=torch.float64), "d.é": torch.zeros(0, 2, dtype=torch.uint8)}
    assert weights_sha256(tensors) == _ref_sha256(tensors)
    # pinned, so that a change of the definition (which would orphan every recorded VAE hash) cannot go unnoticed
    assert weights_sha256({"a": torch.arange(3, dtype=torch.float32)}) == (
        "6a19554e89b8c6b795c78285a056ed190dd6316d989f3c58cdf98a5be27bd23e")


def _changed(tensors: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in tensors.items()}
    if how == "one element":
        out["w"][1, 2] = torch.nextafter(out["w"][1, 2], torch.tensor(1e9))  # the smallest possible change
    elif how == "a key":
        out["w2"] = out.pop("w")
    elif how == "the dtype":
        out["w"] = out["w"].view(torch.int32)  # same bytes, another dtype
    elif how == "the shape":
        out["w"] = out["w"].reshape(3, 2)  # same bytes, another shape
    elif how == "a tensor added":
        out["z"] = torch.zeros(0)
    return out


@pytest.mark.parametrize("how", ["one element", "a key", "the dtype", "the shape", "a tensor added"])
def test_weights_sha256_changes_with_the_weights(how):
    tensors = {"w": torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), "b": torch.ones(3)}
    assert weights_sha256(_changed(tensors, how)) != weights_sha256(tensors)


def test_weights_sha256_does_not_depend_on_the_layout(tmp_path):
    unet = _unet()
    state = unet.state_dict()
    reordered = dict(reversed(list(state.items())))
    strided = {k: v.t().contiguous().t() if v.ndim == 2 else v for k, v in state.items()}
    assert any(not v.is_contiguous() for v in strided.values())
    assert weights_sha256(reordered) == weights_sha256(strided) == weights_sha256(state)
    # the same weights in the old .pt format hash the same as in the new file
    old, _ = C.load_checkpoint(_old_pair(tmp_path, "ddpm", state, "ddpm", DDPM_CFG), kind="ddpm")
    new = save_model_file(tmp_path / "ddpm.safetensors", state, _meta())
    assert weights_sha256(old["model"]) == read_model_meta(new)["weights_sha256"] == weights_sha256(state)


def test_the_header_is_plain_safetensors_metadata(good):
    with safetensors.safe_open(str(good), framework="pt") as f:  # a second reader: safetensors' own
        header = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    _assert_same_tensors(tensors, _unet().state_dict())
    assert set(header) == {"format", "format_version", "weights_sha256", "mnistdiff"}
    assert header["format"] == "mnistdiff" and header["format_version"] == "2"
    assert header["weights_sha256"] == weights_sha256(_unet().state_dict())
    assert json.loads(header["mnistdiff"]) == read_model_meta(good)


# --------------------------------------------------------------------------------------------
# Refusals: each says what is wrong and what to do
# --------------------------------------------------------------------------------------------


def _cut(path: Path, keep) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    return path


def _flip(path: Path, where) -> Path:
    data = bytearray(path.read_bytes())
    data[where(len(data))] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def _append(path: Path, data: bytes) -> Path:
    path.write_bytes(path.read_bytes() + data)
    return path


def _text(path: Path) -> Path:
    path.write_text("just some notes\n" * 20)
    return path


def _plain_safetensors(path: Path) -> Path:
    """The same tensors written by plain safetensors, with no metadata at all."""
    safetensors.torch.save_file(safetensors.torch.load_file(path), path)
    return path


def _header_len(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _rewrite_meta(path: Path, **changes) -> Path:
    """``path`` rewritten by plain safetensors with its header metadata changed (None: removed)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        md = {**f.metadata(), **changes}
    tensors = safetensors.torch.load_file(path)
    safetensors.torch.save_file(tensors, path, metadata={k: v for k, v in md.items() if v is not None} or None)
    return path


TRUNCATED = r"is truncated.*use another copy or retrain"
NOT_OURS = r"not written by mnistdiff.*pass a model file written by mnistdiff"

REFUSALS = {
    "missing": (lambda p: p.with_name("nope.safetensors"), CheckpointIntegrityError, r"does not exist: pass the"),
    "a folder": (lambda p: p.parent, CheckpointError, r"is a folder \(it holds model\.safetensors\): pass a model"),
    "empty": (lambda p: _cut(p, lambda n: 0), CheckpointIntegrityError, TRUNCATED),
    "cut in the header": (lambda p: _cut(p, lambda n: 40), CheckpointIntegrityError, TRUNCATED),
    "cut in half": (lambda p: _cut(p, lambda n: n // 2), CheckpointIntegrityError, TRUNCATED),
    "tail cut by 3 bytes": (lambda p: _cut(p, lambda n: n - 3), CheckpointIntegrityError, TRUNCATED),
    "bytes appended": (lambda p: _append(p, b"\0\0"), CheckpointIntegrityError,
                       r"damaged \(it has bytes after its tensors\)"),
    "a flipped byte": (lambda p: _flip(p, lambda n: (_header_len(p) + n) // 2), CheckpointIntegrityError,
                       r"is corrupt: its weights do not match the hash in its header; use another copy or retrain"),
    "a damaged header": (lambda p: _flip(p, lambda n: 9), CheckpointIntegrityError, r"damaged header"),
    "a text file": (_text, CheckpointError, r"is not a model file \(not in the safetensors format\)"),
    "safetensors without metadata": (_plain_safetensors, CheckpointError, NOT_OURS),
    "safetensors of another program": (lambda p: _rewrite_meta(p, format="pt"), CheckpointError, NOT_OURS),
    "a newer format": (lambda p: _rewrite_meta(p, format_version="3"), CheckpointError,
                       r"newer mnistdiff \(format version 3.*update mnistdiff"),
    "an older format": (lambda p: _rewrite_meta(p, format_version="1"), CheckpointError,
                        r"older mnistdiff \(format version 1.*retrain"),
    "a header hash that disagrees": (lambda p: _rewrite_meta(p, weights_sha256="0" * 64), CheckpointIntegrityError,
                                     r"inconsistent metadata"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_files_are_refused_with_what_to_do(good, case):
    damage, error, message = REFUSALS[case]
    path = damage(good)
    with pytest.raises(error, match=message):
        load_model_file(path)
    if case != "a flipped byte":  # the header alone cannot see damage in the tensor data...
        with pytest.raises(error, match=message):
            read_model_meta(path)
    else:  # ...which is why load_model_file checks the weights' hash
        assert read_model_meta(path)["kind"] == "ddpm"


def test_a_file_of_another_kind_is_refused(good):
    with pytest.raises(CheckpointError, match=r"holds a 'ddpm' model, expected a 'vae' or 'ldm' one: check which file"):
        load_model_file(good, kind=("vae", "ldm"))


@pytest.mark.parametrize("kind, vae_hint", [("ddpm", False), ("ldm", True), ("cldm", True)])
@pytest.mark.parametrize("passed", ["NAME.pt", "renamed to .safetensors"])
def test_an_old_pair_is_refused_naming_the_converter(tmp_path, kind, vae_hint, passed):
    pt = _old_pair(tmp_path, "model", {"w": torch.zeros(2)}, kind, DDPM_CFG)
    path = pt if passed == "NAME.pt" else pt.rename(pt.with_suffix(".safetensors"))  # model.json stays beside it
    with pytest.raises(CheckpointError, match=rf"a '{kind}' model in the old format.*"
                                              rf"`python -m mnistdiff convert {re.escape(str(pt))}") as info:
        load_model_file(path)
    assert ("--vae VAE_PATH" in str(info.value)) == vae_hint
    assert (f"rename it to {pt.name}" in str(info.value)) == (path != pt)
    # the command it names works
    if kind == "ddpm":
        convert_checkpoint(pt if path == pt else path.rename(pt))
        assert load_model_file(pt.with_suffix(".safetensors"), kind="ddpm")[1]["converted_from"] == "model.pt"


def test_a_resume_state_is_refused_as_not_a_model(tmp_path):
    last = _old_pair(tmp_path, "last", {"w": torch.zeros(2)}, "ddpm-resume", DDPM_CFG)
    with pytest.raises(CheckpointError, match=r"resumable training state \(ddpm-resume\), not a model file"):
        read_model_meta(last)


class _RunsCode:
    """Unpickling this creates the folder ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("how", ["pickle.dumps", "torch.save"])
def test_a_malicious_pickle_named_safetensors_never_runs(tmp_path, how):
    marker = tmp_path / "code_ran"
    path = tmp_path / "model.safetensors"
    if how == "pickle.dumps":
        path.write_bytes(pickle.dumps({"model": _RunsCode(marker)}))
    else:
        torch.save({"model": _RunsCode(marker)}, path)
    for load in (read_model_meta, load_model_file):
        with pytest.raises(CheckpointError, match=r"PyTorch/pickle file, not a mnistdiff model file.*never unpickled"):
            load(path)
    assert not marker.exists(), "loading a model file ran code"
    # the file really is malicious: unpickling it would have run it
    if how == "torch.save":
        with open(path, "rb") as f:  # a file object: torch.load would treat a *.safetensors path as safetensors
            torch.load(f, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.is_dir()


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


class _FullDiskWriter:
    """A file whose write() stores half the bytes and then fails with ENOSPC."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        self._f.write(bytes(data[: len(data) // 2]))
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fill_disk(monkeypatch, name_contains: str) -> dict:
    """Make writes of temporary files whose name contains ``name_contains`` fail midway with ENOSPC."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to see which file is being written")
    real = os.fdopen
    seen = {"failed": 0}

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        if name_contains in os.readlink(f"/proc/self/fd/{fd}"):
            seen["failed"] += 1
            return _FullDiskWriter(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return seen


@pytest.mark.parametrize("previous", [True, False])
def test_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch, previous):
    path = tmp_path / "model.safetensors"
    first = _unet(seed=1).state_dict()
    if previous:
        save_model_file(path, first, _meta())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    seen = _fill_disk(monkeypatch, ".model.safetensors.")
    left = (r"the previous model\.safetensors is intact \(it still loads\)" if previous
            else r"nothing was written \(model\.safetensors did not exist before\)")
    with pytest.raises(CheckpointError, match=rf"ran out of disk space while writing .*model\.safetensors; {left} "
                                              r"and no temporary file was left behind\. Free some space"):
        save_model_file(path, _unet(seed=2).state_dict(), _meta())
    monkeypatch.undo()
    assert seen["failed"] == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file, nothing replaced
    if previous:
        _assert_same_tensors(load_model_file(path)[0], first)


# --------------------------------------------------------------------------------------------
# The converter: the old pair and the new file sample the same images
# --------------------------------------------------------------------------------------------


def test_convert_a_ddpm_samples_identically(tmp_path):
    unet = _unet()
    old = _old_pair(tmp_path, "ddpm", unet.state_dict(), "ddpm", DDPM_CFG, seconds=12.5,
                    metrics={"eval_loss": 0.125}, history=[{"epoch": 1, "train_loss": 0.5}], device="cpu")
    new = convert_checkpoint(old)
    assert new == tmp_path / "ddpm.safetensors"
    old_tensors, side = C.load_checkpoint(old, kind="ddpm")
    tensors, meta = load_model_file(new, kind="ddpm")
    _assert_same_tensors(tensors, old_tensors["model"])
    assert meta["config"] == side["config"] and meta["kind"] == "ddpm"
    for key in ("seconds", "metrics", "history", "device", "git_commit", "torch_version"):
        assert meta[key] == side[key], key
    assert meta["converted_from"] == "ddpm.pt" and meta["converted_from_sha256"] == side["sha256"]
    assert "converted_at_commit" in meta and not {"sha256", "bytes", "latent_scale"} & set(meta)
    cfg = from_dict(DDPMRunConfig, meta["config"])
    nets = []
    for state in (old_tensors["model"], tensors):
        net = UNet(cfg.unet)
        net.load_state_dict(state)
        nets.append(net.eval())
    images = [_sample(net, cfg.diffusion, (4, 1, 8, 8)) for net in nets]
    assert torch.equal(images[0], images[1])
    assert not torch.equal(images[0], _sample(_unet(seed=5), cfg.diffusion, (4, 1, 8, 8)))  # the weights matter


@pytest.fixture
def vae_pair(tmp_path) -> Path:
    return _old_pair(tmp_path, "vae", _vae().state_dict(), "vae", VAE_CFG, seconds=3.0)


def _ldm_pair(folder: Path, vae_pt: Path, kind: str = "ldm") -> Path:
    clip = torch.tensor(LATENT_CLIP, dtype=torch.float32)  # a 0-d tensor here, a Python float for the scale
    return _old_pair(folder, kind, _unet(TINY_LATENT_UNET).state_dict(), kind, LDM_CFG, latent_scale=LATENT_SCALE,
                     latent_clip=clip, vae_sha256=C.sha256_file(vae_pt), seconds=7.0)


@pytest.mark.parametrize("vae_as", ["old pair", "converted file"])
def test_convert_an_ldm_keeps_its_numbers_and_its_vae(tmp_path, vae_pair, vae_as):
    old = _ldm_pair(tmp_path, vae_pair)
    vae = vae_pair if vae_as == "old pair" else convert_checkpoint(vae_pair)
    new = convert_checkpoint(old, tmp_path / "out" / "latent.safetensors", vae=vae)
    assert new == tmp_path / "out" / "latent.safetensors"
    tensors, meta = load_model_file(new, kind="ldm")
    assert meta["latent_scale"] == LATENT_SCALE and meta["latent_clip"] == LATENT_CLIP  # exactly
    assert meta["vae_weights_sha256"] == weights_sha256(_vae().state_dict())
    assert meta["vae_weights_sha256"] == read_model_meta(convert_checkpoint(vae_pair))["weights_sha256"]
    old_tensors, _ = C.load_checkpoint(old, kind="ldm")
    _assert_same_tensors(tensors, old_tensors["model"])
    cfg = from_dict(LDMRunConfig, meta["config"])
    shape = (4, *(cfg.unet.in_channels, cfg.unet.image_size, cfg.unet.image_size))
    nets = []
    for state in (old_tensors["model"], tensors):
        net = UNet(cfg.unet)
        net.load_state_dict(state)
        nets.append(net.eval())
    old_clip = float(old_tensors["latent_clip"])
    assert torch.equal(_sample(nets[0], cfg.diffusion, shape, old_clip),
                       _sample(nets[1], cfg.diffusion, shape, meta["latent_clip"]))


@pytest.mark.parametrize("vae_as", ["old pair", "fresh model file"])
def test_convert_refuses_another_vae(tmp_path, vae_pair, vae_as):
    old = _ldm_pair(tmp_path, vae_pair)
    other = tmp_path / "other"
    other.mkdir()
    if vae_as == "old pair":
        wrong = _old_pair(other, "vae", _vae(seed=1).state_dict(), "vae", VAE_CFG)
    else:  # the right weights even, but not provably the file the LDM was trained on
        wrong = save_model_file(other / "vae.safetensors", _vae().state_dict(), {"kind": "vae"})
    with pytest.raises(CheckpointError, match=r"was trained on a different VAE than .*pass the VAE"):
        convert_checkpoint(old, vae=wrong)
    assert not old.with_suffix(".safetensors").exists()


@pytest.mark.parametrize("kind", ["ldm", "cldm"])
def test_convert_a_latent_model_requires_its_vae(tmp_path, vae_pair, kind):
    old = _ldm_pair(tmp_path, vae_pair, kind)
    with pytest.raises(ValueError, match=rf"is a '{kind}' model: pass the VAE it was trained on with --vae"):
        convert_checkpoint(old)
    assert not old.with_suffix(".safetensors").exists()


def test_convert_refuses_what_is_not_a_model(tmp_path, vae_pair):
    ddpm = _old_pair(tmp_path, "ddpm", _unet().state_dict(), "ddpm", DDPM_CFG)
    with pytest.raises(ValueError, match=r"--vae is only for latent models"):
        convert_checkpoint(ddpm, vae=vae_pair)
    with pytest.raises(ValueError, match=r"would overwrite"):
        convert_checkpoint(ddpm, ddpm)
    last = _old_pair(tmp_path, "last", _unet().state_dict(), "ddpm-resume", DDPM_CFG)
    with pytest.raises(CheckpointError, match=r"resumable training state .*convert the run's model\.pt"):
        convert_checkpoint(last)
    _flip(ddpm, lambda n: n // 2)
    with pytest.raises(CheckpointIntegrityError, match=r"SHA-256 does not match"):  # the old pair is verified
        convert_checkpoint(ddpm)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json"] * 3 + [".pt"] * 3


def test_a_diffusion_model_saves_and_loads_as_one_file_and_samples_the_same(tmp_path):
    """DiffusionModel.save → DiffusionModel.load: the same weights, config and provenance, the same samples bit for
    bit; a latent model needs the VAE it was trained on, and refuses another one."""
    from mnistdiff.model import DiffusionModel
    from mnistdiff.modelfile import load_vae, save_vae

    torch.manual_seed(0)
    cfg = DDPMRunConfig(unet=UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(), num_heads=1,
                                        norm_groups=4, image_size=8), diffusion=DiffusionConfig(timesteps=20))
    unet = UNet(cfg.unet)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model = DiffusionModel(unet.eval(), NoiseSchedule.from_config(cfg.diffusion), cfg, {"seconds": 1.5})
    path = model.save(tmp_path / "ddpm.safetensors", metrics={"note": "by hand"})
    again = DiffusionModel.load(path)
    assert again.config == cfg and again.kind == "ddpm" and again.meta["seconds"] == 1.5
    assert again.meta["metrics"] == {"note": "by hand"}
    a = model.sample(3, steps=4, seed=7).images
    b = again.sample(3, steps=4, seed=7).images
    assert torch.equal(a, b)

    vcfg = VAERunConfig(vae=VAEConfig(base_channels=8, channel_mults=(1, 2, 2), norm_groups=4))
    vae_path = save_vae(VAE(vcfg.vae), tmp_path / "vae.safetensors", vcfg)
    other_path = save_vae(VAE(vcfg.vae), tmp_path / "other.safetensors", vcfg)  # other random weights
    vae = load_vae(vae_path)
    assert vae.meta["kind"] == "vae" and vae.meta["weights_sha256"] == weights_sha256(vae.state_dict())
    lcfg = LDMRunConfig(unet=UNetConfig(in_channels=2, image_size=4, base_channels=8, channel_mults=(1,),
                                        attention_resolutions=(), num_heads=1, norm_groups=4),
                        diffusion=DiffusionConfig(timesteps=20))
    ldm_path = save_model_file(tmp_path / "ldm.safetensors", UNet(lcfg.unet).state_dict(),
                               {"kind": "ldm", "config": to_dict(lcfg), "latent_scale": 0.5, "latent_clip": 3.0,
                                "vae_weights_sha256": vae.meta["weights_sha256"]})
    ldm = DiffusionModel.load(ldm_path, vae=vae_path)
    assert ldm.codec is not None and ldm.codec.scale == 0.5 and ldm.clip_range == (-3.0, 3.0)
    assert ldm.sample(2, steps=3).images.shape == (2, 1, 32, 32)
    with pytest.raises(CheckpointError, match="pass the VAE it was trained on"):
        DiffusionModel.load(ldm_path)
    with pytest.raises(CheckpointError, match="trained on a different VAE"):
        DiffusionModel.load(ldm_path, vae=other_path)
