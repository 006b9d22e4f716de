"""UCI handwritten digits as shipped by scikit-learn: 1,797 images, 8x8 grey, ten classes.

The one image dataset that is always on disk (no download), so the offline default for smoke runs.
"""

from pathlib import Path

import numpy as np
import torch

from .source import Source, Tensors

TEST_SIZE = 360  # 20% of 1,797, stratified
TRAIN_SIZE = 1_797 - TEST_SIZE


def read(directory: Path, *, download: bool, image_size: int) -> Tensors:
    """Train (1437, 1, 8, 8), test (360, 1, 8, 8) uint8; the split is stratified with seed 0."""
    # Imported here: scikit-learn takes about a second to import and only this dataset needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Values 0..16 -> 0..255, so every dataset shares one uint8 range (16 -> 255, 8 -> 128).
    x = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8))[:, None]
    y = torch.from_numpy(digits.target.astype(np.int64))
    train, test = train_test_split(np.arange(len(y)), test_size=TEST_SIZE,
                                   stratify=digits.target, random_state=0)
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return dict(train_x=x[train].contiguous(), train_y=y[train], test_x=x[test].contiguous(),
                test_y=y[test], num_classes=10)


# Cached although small: importing scikit-learn takes ~2 s, loading the cache milliseconds.
SOURCE = Source(read=read, train_size=TRAIN_SIZE, native_size=8, channels=1, num_classes=10)
