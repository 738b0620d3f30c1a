"""MNIST loading: shapes, range, zero-background padding, the published label counts, an independent
parse of the IDX files, and clear errors for missing, corrupt or truncated files."""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest
import torch

from mnistdiff.data import ASSET_DIR, MNISTDataError, MNISTSplit, load_mnist, pad_to_32, to_uint8, to_unit_range

# LeCun, Cortes & Burges: digits 0–9 in the training and test sets.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def train() -> MNISTSplit:
    return load_mnist("train")


@pytest.fixture(scope="module")
def test_split() -> MNISTSplit:
    return load_mnist("test")


def _read_idx_gz(path) -> np.ndarray:
    """An independent IDX parser: big-endian magic, dims, then uint8 data."""
    raw = gzip.open(path, "rb").read()
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype == 0x08
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


# ----------------------------------------------------------------------------- the shipped data


def test_shapes_and_dtypes(train, test_split):
    assert train.images.shape == (60000, 1, 32, 32)
    assert test_split.images.shape == (10000, 1, 32, 32)
    assert train.labels.shape == (60000,) and test_split.labels.shape == (10000,)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert len(train) == 60000 and len(test_split) == 10000


@pytest.mark.parametrize("split", ["train", "test"])
def test_range_is_minus_one_to_one(split, train, test_split):
    x = train.images if split == "train" else test_split.images
    assert float(x.min()) == -1.0
    assert float(x.max()) == 1.0
    # every value is one of the 256 levels 2u/255 − 1
    u = (x[:500] + 1) * 127.5
    torch.testing.assert_close(u, u.round(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("split", ["train", "test"])
def test_padding_is_background(split, train, test_split):
    x = train.images if split == "train" else test_split.images
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(x[:, 0][:, border] == -1.0)
    # and the digits are inside: every image has some ink in the 28×28 centre
    assert torch.all(x[:, 0, 2:30, 2:30].amax(dim=(1, 2)) > 0)


def test_label_counts_train(train):
    assert torch.bincount(train.labels, minlength=10).tolist() == TRAIN_COUNTS
    assert sum(TRAIN_COUNTS) == 60000


def test_label_counts_test(test_split):
    assert torch.bincount(test_split.labels, minlength=10).tolist() == TEST_COUNTS
    assert sum(TEST_COUNTS) == 10000


def test_matches_independent_parse(test_split):
    """The centre 28×28 is the raw IDX image scaled to [−1, 1]; labels are the raw labels, in order."""
    imgs = _read_idx_gz(ASSET_DIR / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx_gz(ASSET_DIR / "t10k-labels-idx1-ubyte.gz")
    assert imgs.shape == (10000, 28, 28)
    expected = imgs.astype(np.float64) / 255 * 2 - 1
    np.testing.assert_allclose(test_split.images[:, 0, 2:30, 2:30].double().numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(test_split.labels.numpy(), labels.astype(np.int64))


def test_first_training_label_is_five(train):
    """The famous first MNIST training digit is a 5 (then 0, 4, 1, 9)."""
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_cached_per_process():
    a, b = load_mnist("test"), load_mnist("test")
    assert torch.equal(a.images, b.images)


def test_bad_split_name():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")


# ----------------------------------------------------------------------------- conversions


def test_unit_range_uint8_round_trip():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_unit_range(u)
    np.testing.assert_allclose(x.double().numpy().ravel(), np.arange(256) / 127.5 - 1, atol=1e-6)
    assert torch.equal(to_uint8(x), u)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-5.0, -1.0, 0.0, 0.999, 1.0, 7.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 255]  # 0 → 127.5 rounds (half to even) to 128
    assert to_uint8(x).dtype == torch.uint8


def test_pad_to_32_adds_zeros():
    u = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    p = pad_to_32(u)
    assert p.shape == (2, 1, 32, 32) and p.dtype == torch.uint8
    assert int(p.sum()) == 200 * 2 * 28 * 28
    assert torch.all(p[..., :2, :] == 0) and torch.all(p[..., :, 30:] == 0)


# ----------------------------------------------------------------------------- subsets


def test_subset_is_seeded_and_keeps_pairs(test_split):
    a = test_split.subset(100, seed=3)
    b = test_split.subset(100, seed=3)
    c = test_split.subset(100, seed=4)
    assert len(a) == 100
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels) or not torch.equal(a.images, c.images)
    # the same permutation picks images and labels: each image's label matches the full split's
    idx = torch.randperm(10000, generator=torch.Generator().manual_seed(3))[:100]
    assert torch.equal(a.images, test_split.images[idx])
    assert torch.equal(a.labels, test_split.labels[idx])


def test_subset_none_or_large_is_everything(test_split):
    assert test_split.subset(None) is test_split
    assert test_split.subset(10_000) is test_split
    assert test_split.subset(10**6) is test_split
    with pytest.raises(ValueError):
        test_split.subset(0)


def test_split_to_device(test_split):
    moved = test_split.subset(5).to("cpu")
    assert moved.images.device.type == "cpu" and len(moved) == 5


# ----------------------------------------------------------------------------- other copies and damaged files


@pytest.fixture
def copied_assets(tmp_path):
    """A writable copy of the shipped test-split files and their checksums."""
    d = tmp_path / "mnist"
    d.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "SHA256SUMS.gz", "SHA256SUMS.raw"):
        shutil.copyfile(ASSET_DIR / name, d / name)
    return d


def test_copied_folder_loads(copied_assets, test_split):
    loaded = load_mnist("test", data_dir=copied_assets)
    assert torch.equal(loaded.images, test_split.images)


def test_corrupt_file_names_the_file(copied_assets):
    path = copied_assets / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(MNISTDataError, match="t10k-labels-idx1-ubyte.gz") as err:
        load_mnist("test", data_dir=copied_assets)
    assert "corrupt" in str(err.value) and "SHA-256" in str(err.value)


def test_missing_file_names_the_file(copied_assets):
    (copied_assets / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(MNISTDataError, match="t10k-images-idx3-ubyte") as err:
        load_mnist("test", data_dir=copied_assets)
    assert "missing" in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(MNISTDataError, match="does not exist"):
        load_mnist("test", data_dir=tmp_path / "nowhere")


def test_truncated_gzip_without_checksums(copied_assets):
    """Without SHA256SUMS the damage is still caught: a truncated gzip is reported, naming the file."""
    for s in ("SHA256SUMS.gz", "SHA256SUMS.raw"):
        (copied_assets / s).unlink()
    path = copied_assets / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(MNISTDataError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist("test", data_dir=copied_assets)


def _torchvision_layout(tmp_path, with_sums: bool = False):
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(ASSET_DIR / f"{stem}.gz", "rb") as src:
            (raw / stem).write_bytes(src.read())
    if with_sums:
        shutil.copyfile(ASSET_DIR / "SHA256SUMS.raw", raw / "SHA256SUMS.raw")
    return tmp_path / "tv", raw


def test_torchvision_layout_uncompressed(tmp_path, test_split):
    root, _ = _torchvision_layout(tmp_path)
    loaded = load_mnist("test", data_dir=root)
    assert torch.equal(loaded.images, test_split.images)
    assert torch.equal(loaded.labels, test_split.labels)


def test_torchvision_layout_checks_raw_sums(tmp_path):
    root, raw = _torchvision_layout(tmp_path, with_sums=True)
    path = raw / "t10k-images-idx3-ubyte"
    blob = bytearray(path.read_bytes())
    blob[5000] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(MNISTDataError, match="t10k-images-idx3-ubyte"):
        load_mnist("test", data_dir=root)


def test_truncated_raw_file(tmp_path):
    root, raw = _torchvision_layout(tmp_path)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-784])
    with pytest.raises(MNISTDataError, match="truncated"):
        load_mnist("test", data_dir=root)


def test_wrong_magic_number(tmp_path):
    root, raw = _torchvision_layout(tmp_path)
    path = raw / "t10k-labels-idx1-ubyte"
    blob = bytearray(path.read_bytes())
    blob[3] = 3  # 2049 → 2051: an images header on a labels file
    path.write_bytes(bytes(blob))
    with pytest.raises(MNISTDataError, match="magic"):
        load_mnist("test", data_dir=root)


def test_images_and_labels_disagree(tmp_path):
    root, raw = _torchvision_layout(tmp_path)
    labels = struct.pack(">II", 2049, 9999) + bytes(9999)  # a valid labels file, one label short
    (raw / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(MNISTDataError, match="disagree"):
        load_mnist("test", data_dir=root)
