"""MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017): 60,000 / 10,000, 28x28 grey.

Both come as four gzipped IDX files. IDX: a big-endian header, magic 0x00000800 | ndim with
0x08 meaning uint8 (0x803: images N x rows x cols, 0x801: labels N), then ndim big-endian int32
sizes, then the values row-major.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError

from .fetch import find_or_download
from .source import Source, Tensors

# Names and md5 sums as in torchvision/datasets/mnist.py (torchvision 0.29).
MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"]
MNIST_FILES = [
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
]
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
FASHION_FILES = [
    ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
]
# Debian's `dataset-fashion-mnist` (0.0~git20200523.55506a9-1) puts the same four files here
# (`dpkg -L dataset-fashion-mnist`).
FASHION_SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A gzipped (or plain) IDX file of uint8 with `ndim` dimensions, as an ndarray.

    Raises UserError naming the file when it is not gzip, has the wrong magic, or is truncated.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path} (corrupt or truncated?): {e}") from e
    header = 4 + 4 * ndim
    if raw[:4] != (0x800 + ndim).to_bytes(4, "big"):
        raise UserError(f"{path} is not an IDX file of {ndim}-d uint8: magic 0x{raw[:4].hex()}, "
                        f"expected {0x800 + ndim:#010x}")
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4) if len(raw) >= header else None
    if dims is None or len(raw) - header != int(np.prod(dims)):
        sizes = "a short header" if dims is None else f"header {dims.tolist()}"
        raise UserError(f"{path} is truncated or padded: {sizes}, {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _pair(directory: Path, images: str, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 from one images/labels pair of files."""
    x = read_idx(directory / images, 3)
    y = read_idx(directory / labels, 1)
    if len(x) != len(y) or y.max(initial=0) > 9:
        raise UserError(f"{directory / images} has {len(x)} images but {directory / labels} has "
                        f"{len(y)} labels (max {y.max(initial=0)}); expected as many, in 0..9")
    return torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64))


def _read_from(directory: Path, files: list[tuple[str, str]]) -> Tensors:
    (train_images, _), (train_labels, _), (test_images, _), (test_labels, _) = files
    train_x, train_y = _pair(directory, train_images, train_labels)
    test_x, test_y = _pair(directory, test_images, test_labels)
    return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=10)


def _complete(directory: Path, files: list[tuple[str, str]]) -> bool:
    return all((directory / name).is_file() for name, _ in files)


def read_mnist(directory: Path, *, download: bool, image_size: int) -> Tensors:
    """Images at 28x28 (the caller resizes): train (60000, 1, 28, 28), test (10000, 1, 28, 28)."""
    find_or_download("mnist", directory, present=lambda: _complete(directory, MNIST_FILES),
                     files=MNIST_FILES, mirrors=MNIST_MIRRORS, download=download)
    return _read_from(directory, MNIST_FILES)


def read_fashion_mnist(directory: Path, *, download: bool, image_size: int) -> Tensors:
    """As `read_mnist`; looks in `directory`, then the Debian package's folder, then downloads."""
    for where in [directory, *FASHION_SYSTEM_DIRS]:
        if _complete(where, FASHION_FILES):
            return _read_from(where, FASHION_FILES)
    find_or_download("fashion_mnist", directory, files=FASHION_FILES, mirrors=FASHION_MIRRORS,
                     present=lambda: _complete(directory, FASHION_FILES), download=download,
                     hint=" or install the Debian package dataset-fashion-mnist")
    return _read_from(directory, FASHION_FILES)


MNIST = Source(read=read_mnist, train_size=60_000, native_size=28, channels=1,
               num_classes=10)
FASHION_MNIST = Source(read=read_fashion_mnist, train_size=60_000, native_size=28, channels=1,
                       num_classes=10)
