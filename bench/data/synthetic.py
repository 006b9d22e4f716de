"""A synthetic, learnable image set generated from a seed: no files, any size, any channels.

Each class has its own fixed smooth random pattern; an image is its class's pattern plus a
per-image brightness shift and per-pixel noise. A small CNN separates the classes within an
epoch or two, and the brightness shift gives per-sample normalizations something to remove.
"""

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.errors import UserError

from .source import Source, Tensors

OPTIONS = {"n_train": 512, "n_test": 128, "channels": 3, "size": 32, "num_classes": 10, "seed": 0}
# Grey levels around the mid-grey 128: the pattern's and the noise's standard deviation, and the
# spread of per-image brightness; 128 +- 3 x 50 stays mostly inside 0..255 before clamping.
PATTERN_STD, NOISE_STD, SHIFT_STD = 40.0, 40.0, 20.0
COARSE = 4  # patterns are a 4x4 random grid upsampled: low frequency, so visible at any size


MINIMUM = {"n_train": 1, "n_test": 1, "channels": 1, "size": 2, "num_classes": 2, "seed": 0}


def check(options: Mapping[str, int]) -> None:
    """UserError for a value out of range (the caller has checked that each is an int)."""
    for name, value in options.items():
        low = MINIMUM[name]
        if value < low:
            raise UserError(f"synthetic option {name}={value} is out of range (at least {low})")


def _split(n: int, patterns: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(n, C, H, W) uint8 images with balanced labels (n,) in random order."""
    k = len(patterns)
    y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    shift = SHIFT_STD * torch.randn(n, 1, 1, 1, generator=g)
    noise = NOISE_STD * torch.randn(n, *patterns.shape[1:], generator=g)
    x = 128 + patterns[y] + shift + noise
    return x.round().clamp(0, 255).to(torch.uint8), y


def read(directory: Path, *, download: bool, image_size: int, n_train: int, n_test: int,
         channels: int, size: int, num_classes: int, seed: int) -> Tensors:
    """Train (n_train, channels, size, size), test (n_test, ...); the same seed, the same data."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, COARSE, COARSE, generator=g)
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    # Every class pattern gets the same contrast, so no class is easier than the others.
    patterns = PATTERN_STD * patterns / patterns.std(dim=(1, 2, 3), keepdim=True)
    train_x, train_y = _split(n_train, patterns, g)
    test_x, test_y = _split(n_test, patterns, g)
    return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                num_classes=num_classes)


SOURCE = Source(read=read, train_size="n_train", native_size="size", channels="channels",
                num_classes="num_classes", options=OPTIONS,
                check=check, cached=False)
