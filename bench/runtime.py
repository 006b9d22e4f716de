"""Per-job process state: device, threads and seeds (a config's identity: bench/config_hash.py).

Hydra's joblib launcher reuses worker processes between jobs (loky), so everything global is set
again at the start of every job, never inherited from the previous one.
"""

import random

import numpy as np
import torch

from bench.checks import require_int
from bench.errors import UserError
from bench.launchers import usable_cores


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
    """Set torch's CPU threads: 'auto' shares the cores this process may use (its affinity
    mask: `bench.launchers.usable_cores`) among the `parallel_jobs` jobs running at once
    (`bench.launchers.jobs_at_once`). More threads than cores is costly: two submitit_local
    jobs on 2 cores (convnet, digits, bs=32) took 4.7 s per training epoch with 2 threads each,
    0.9 s with 1 each (measured here, twice)."""
    if require_int("threads", threads, lo=1, or_words=("auto",)) == "auto":
        threads = max(1, usable_cores() // max(1, parallel_jobs))
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
