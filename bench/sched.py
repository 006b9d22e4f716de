"""Learning-rate schedules by short name (`conf/sched/*.yaml`), stepped after every optimizer step.

`build_scheduler(name, optimizer, total_steps, **settings)` returns a torch LR scheduler, or None
for `constant`. `check_scheduler(name, **settings)` raises the one-line error for bad settings
without an optimizer (the sweeper calls it for every job before the first one starts).
"""

import math

import torch

from bench.errors import UserError, choices

SCHEDULES = {
    "constant": (),
    "onecycle": ("pct_start", "div_factor", "final_div_factor", "cycle_momentum", "base_momentum",
                 "max_momentum"),
    "cyclic": ("cycles", "warmup", "start", "end"),
}


def cosine(a: float, b: float, pos: float) -> float:
    """From a (pos=0) to b (pos=1) along half a cosine: flat at both ends."""
    return a + (b - a) * (1 - math.cos(math.pi * pos)) / 2


def cyclic_factor(step: int, total_steps: int, cycles: int, warmup: float, start: float,
                  end: float) -> float:
    """The lr multiplier of `cyclic` at optimizer step `step` (0-based) of `total_steps`."""
    length = total_steps / cycles
    pos = (step % length) / length if step < total_steps else 1.0
    if pos < warmup:
        return cosine(start, 1.0, pos / warmup)
    return cosine(1.0, end, (pos - warmup) / (1 - warmup))


def check_scheduler(name: str, **settings) -> None:
    if name not in SCHEDULES:
        raise UserError(f"unknown sched '{name}' (allowed: {choices(SCHEDULES)})")
    unknown = sorted(set(settings) - set(SCHEDULES[name]))
    if unknown:
        raise UserError(f"unknown setting sched.{unknown[0]} for sched '{name}' "
                        f"(allowed: {choices(SCHEDULES[name]) or 'none'})")

    def fraction(key: str) -> None:  # strictly between 0 and 1
        v = settings.get(key)
        if v is not None and not (isinstance(v, (int, float)) and 0 < v < 1):
            raise UserError(f"sched.{key}={v!r} is not allowed (allowed: a number between 0 and 1)")

    def positive(key: str, kind: type = float) -> None:
        v = settings.get(key)
        ok = isinstance(v, int) if kind is int else isinstance(v, (int, float))
        if v is not None and (isinstance(v, bool) or not ok or v <= 0):
            raise UserError(f"sched.{key}={v!r} is not a positive {'integer' if kind is int else 'number'}")

    for key in ("pct_start", "warmup"):
        fraction(key)
    for key in ("div_factor", "final_div_factor", "start", "end"):
        positive(key)
    positive("cycles", int)
    lo, hi = settings.get("base_momentum"), settings.get("max_momentum")
    if lo is not None and hi is not None and not 0 <= lo <= hi < 1:
        raise UserError(f"sched.base_momentum={lo} and sched.max_momentum={hi} are not allowed "
                        f"(allowed: 0 <= base_momentum <= max_momentum < 1)")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, **settings):
    check_scheduler(name, **settings)
    if name == "constant":
        return None
    if name == "onecycle":
        lrs = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lrs, total_steps=total_steps,
                                                   **settings)
    if settings.get("cycles", 1) > total_steps:
        raise UserError(f"sched.cycles={settings['cycles']} is more than the run's {total_steps} "
                        f"optimizer steps (allowed: 1..{total_steps})")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cyclic_factor(step, total_steps, **settings))
