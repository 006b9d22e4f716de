"""`Source`: how one dataset is read, what it accepts, and how big it is before reading it."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

Tensors = dict[str, torch.Tensor | int]
"""What a reader returns and the cache stores: train_x, train_y, test_x, test_y (uint8 images
(N, C, H, W), int64 labels (N,)) and num_classes (int)."""


@dataclass(frozen=True)
class Source:
    """One entry of `bench.data.DATASETS`.

    read(directory, *, download, image_size, **options) -> Tensors. `directory` is
    root/<name>; `image_size` is the resolved square size. Readers of square images may return
    them at their native size (the caller resizes); readers of non-square images (Imagenette)
    must return them at `image_size`.

    train_size, native_size, channels and num_classes are a number, or the name of the option
    that holds it (synthetic), so `dataset_train_size` can answer without reading anything.
    native_size None: the caller must give image_size.
    """

    read: Callable[..., Tensors]
    train_size: int | str
    native_size: int | str | None
    channels: int | str
    num_classes: int | str
    # The dataset's own options with their defaults (train_subset/test_subset are common to all).
    options: Mapping[str, object] = field(default_factory=dict)
    # Raises UserError for an option value out of range; called before anything is read.
    check: Callable[[Mapping[str, object]], None] | None = None
    # Cache decoded tensors under root/cache: worth it where decoding takes seconds.
    cached: bool = True

    def train_count(self, options: Mapping[str, object]) -> int:
        """Training images before any subset, given the dataset's resolved options."""
        return _lookup(self.train_size, options)

    def native(self, options: Mapping[str, object]) -> int | None:
        """The stored square image size, or None where images differ in size."""
        return _lookup(self.native_size, options)

    def shape(self, options: Mapping[str, object]) -> tuple[int, int | None, int]:
        """(channels, native size, classes) given the resolved options, without reading."""
        return (_lookup(self.channels, options), self.native(options),
                _lookup(self.num_classes, options))


def _lookup(value, options):
    return options[value] if isinstance(value, str) else value
