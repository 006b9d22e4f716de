"""Datasets as uint8 tensors: the contract every loader meets.

Every loader returns an `ImageData` whose images are uint8 (N, C, H, W) tensors on the CPU; the
training loop moves them to the device once and converts batches to float there
(`bench.data.loader`). Loaders are looked up by the short name stored in the database.

    load_dataset(name, root, *, download=True, image_size=None, **options) -> ImageData
    dataset_train_size(name, **options) -> int     # before any file is read
    DATASETS: short name -> `Source` (one module per dataset: cifar10, mnist, imagenette, ...)

Files live in root/<name>/ (as the dataset's publisher ships them), decoded tensors in
root/cache/ (`bench.data.cache`). Anything the user can fix (a name, an option, a missing file)
is a one-line `UserError`.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.errors import UserError, choices

from . import cache, cifar10, digits, imagenette, mnist, synthetic
from .resize import resize_square
from .source import Source, Tensors

__all__ = ["DATASETS", "ImageData", "dataset_shape", "dataset_train_size", "load_dataset"]

DATASETS: dict[str, Source] = {
    "cifar10": cifar10.SOURCE,
    "mnist": mnist.MNIST,
    "fashion_mnist": mnist.FASHION_MNIST,
    "imagenette": imagenette.SOURCE,
    "digits": digits.SOURCE,
    "synthetic": synthetic.SOURCE,
}
# Options every dataset takes: keep the first K images of a fixed permutation (seed 0), so quick
# runs see a class-balanced-in-expectation sample and all runs with the same K the same one.
SUBSET_OPTIONS = ("train_subset", "test_subset")
SUBSET_SEED = 0


# eq=False: the generated __eq__ would compare tensors and raise; identity is what is meant.
@dataclass(frozen=True, eq=False)
class ImageData:
    """A dataset as uint8 CPU tensors: train_x (N, C, H, W), train_y (N,) int64, test_x
    (M, C, H, W), test_y (M,) int64, labels in 0..num_classes-1; images square (H == W)."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    def __post_init__(self):
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[2] != x.shape[3]:
                raise ValueError(f"{self.name}: images must be uint8 (N, C, H, H), got "
                                 f"{x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != x.shape[:1]:
                raise ValueError(f"{self.name}: labels must be int64 ({len(x)},), got "
                                 f"{y.dtype} {tuple(y.shape)}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in shape")

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[2]


def _source(name: str) -> Source:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} (allowed: {choices(DATASETS)})")
    return DATASETS[name]


def _options(name: str, source: Source, options: Mapping[str, object]) -> dict[str, object]:
    """The dataset's options with defaults filled in, plus the two subset options; all checked."""
    allowed = [*source.options, *SUBSET_OPTIONS]
    for key, value in options.items():
        if key not in allowed:
            raise UserError(f"unknown option {key!r} for dataset {name!r} "
                            f"(allowed: {choices(allowed)})")
        # Every option is an int (bool is an int to Python but never meant as one here).
        if not (isinstance(value, int) and not isinstance(value, bool)) and not (
                key in SUBSET_OPTIONS and value is None):
            raise UserError(f"option {key}={value!r} for dataset {name!r} must be an integer")
        if key in SUBSET_OPTIONS and value is not None and value < 1:
            raise UserError(f"option {key}={value} for dataset {name!r} must be at least 1")
    resolved = {**source.options, **options}
    if source.check is not None:
        source.check({k: resolved[k] for k in source.options})
    return {"train_subset": None, "test_subset": None, **resolved}


def _subset_size(name: str, what: str, k: int | None, n: int) -> int:
    if k is not None and k > n:
        raise UserError(f"{what}_subset={k} is larger than the {n} {what} images of {name!r}")
    return n if k is None else k


def _subset(x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k of a fixed permutation of (x, y); x, y as they are when k is everything."""
    if k == len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(SUBSET_SEED))[:k]
    return x[keep].contiguous(), y[keep]


def dataset_train_size(name: str, *, image_size: int | None = None, **options) -> int:
    """Training images `load_dataset(name, ..., **options)` returns, without reading any file.

    `image_size` is accepted (and ignored) so callers can pass load_dataset's keywords as they are.
    """
    source = _source(name)
    resolved = _options(name, source, options)
    return _subset_size(name, "train", resolved["train_subset"], source.train_count(resolved))


def dataset_shape(name: str, *, image_size: int | None = None, **options) -> tuple[int, int, int]:
    """(channels, image size, classes) that `load_dataset` with these arguments returns, without
    reading any file: lets a model be checked against the data before any job starts."""
    source = _source(name)
    resolved = _options(name, source, options)
    channels, native, classes = source.shape(resolved)
    size = image_size or native
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UserError(f"image_size={size!r} for dataset {name!r} must be a positive integer")
    return channels, size, classes


def load_dataset(name: str, root: str | os.PathLike, *, download: bool = True,
                 image_size: int | None = None, **options) -> ImageData:
    """Dataset `name` as uint8 tensors, images resized once to image_size x image_size.

    root/<name>/ holds the files of a public dataset (downloaded there if missing and `download`);
    root/cache/ the decoded tensors. image_size None is the native size (Imagenette has none and
    needs it). Raises UserError for an unknown name or option, a bad value, or missing files.
    """
    source = _source(name)
    resolved = _options(name, source, options)
    train_k, test_k = resolved.pop("train_subset"), resolved.pop("test_subset")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise UserError(f"image_size={image_size!r} must be a positive integer")
    size = image_size or source.native(resolved)
    if size is None:
        raise UserError(f"dataset {name!r} needs image_size (its images differ in size; "
                        f"the project default is 96)")
    root = Path(root).expanduser().resolve()

    def build() -> Tensors:
        t = source.read(root / name, download=download, image_size=size, **resolved)
        return {**t, "train_x": resize_square(t["train_x"], size),
                "test_x": resize_square(t["test_x"], size)}

    if source.cached:
        # Everything that changes the decoded tensors is in the name; the subset is not, so all
        # subsets share one file. cache.VERSION (inside the file) covers changes of the code.
        extra = "".join(f"-{k}{v}" for k, v in sorted(resolved.items()))
        tensors = cache.cached(root / "cache" / f"{name}-{size}{extra}.pt", build)
    else:
        tensors = build()
    train_x, train_y = tensors["train_x"], tensors["train_y"]
    test_x, test_y = tensors["test_x"], tensors["test_y"]
    train_x, train_y = _subset(train_x, train_y, _subset_size(name, "train", train_k, len(train_y)))
    test_x, test_y = _subset(test_x, test_y, _subset_size(name, "test", test_k, len(test_y)))
    return ImageData(name, train_x, train_y, test_x, test_y, int(tensors["num_classes"]))
