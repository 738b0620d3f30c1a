"""MNIST from the repository's own IDX files, verified by checksum, as 32×32 tensors in [-1, 1].

The four gzipped IDX files of the MNIST database (LeCun, Cortes & Burges; CC BY-SA 3.0) ship in
``mnistdiff/assets/mnist`` with their SHA-256 sums, so nothing is ever downloaded. Another copy
can be used through ``data_dir``: either a folder holding the files directly (gzipped or not) or
torchvision's layout ``<data_dir>/MNIST/raw/``.

Images are padded 28→32 with background (so that a UNet can halve the resolution three times)
and scaled from [0, 255] to [-1, 1]; labels are kept for plots and evaluation.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistdiff.files import ASSET_DIR as PACKAGE_ASSETS

__all__ = [
    "ASSET_DIR",
    "MNISTDataError",
    "MNISTSplit",
    "load_mnist",
    "to_unit_range",
    "to_uint8",
    "pad_to_32",
]

ASSET_DIR = PACKAGE_ASSETS / "mnist"

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

RESTORE_HINT = (
    "Restore the shipped copy with `git checkout -- mnistdiff/assets/mnist` "
    "(or copy the four gzipped IDX files and SHA256SUMS.* from the project's shared/mnist/ folder), "
    "or point --data_dir / data_dir= at another copy in torchvision's layout (<dir>/MNIST/raw/)."
)


class MNISTDataError(RuntimeError):
    """A missing, corrupt or unreadable MNIST file; the message names the file and the fix."""


@dataclass(frozen=True)
class MNISTSplit:
    """One split of MNIST, ready for training.

    images: float32 ``(N, 1, 32, 32)`` in [-1, 1]; labels: int64 ``(N,)``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> MNISTSplit:
        return MNISTSplit(self.images.to(device), self.labels.to(device))

    def subset(self, n: int | None, seed: int = 0) -> MNISTSplit:
        """The first ``n`` images of a seeded permutation (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].to(self.images.device)
        return MNISTSplit(self.images[idx], self.labels[idx])


def _read_sums(folder: Path, name: str) -> dict[str, str]:
    path = folder / name
    if not path.exists():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def _find_file(folder: Path, stem: str) -> Path:
    for candidate in (
        folder / f"{stem}.gz",
        folder / stem,
        folder / "MNIST" / "raw" / stem,
        folder / "MNIST" / "raw" / f"{stem}.gz",
    ):
        if candidate.is_file():
            return candidate
    raise MNISTDataError(f"MNIST file {stem}(.gz) is missing from {folder}. {RESTORE_HINT}")


def _verified_bytes(path: Path) -> bytes:
    """The file's IDX bytes (gunzipped when needed), checked against SHA256SUMS.gz / .raw."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise MNISTDataError(f"cannot read MNIST file {path}: {err}. {RESTORE_HINT}") from err
    sums = {**_read_sums(path.parent, "SHA256SUMS.gz"), **_read_sums(path.parent, "SHA256SUMS.raw")}
    expected = sums.get(path.name)
    if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
        raise MNISTDataError(
            f"MNIST file {path} is corrupt: its SHA-256 does not match {path.parent}/SHA256SUMS.*. {RESTORE_HINT}"
        )
    if path.suffix == ".gz":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError) as err:
            raise MNISTDataError(f"MNIST file {path} is not valid gzip ({err}). {RESTORE_HINT}") from err
    return blob


def _parse_idx(blob: bytes, path: Path, kind: str) -> np.ndarray:
    """Parse an IDX file: magic 2051 for images (N, 28, 28), 2049 for labels (N,)."""
    magic = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    want = 2051 if kind == "images" else 2049
    if magic != want:
        raise MNISTDataError(f"MNIST file {path} has magic number {magic}, expected {want}. {RESTORE_HINT}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(blob) - offset != count:
        raise MNISTDataError(
            f"MNIST file {path} is truncated: {len(blob) - offset} bytes of data, expected {count}. {RESTORE_HINT}"
        )
    return np.frombuffer(blob, dtype=np.uint8, offset=offset).reshape(dims)


def pad_to_32(images_u8: torch.Tensor) -> torch.Tensor:
    """Pad ``(N, 1, 28, 28)`` to ``(N, 1, 32, 32)`` with zeros (background) on every side."""
    return torch.nn.functional.pad(images_u8, (2, 2, 2, 2))


def to_unit_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]:  x = 2·u/255 − 1."""
    return images_u8.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255], clamping and rounding (inverse of :func:`to_unit_range`)."""
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()


_CACHE: dict[tuple[str, str], MNISTSplit] = {}


def load_mnist(
    split: str = "train", data_dir: str | Path | None = None, device: str | torch.device = "cpu",
) -> MNISTSplit:
    """Load one split (``"train"``: 60,000 images, ``"test"``: 10,000) as 32×32 tensors in [-1, 1].

    The files are verified against their SHA-256 sums; a missing, truncated or corrupt file raises
    :class:`MNISTDataError` naming the file and how to restore it. Results are cached per process.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(data_dir) if data_dir is not None else ASSET_DIR
    if not folder.is_dir():
        raise MNISTDataError(f"MNIST folder {folder} does not exist. {RESTORE_HINT}")
    key = (str(folder.resolve()), split)
    if key not in _CACHE:
        arrays = {}
        for kind in ("images", "labels"):
            path = _find_file(folder, FILES[(split, kind)])
            arrays[kind] = _parse_idx(_verified_bytes(path), path, kind)
        if arrays["images"].shape[0] != arrays["labels"].shape[0]:
            raise MNISTDataError(f"MNIST {split} images and labels disagree in length. {RESTORE_HINT}")
        images = pad_to_32(torch.from_numpy(arrays["images"].copy()).unsqueeze(1))
        labels = torch.from_numpy(arrays["labels"].astype(np.int64))
        _CACHE[key] = MNISTSplit(to_unit_range(images), labels)
    return _CACHE[key].to(device)
