"""Datasets for trials: load, check, split, normalise and cache them as in-memory tensors.

Every dataset becomes float32 NCHW tensors normalised per channel with training-split
statistics, plus int64 labels. A worker process runs many trials, so loaded datasets are
cached per process (keyed by everything that changes the tensors).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.config import TrainConfig
from workers.errors import DataError

if TYPE_CHECKING:  # torch loads when tensors are made: a bad dataset is reported without it
    import torch

SPLIT_SEED = 20240607  # the train/val split never depends on the trial seed
_CACHE_SIZE = 4  # datasets kept per process (CIFAR-10 as float32 is ~600 MB)

# name: (in_channels, num_classes, (H, W), train-set size, horizontal flips keep the label)
_KNOWN: dict[str, tuple[int, int, tuple[int, int], int, bool]] = {
    "digits": (1, 10, (8, 8), 1797, False),
    "cifar10": (3, 10, (32, 32), 50000, True),
    "cifar100": (3, 100, (32, 32), 50000, True),
    "mnist": (1, 10, (28, 28), 60000, False),
    "fashion_mnist": (1, 10, (28, 28), 60000, True),
    "svhn": (3, 10, (32, 32), 73257, False),
}


@dataclass(frozen=True)
class DatasetInfo:
    """Shape facts of a dataset, as a trial will see it (after the validation split)."""

    name: str
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]  # (H, W)
    num_train: int
    num_val: int


@dataclass(frozen=True)
class LoadedData:
    """A dataset ready to train on: normalised float32 NCHW tensors and int64 labels (CPU)."""

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: tuple[float, ...]  # per channel, of the raw training split
    std: tuple[float, ...]
    flip: bool  # horizontal flips are label-preserving (used by `augment`)


def _split_sizes(n: int, val_fraction: float, name: str) -> tuple[int, int]:
    """(train, validation) sizes of a dataset of `n` samples split off by `val_fraction`."""
    n_val = int(round(n * val_fraction))
    n_train = n - n_val
    if n_train < 1 or n_val < 1:
        raise DataError(
            f"dataset `{name}` has {n} samples: a val_fraction of {val_fraction} "
            f"leaves {n_train} for training and {n_val} for validation; both need >= 1"
        )
    return n_train, n_val


def _cache_key(config: TrainConfig) -> tuple[Any, ...]:
    ds = config.dataset
    if ds.startswith("npz:"):
        path = Path(os.path.expanduser(ds[4:])).resolve()
        try:
            stat = path.stat()
            stamp: tuple[Any, ...] = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = (str(path), None, None)
        return ("npz", *stamp, config.val_fraction)
    if ds == "digits":  # bundled with scikit-learn: data_dir plays no part
        return (ds, config.val_fraction)
    return (ds, str(Path(os.path.expanduser(config.data_dir)).resolve()), config.val_fraction)


_cache: dict[tuple[Any, ...], LoadedData] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget the datasets loaded by this process."""
    with _lock:
        _cache.clear()


def dataset_info(config: TrainConfig | dict[str, Any]) -> DatasetInfo:
    """Shape facts of the config's dataset, cheaply (no download, no tensors for the
    torchvision datasets; npz files are read once and cached).

    Args:
        config: a `TrainConfig` or its dict.
    """
    config = TrainConfig.from_dict(config)
    known = _KNOWN.get(config.dataset)
    if known is not None:  # the search driver needs only shapes: no import, no loading
        channels, classes, size, n, _ = known
        n_train, n_val = _split_sizes(n, config.val_fraction, config.dataset)
        return DatasetInfo(config.dataset, channels, classes, size, n_train, n_val)
    return load_data(config).info


def load_data(config: TrainConfig | dict[str, Any]) -> LoadedData:
    """Load (or take from the process cache) the config's dataset, split and normalised.

    Args:
        config: a `TrainConfig` or its dict.

    Raises:
        DataError: missing files, malformed arrays, labels out of range, empty splits.
    """
    config = TrainConfig.from_dict(config)
    key = _cache_key(config)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    data = _load_uncached(config)
    with _lock:
        while len(_cache) >= _CACHE_SIZE:
            _cache.pop(next(iter(_cache)))
        _cache[key] = data
    return data


# -- sources ---------------------------------------------------------------------------------
def _load_uncached(config: TrainConfig) -> LoadedData:
    ds = config.dataset
    if ds == "digits":
        images, target = _digits()
        x = (images.astype(np.float32) / 16.0)[:, None]  # 0..16 -> 0..1, add channel
        y = target.astype(np.int64)
        return _prepare("digits", x, y, None, None, 10, config.val_fraction, flip=False)
    if ds.startswith("npz:"):
        return _load_npz(ds[4:], config.val_fraction)
    return _load_torchvision(ds, config)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1797 images of 8x8, values 0..16, and their labels).

    Read straight from the CSV scikit-learn ships, as `load_digits` does, without importing
    scikit-learn: that import costs a fresh Ray worker about a second of CPU before its
    first trial. Falls back to `load_digits` if the file is not where it used to be.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _load_npz(path_text: str, val_fraction: float) -> LoadedData:
    path = Path(os.path.expanduser(path_text))
    if not path.is_file():
        raise DataError(f"npz dataset {str(path)!r} does not exist (dataset `npz:{path_text}`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # noqa: BLE001 - any read failure is a data problem
        raise DataError(f"cannot read {str(path)!r} as an npz file: {exc}") from exc
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DataError(
            f"{str(path)!r} lacks {', '.join(missing)}; expected x_train, y_train and "
            f"optionally x_val, y_val, num_classes (found: {', '.join(sorted(arrays)) or 'nothing'})"
        )
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{str(path)!r} has only one of x_val / y_val; give both or neither")
    num_classes = None
    if "num_classes" in arrays:
        nc = arrays["num_classes"]
        if nc.shape != () or not np.issubdtype(nc.dtype, np.integer) or int(nc) < 1:
            raise DataError(f"`num_classes` in {str(path)!r} got {nc!r}; allowed: an integer >= 1")
        num_classes = int(nc)
    x_train = _to_nchw(arrays["x_train"], "x_train")
    y_train = _to_labels(arrays["y_train"], "y_train", len(x_train))
    x_val = y_val = None
    if "x_val" in arrays:
        x_val = _to_nchw(arrays["x_val"], "x_val")
        y_val = _to_labels(arrays["y_val"], "y_val", len(x_val))
        if x_val.shape[1:] != x_train.shape[1:]:
            raise DataError(
                f"x_val images are {tuple(x_val.shape[1:])} (C, H, W) but x_train images are "
                f"{tuple(x_train.shape[1:])}; they must match"
            )
    labels = y_train if y_val is None else np.concatenate([y_train, y_val])
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 1
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DataError(
            f"labels out of range in {str(path)!r}: got {int(bad[0])}; allowed: 0..{num_classes - 1}"
            + ("" if "num_classes" in arrays else " (labels must be >= 0)")
        )

    return _prepare(
        f"npz:{path_text}", x_train, y_train, x_val, y_val, num_classes, val_fraction, flip=False
    )


def _to_nchw(x: np.ndarray, name: str) -> np.ndarray:
    """(N,H,W) -> (N,1,H,W); NHWC -> NCHW where the channel axis is the small one (1/3/4)."""
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"`{name}` has dtype {x.dtype}; allowed: a numeric array")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        _, a, h, w = x.shape
        channels_first = a in (1, 3, 4) and a < min(h, w)
        channels_last = x.shape[3] in (1, 3, 4) and x.shape[3] < min(x.shape[1], x.shape[2])
        if channels_last and not channels_first:
            x = x.transpose(0, 3, 1, 2)
        elif not channels_first:
            raise DataError(
                f"`{name}` has shape {x.shape}: cannot tell the channel axis; allowed: NCHW or "
                "NHWC with 1, 3 or 4 channels (fewer than the height and width), or (N, H, W)"
            )
    else:
        raise DataError(
            f"`{name}` has shape {x.shape}; allowed: (N, H, W), (N, C, H, W) or (N, H, W, C)"
        )
    if x.shape[0] == 0:
        raise DataError(f"`{name}` is empty (0 samples)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"`{name}` contains NaN or infinite values")
    return x


def _to_labels(y: np.ndarray, name: str, n: int) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"`{name}` has shape {y.shape}; allowed: (N,) integer class labels")
    if len(y) != n:
        raise DataError(f"`{name}` has {len(y)} labels but the images are {n}; they must match")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise DataError(f"`{name}` holds non-integer labels ({y.dtype}); allowed: integers")
    return y.astype(np.int64)


def _load_torchvision(name: str, config: TrainConfig) -> LoadedData:
    try:
        import torchvision.datasets as tvd
    except Exception as exc:  # noqa: BLE001 - missing or broken install
        raise DataError(
            f"dataset `{name}` is read with torchvision, which is not importable here "
            f"({type(exc).__name__}: {exc}); install the `vision` extra or use `npz:PATH`"
        ) from exc
    root = Path(os.path.expanduser(config.data_dir))
    makers = {
        "cifar10": lambda dl: tvd.CIFAR10(str(root), train=True, download=dl),
        "cifar100": lambda dl: tvd.CIFAR100(str(root), train=True, download=dl),
        "mnist": lambda dl: tvd.MNIST(str(root), train=True, download=dl),
        "fashion_mnist": lambda dl: tvd.FashionMNIST(str(root), train=True, download=dl),
        "svhn": lambda dl: tvd.SVHN(str(root / "svhn"), split="train", download=dl),
    }
    try:
        dataset = makers[name](False)
    except (RuntimeError, FileNotFoundError, OSError):
        try:  # files missing: one download attempt
            dataset = makers[name](True)
        except Exception as exc:  # noqa: BLE001 - offline, proxy, disk full, bad checksum
            raise DataError(
                f"dataset `{name}` is not in {str(root)!r} and downloading it failed "
                f"({type(exc).__name__}: {exc}); put the files in {str(root)!r} in the "
                "standard layout, or allow downloading"
            ) from exc
    channels, classes, _, _, flip = _KNOWN[name]
    data = np.asarray(dataset.data)
    if name == "svhn":
        x, y = data, np.asarray(dataset.labels)  # already (N, 3, H, W)
    elif data.ndim == 3:
        x, y = data[:, None], np.asarray(dataset.targets)  # MNIST-like (N, H, W)
    else:
        x, y = data.transpose(0, 3, 1, 2), np.asarray(dataset.targets)  # CIFAR (N, H, W, C)
    x = np.ascontiguousarray(x, dtype=np.float32) / 255.0
    y = _to_labels(y, f"{name} labels", len(x))
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"`{name}` labels out of range: allowed 0..{classes - 1}")
    return _prepare(name, x, y, None, None, classes, config.val_fraction, flip=flip)


# -- split and normalise ---------------------------------------------------------------------
def _prepare(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    num_classes: int,
    val_fraction: float,
    *,
    flip: bool,
) -> LoadedData:
    import torch

    if x_val is None:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x_train))
        n_train, n_val = _split_sizes(len(x_train), val_fraction, name)
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        x_train, y_train, x_val, y_val = (
            x_train[train_idx],
            y_train[train_idx],
            x_train[val_idx],
            y_train[val_idx],
        )
    classes = np.unique(y_train)
    if classes.size < 2:  # every network would score 1.0: there is nothing to search for
        raise DataError(f"dataset `{name}`: its training split holds one class only "
                        f"(label {int(classes[0])}); a classifier needs at least 2")
    # Per-channel statistics of the training split only (no peeking at validation).
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = np.maximum(x_train.std(axis=(0, 2, 3), dtype=np.float64), 1e-6)
    shape = (1, -1, 1, 1)
    x_train = ((x_train - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)
    x_val = ((x_val - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)
    info = DatasetInfo(
        name=name,
        in_channels=int(x_train.shape[1]),
        num_classes=int(num_classes),
        input_size=(int(x_train.shape[2]), int(x_train.shape[3])),
        num_train=len(x_train),
        num_val=len(x_val),
    )
    return LoadedData(
        info=info,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)),
        x_val=torch.from_numpy(np.ascontiguousarray(x_val)),
        y_val=torch.from_numpy(np.ascontiguousarray(y_val)),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        flip=flip,
    )


# -- batches -------------------------------------------------------------------------------
class TensorBatches:
    """Batches of in-memory tensors, shuffled with a seeded generator (no DataLoader, no
    per-sample indexing or collation: one gather per batch).

    Args:
        x: images (N, C, H, W), on the device the batches should live on.
        y: labels (N,), same device.
        batch_size: samples per batch.
        shuffle: a new permutation each pass, drawn from `generator`.
        seed: seed of the shuffling generator (CPU; the permutation moves to x's device).
        drop_last: drop the final partial batch (always dropped when it holds 1 sample
            and shuffling is on: batch norm cannot train on one sample).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        import torch

        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        n = len(x)
        rest = n % batch_size
        self.drop_last = bool(rest) and (drop_last or (shuffle and rest == 1 and n > 1))
        self.num_batches = n // batch_size if self.drop_last else -(-n // batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):  # noqa: ANN204 - a generator of (x, y)
        import torch

        n, b = len(self.x), self.batch_size
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
            for i in range(self.num_batches):
                idx = order[i * b : (i + 1) * b]
                yield self.x[idx], self.y[idx]
        else:
            for i in range(self.num_batches):
                yield self.x[i * b : (i + 1) * b], self.y[i * b : (i + 1) * b]


def augment_batch(x: torch.Tensor, *, flip: bool) -> torch.Tensor:
    """Random shifts (zero-pad by 1/8 of the size, random crop back) and optional flips,
    per sample, vectorised on x's device. Uses the global torch RNG (seeded per trial).

    Args:
        x: (N, C, H, W) normalised images (zero padding = the channel mean).
        flip: also flip half of the samples horizontally.
    """
    import torch

    n, _, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    if flip:
        mirrored = torch.rand(n, device=x.device) < 0.5
        cols = torch.where(mirrored[:, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    import torch

    if (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    ):
        return torch.channels_last
    return torch.contiguous_format
