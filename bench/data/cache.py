"""Decoded uint8 datasets cached as one .pt file each, so a second load takes well under a second.

Decoding Imagenette's 13,394 JPEGs takes minutes on two cores, and even CIFAR-10's 170 MB tar.gz
takes seconds to decompress; `torch.load` of the uint8 tensors reads at disk speed.
"""

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .source import Tensors

# Bump when a reader or the resize changes what it produces: older files are then rebuilt.
VERSION = 1
KEYS = ("train_x", "train_y", "test_x", "test_y", "num_classes")


def load(path: Path) -> Tensors | None:
    """The cached tensors, or None if the file is absent, unreadable or from another VERSION."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # a truncated or foreign file: rebuild rather than fail the run
        warnings.warn(f"ignoring unreadable cache {path}: {e}", stacklevel=2)
        return None
    if not isinstance(saved, dict) or saved.get("version") != VERSION:
        return None
    return {k: saved[k] for k in KEYS}


def save(path: Path, tensors: Tensors) -> None:
    """Write atomically: a temp file in the same directory, then os.replace.

    Several processes (a parallel sweep) may load the same dataset at once; each writes its own
    temp file and the last rename wins, so a reader never sees a partial file. A cache that
    cannot be written (read-only root) is a warning, not a failure.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        warnings.warn(f"cannot write the dataset cache {path}: {e}", stacklevel=2)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": VERSION, **{k: tensors[k] for k in KEYS}}, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like the dataset
        os.replace(tmp, path)
    except OSError as e:  # disk full: the run can go on without a cache
        os.remove(tmp)
        warnings.warn(f"cannot write the dataset cache {path}: {e}", stacklevel=2)
    except BaseException:  # interrupted: leave no temp file behind
        os.remove(tmp)
        raise


def cached(path: Path, build: Callable[[], Tensors]) -> Tensors:
    """`load(path)` if it succeeds, else `build()` and save the result."""
    tensors = load(path)
    if tensors is None:
        tensors = build()
        save(path, tensors)
    return tensors
