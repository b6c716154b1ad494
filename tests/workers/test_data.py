"""Datasets: digits, npz layouts, malformed data -> DataError, torchvision on-disk formats."""

from __future__ import annotations

import importlib.util
import pickle
import struct

import numpy as np
import pytest

from tests.workers.conftest import write_npz
from workers import DataError, TrainConfig, dataset_info, load_data

HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(
    not HAVE_TORCHVISION,
    reason="torchvision is an optional extra (`vision`); its PyPI wheel does not import beside "
    "the CPU torch 2.13 wheel here",
)


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape)).astype(np.uint8)


def _labels(n: int, classes: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def test_digits_info_is_the_split_of_1797_8x8_images():
    info = dataset_info(TrainConfig())
    assert (info.name, info.in_channels, info.num_classes, info.input_size) == (
        "digits",
        1,
        10,
        (8, 8),
    )
    assert (info.num_train, info.num_val) == (1438, 359)


@pytest.mark.parametrize("val_fraction", [0.1, 0.2, 0.5])
def test_digits_info_without_loading_matches_the_loaded_split(val_fraction):
    config = TrainConfig(val_fraction=val_fraction)
    assert dataset_info(config) == load_data(config).info


def test_digits_read_without_sklearn_are_sklearns_digits():
    from sklearn.datasets import load_digits

    from workers.data import _digits

    images, target = _digits()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)


def test_digits_with_an_empty_split_is_a_data_error_before_any_loading():
    with pytest.raises(DataError, match="both need >= 1"):
        dataset_info(TrainConfig(val_fraction=0.0001))


def test_digits_is_loaded_once_per_process_and_normalised_with_train_statistics():
    first = load_data(TrainConfig(seed=1))
    assert load_data(TrainConfig(seed=2, lr=0.5)) is first  # trial settings share the data
    assert float(first.x_train.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(first.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert str(first.x_train.dtype) == "torch.float32" and str(first.y_train.dtype) == "torch.int64"


def test_split_does_not_depend_on_the_trial_seed():
    a = load_data(TrainConfig(val_fraction=0.25))
    b = load_data(TrainConfig(val_fraction=0.25, seed=7))
    assert a is b and len(a.x_val) == round(1797 * 0.25)


@pytest.mark.parametrize(
    "train_shape,expect",
    [
        ((3, 12, 10), (3, (12, 10))),  # NCHW
        ((12, 10, 3), (3, (12, 10))),  # NHWC
        ((12, 10), (1, (12, 10))),  # (N, H, W) gets a channel
        ((1, 6, 6), (1, (6, 6))),
        ((6, 6, 4), (4, (6, 6))),
    ],
)
def test_npz_layouts_are_recognised(tmp_path, train_shape, expect):
    dataset = write_npz(tmp_path / "d.npz", _images(40, train_shape), _labels(40))
    data = load_data(TrainConfig(dataset=dataset))
    channels, size = expect
    assert (data.info.in_channels, data.info.input_size, data.info.num_classes) == (
        channels,
        size,
        3,
    )
    assert (data.info.num_train, data.info.num_val) == (32, 8)
    assert tuple(data.x_train.shape[1:]) == (channels, *size)
    # per channel: zero mean and unit std over the training split
    assert data.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (data.x_train.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2


def test_npz_with_its_own_validation_split_uses_it_as_given(tmp_path):
    dataset = write_npz(
        tmp_path / "d.npz",
        _images(30, (8, 8, 3)),
        _labels(30),
        _images(7, (8, 8, 3), seed=5),
        _labels(7, seed=6),
    )
    data = load_data(TrainConfig(dataset=dataset, val_fraction=0.5))
    assert (data.info.num_train, data.info.num_val, data.info.in_channels) == (30, 7, 3)
    np.testing.assert_array_equal(data.y_val.numpy(), _labels(7, seed=6))


def test_npz_num_classes_key_sets_the_head_size(tmp_path):
    dataset = write_npz(
        tmp_path / "d.npz", _images(20, (5, 5)), _labels(20), num_classes=np.int64(7)
    )
    assert dataset_info(TrainConfig(dataset=dataset)).num_classes == 7


def test_rewritten_npz_is_reloaded(tmp_path):
    path = tmp_path / "d.npz"
    write_npz(path, _images(20, (5, 5)), _labels(20))
    assert dataset_info(TrainConfig(dataset=f"npz:{path}")).input_size == (5, 5)
    write_npz(path, _images(20, (6, 6)), _labels(20))
    assert dataset_info(TrainConfig(dataset=f"npz:{path}")).input_size == (6, 6)


@pytest.mark.parametrize(
    "arrays,message",
    [
        (
            {"x_train": _images(10, (4, 4)), "y_train": np.array([0] * 9 + [-1])},
            "labels out of range",
        ),
        (
            {"x_train": _images(10, (4, 4)), "y_train": np.full(10, 5), "num_classes": np.int64(3)},
            "labels out of range in .*allowed: 0..2",
        ),
        ({"x_train": _images(10, (4, 4)), "y_train": np.full(10, 0.5)}, "non-integer labels"),
        ({"x_train": _images(10, (4, 4)), "y_train": _labels(9)}, "9 labels but the images are 10"),
        ({"x_train": _images(10, (2, 4, 4, 2)), "y_train": _labels(10)}, "allowed: \\(N, H, W\\)"),
        (
            {"x_train": _images(10, (5, 5, 5)), "y_train": _labels(10)},
            "cannot tell the channel axis",
        ),
        ({"x_train": np.zeros((0, 4, 4)), "y_train": np.zeros(0, dtype=int)}, "is empty"),
        ({"x_train": _images(10, (4, 4))}, "lacks y_train"),
        (
            {"x_train": _images(10, (4, 4)), "y_train": _labels(10), "x_val": _images(3, (4, 4))},
            "only one of x_val",
        ),
        (
            {
                "x_train": _images(10, (4, 4)),
                "y_train": _labels(10),
                "x_val": _images(3, (5, 5)),
                "y_val": _labels(3),
            },
            "must match",
        ),
        ({"x_train": _images(1, (4, 4)), "y_train": _labels(1)}, "both need >= 1"),
        ({"x_train": np.full((4, 3, 3), np.nan), "y_train": _labels(4)}, "NaN"),
        ({"x_train": _images(10, (4, 4)), "y_train": np.zeros(10, dtype=int)},
         "holds one class only \\(label 0\\); a classifier needs at least 2"),
    ],
)
def test_malformed_npz_gives_a_readable_data_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_data(TrainConfig(dataset=f"npz:{path}"))


def test_missing_npz_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        dataset_info(TrainConfig(dataset=f"npz:{tmp_path / 'nope.npz'}"))


def test_torchvision_dataset_info_needs_no_files():
    info = dataset_info(TrainConfig(dataset="cifar100", data_dir="/nonexistent"))
    assert (info.in_channels, info.num_classes, info.input_size) == (3, 100, (32, 32))
    assert info.num_train + info.num_val == 50000


@pytest.mark.skipif(HAVE_TORCHVISION, reason="checks the message shown when torchvision is absent")
def test_torchvision_dataset_without_torchvision_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="torchvision.*`vision` extra or use `npz:PATH`"):
        load_data(TrainConfig(dataset="cifar10", data_dir=str(tmp_path)))


# -- the real on-disk formats, read through torchvision -------------------------------------
def _write_cifar10(root, n_per_batch: int = 4) -> None:
    """CIFAR-10's python version: pickled dicts ("data": uint8 rows (N, 3072), "labels")."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, size=n_per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def _write_mnist(root, n: int = 12) -> None:
    """MNIST idx files: magic, dims (big-endian int32), then uint8 data."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", 4)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, count) + labels.tobytes()
        )


@needs_torchvision
def test_cifar10_python_batches_are_read_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    _write_cifar10(tmp_path)
    # Our files are the real format but not the real bytes: skip only the md5 check.
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    data = load_data(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), val_fraction=0.25))
    assert data.info.in_channels == 3 and data.info.input_size == (32, 32)
    assert (data.info.num_train, data.info.num_val) == (15, 5)
    assert data.flip


@needs_torchvision
def test_mnist_idx_files_are_read_through_torchvision(tmp_path):
    _write_mnist(tmp_path)
    data = load_data(TrainConfig(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.25))
    assert (data.info.in_channels, data.info.input_size) == (1, (28, 28))
    assert (data.info.num_train, data.info.num_val) == (9, 3)


@needs_torchvision
def test_missing_torchvision_files_and_no_network_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.svhn as svhn
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    # SVHN downloads with the `download_url` it imported; never fetch 180 MB in a test.
    monkeypatch.setattr(svhn, "download_url", offline, raising=False)
    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(
        DataError, match="put the files in .* standard layout, or allow downloading"
    ):
        load_data(TrainConfig(dataset="svhn", data_dir=str(tmp_path)))
