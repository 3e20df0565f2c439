"""Image classification data for the supervised experiments: no downloads, ever.

* ``digits``: scikit-learn's bundled 8×8 digits (1,797 images, 10 classes), shipped with the package.
* ``cifar10``: the CIFAR-10 *binary* version read from a directory the user provides
  (``data_batch_1.bin`` … ``data_batch_5.bin``, ``test_batch.bin``; each record is 1 label byte
  followed by 3,072 pixel bytes, red/green/blue planes of 32×32, row-major). No pickle is read.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

DATASETS = ("digits", "cifar10")
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch.bin"


@dataclasses.dataclass(frozen=True)
class ImageData:
    """Train/test split of an image classification data set.

    Attributes:
      train_x: ``(n_train, H, W, C)`` float32 in ``[0, 1]``.
      train_y: ``(n_train,)`` int32 labels.
      test_x: ``(n_test, H, W, C)`` float32.
      test_y: ``(n_test,)`` int32.
      num_classes: number of classes.
      name: data set name.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    name: str


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8×8 digits, pixel values scaled to ``[0, 1]``, a stratified-free random split."""
    from sklearn.datasets import load_digits as sk_load_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return ImageData(x[train], y[train], x[test], y[test], 10, "digits")


def read_cifar10_binary(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file.

    Returns:
      ``images (n, 32, 32, 3)`` uint8 (NHWC) and ``labels (n,)`` int32.

    Raises:
      ValueError: when the file size is not a whole number of records or a label is not 0..9.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD_BYTES:
        raise ValueError(
            f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte CIFAR-10 records"
        )
    records = raw.reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    if labels.max() > 9:
        raise ValueError(f"{path}: label {labels.max()} out of range 0..9; is this the CIFAR-10 binary version?")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def load_cifar10(data_dir: str, max_train: int | None = 10_000, seed: int = 0) -> ImageData:
    """CIFAR-10 from the binary files in ``data_dir`` (the paper uses 10,000 training samples).

    Args:
      data_dir: directory with ``data_batch_*.bin`` (at least one) and ``test_batch.bin``.
      max_train: keep this many random training samples (``None``: all).
      seed: seed of that subsample.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir!r} is not a directory (CIFAR-10 binary version expected)")
    train_files = [os.path.join(data_dir, f) for f in CIFAR_TRAIN_FILES if os.path.exists(os.path.join(data_dir, f))]
    test_file = os.path.join(data_dir, CIFAR_TEST_FILE)
    if not train_files or not os.path.exists(test_file):
        raise FileNotFoundError(
            f"{data_dir}: expected {', '.join(CIFAR_TRAIN_FILES)} (at least one) and {CIFAR_TEST_FILE}; "
            "download the 'CIFAR-10 binary version' yourself, plastix never downloads data"
        )
    parts = [read_cifar10_binary(f) for f in train_files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if max_train is not None and max_train < len(y):
        keep = np.random.default_rng(seed).choice(len(y), max_train, replace=False)
        x, y = x[keep], y[keep]
    tx, ty = read_cifar10_binary(test_file)
    scale = np.float32(1 / 255)
    return ImageData(x.astype(np.float32) * scale, y, tx.astype(np.float32) * scale, ty, 10, "cifar10")


def load_dataset(name: str, data_dir: str | None = None, max_train: int | None = 10_000, seed: int = 0) -> ImageData:
    """Load ``digits`` or ``cifar10`` (which needs ``data_dir``)."""
    if name == "digits":
        return load_digits(seed=seed)
    if name == "cifar10":
        if not data_dir:
            raise ValueError("--data cifar10 needs --data-dir PATH (the CIFAR-10 binary version; no download)")
        return load_cifar10(data_dir, max_train, seed)
    raise ValueError(f"data: got {name!r}, allowed values are {DATASETS}")
