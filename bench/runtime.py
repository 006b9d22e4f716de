"""Per-job process state: device, threads, seeds, and the identity of a config.

Hydra's joblib launcher reuses worker processes between jobs (loky), so everything global is set
again at the start of every job, never inherited from the previous one.
"""

import hashlib
import json
import os
import random

import numpy as np
import torch

from bench.errors import UserError

# Keys that do not change what a run computes: left out of the config hash, so a sweep rerun on
# another machine, with another thread count or database, still finds its completed runs.
BOOKKEEPING_KEYS = ("db", "resume", "progress", "device", "threads", "data_root", "channels_last")


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; an unavailable device is a user error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (allowed: auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available (allowed: auto, cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' requested but MPS is not available (allowed: auto, cpu)")
    return device


def set_threads(threads, parallel_jobs: int = 1) -> int:
    """Set torch's CPU threads: 'auto' shares the cores among the jobs running at once."""
    if threads == "auto":
        threads = max(1, (os.cpu_count() or 1) // max(1, parallel_jobs))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UserError(f"threads={threads!r} is not a positive integer or 'auto'")
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_hash(config: dict) -> str:
    """sha256 of the config that decides the result (bookkeeping keys removed), canonical JSON."""
    kept = {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
