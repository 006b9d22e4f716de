"""Per-job process state: device, threads and seeds (a config's identity: bench/config_hash.py).

Hydra's joblib launcher reuses worker processes between jobs (loky), so everything global is set
again at the start of every job, never inherited from the previous one.
"""

import os
import random

import numpy as np
import torch

from bench.checks import require_int
from bench.errors import UserError


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
    if require_int("threads", threads, lo=1, or_words=("auto",)) == "auto":
        threads = max(1, (os.cpu_count() or 1) // max(1, parallel_jobs))
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
