"""A run's checkpoint: everything it needs to continue after a kill with the numbers it would
have had, in one file that `torch.load(weights_only=True)` reads.

A runner names what it trains (`Checkpoint.attach`): objects with `state_dict` /
`load_state_dict` (models, optimizers, lr schedules; a model's state dict holds every buffer:
BN running statistics, `num_batches_tracked`, running BN's sums and counts) and its
`torch.Generator`s (the data order, the GAN's metric stream). The file adds the torch, numpy and
Python global RNG states and the epoch. Generators seeded afresh for each evaluation (PreciseBN's,
`bench.bn_eval`) need no saving.

Where: `<checkpoint.dir>/<config hash>/<run uid>.pt`, so the place depends on neither the
launcher nor the job folder, and a deliberate repeat (`resume=false`) has a file of its own.
Written to a temporary file in the same folder, fsynced, then `os.replace`d: a kill during the
save leaves the previous checkpoint whole (POSIX rename(2) is atomic within a file system).
"""

import logging
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from bench.errors import UserError, one_line

log = logging.getLogger("bench")

FORMAT = 1  # the file layout's version, checked on load


def path_for(directory, config_hash: str, uid: str) -> Path:
    return Path(directory).absolute() / config_hash / f"{uid}.pt"


def global_rng_state() -> dict:
    """torch (CPU and every CUDA device), numpy and Python RNG states as tensors and plain types:
    weights_only loading refuses numpy arrays and arbitrary objects."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# Signals whose Python handler may end the run (SIGTERM, Ctrl-C, submitit's requeue signal).
DEFERRED = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
                 if hasattr(signal, n))


@contextmanager
def signals_deferred():
    """Within the block, a signal of `DEFERRED` is noted and raised again after it. A handler
    that raises (submitit's requeue exits with SystemExit) in the middle of `torch.save` came out
    as torch's RuntimeError "unexpected pos ..." (measured: tests/test_submitit.py's time-limit
    test), so the run failed instead of being requeued. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    previous = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in DEFERRED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in got:
            signal.raise_signal(s)


class Checkpoint:
    """One run's checkpoint file. every: save after every `every`-th epoch (0: never) and the
    last; strict: a bad file fails the run instead of starting over."""

    def __init__(self, path: Path | None, config_hash: str, every: int = 1, strict: bool = False):
        self.path, self.config_hash, self.every, self.strict = path, config_hash, every, strict
        self.parts: dict = {}
        self.generators: dict[str, torch.Generator] = {}
        self.state: dict | None = None  # what `load` found, applied by `attach`
        self.epoch_saved = 0  # the last epoch saved by this process, or loaded
        self.resumed = ""  # what the run continues (`runners.resume`), for the job's first line

    @classmethod
    def off(cls) -> "Checkpoint":
        """No file: a runner called outside a job (tests) starts at epoch 1 and saves nothing."""
        return cls(None, "", every=0)

    @property
    def epoch(self) -> int:
        """The epoch the loaded checkpoint ended (0: none, start from the beginning)."""
        return 0 if self.state is None else self.state["epoch"]

    def load(self) -> int:
        """Read the file if there is one; returns its epoch (0 if none). A file that cannot be
        read, or was written for another config or run, is moved aside to
        `<name>.corrupt-<time>` with one warning (or, with strict, raises `UserError`)."""
        self.state = None
        if self.path is None:
            return 0
        for tmp in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # a save a SIGKILL cut
            tmp.unlink(missing_ok=True)
        if not self.path.exists():
            return 0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ValueError(f"not a normbench checkpoint of format {FORMAT}")
            if state.get("config_hash") != self.config_hash:
                raise ValueError(f"written for config {str(state.get('config_hash'))[:12]}, "
                                 f"not this run's {self.config_hash[:12]}")
        except Exception as e:  # a truncated zip, a pickle error, a foreign file: all one answer
            problem = f"checkpoint {self.path} is unusable ({one_line(e)})"
            if self.strict:
                raise UserError(f"{problem}; checkpoint.strict=true: remove or move the file, or "
                                "set checkpoint.strict=false to start the run over") from None
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(self.path, aside)
            log.warning("%s: moved to %s; the run starts over from epoch 0", problem, aside.name)
            return 0
        self.state = state
        self.epoch_saved = self.epoch
        return self.epoch

    def attach(self, parts: dict, generators: dict[str, torch.Generator]) -> int:
        """Register what the runner trains (`parts`: name -> object with state_dict, or None);
        restore it from the loaded checkpoint if any. Returns the first epoch to train. Call it
        after everything is built and seeded, so the restored states replace the fresh ones."""
        self.parts = {k: v for k, v in parts.items() if v is not None}
        self.generators = generators
        if self.state is None:
            return 1
        s = self.state
        for name, part in self.parts.items():
            part.load_state_dict(s["parts"][name])
        for name, gen in self.generators.items():
            gen.set_state(s["generators"][name])
        set_global_rng_state(s["rng"])
        return self.epoch + 1

    def due(self, epoch: int, last: int) -> bool:
        return (self.path is not None and self.every > 0 and epoch >= 1  # not the GAN's epoch 0
                and (epoch % self.every == 0 or epoch == last))

    def save(self, epoch: int) -> bool:
        """Write the attached state as of the end of `epoch`, atomically. A failed write (no space
        left) is one warning: the previous checkpoint stays, and the run goes on. True if saved."""
        state = {"format": FORMAT, "config_hash": self.config_hash, "epoch": int(epoch),
                 "parts": {k: v.state_dict() for k, v in self.parts.items()},
                 "generators": {k: g.get_state() for k, g in self.generators.items()},
                 "rng": global_rng_state()}
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with signals_deferred(), open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, self.path)
        except (OSError, RuntimeError) as e:  # torch's writer reports a short write as RuntimeError
            tmp.unlink(missing_ok=True)
            log.warning("could not save the checkpoint of epoch %d to %s (%s); the run goes on, "
                        "a resume would start after epoch %d", epoch, self.path, one_line(e),
                        self.epoch_saved)
            return False
        self.epoch_saved = int(epoch)
        return True

    def remove(self) -> None:
        """Delete the file (a finished run with checkpoint.keep=false), and its folder if empty."""
        if self.path is None:
            return
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # other runs' files (repeats), or already gone
            pass
