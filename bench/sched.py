"""Learning-rate schedules by short name (`conf/sched/*.yaml`), stepped after every optimizer step.

`build_scheduler(name, optimizer, total_steps, **settings)` returns a torch LR scheduler, or None
for `constant`. `check_scheduler(name, **settings)` raises the one-line error for bad settings
without an optimizer (the sweeper calls it for every job before the first one starts).
"""

import math

import torch

from bench.checks import fail, require_bool, require_int, require_known_settings, require_name, require_number

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
    require_name("sched", name, SCHEDULES)
    require_known_settings("sched", name, settings, SCHEDULES[name])

    # Shares of a cycle, strictly inside it: 0 or 1 leaves the rise or the fall no steps
    # (cyclic_factor divides by warmup and by 1 - warmup).
    for key in ("pct_start", "warmup"):
        if key in settings:
            require_number(f"sched.{key}", settings[key], gt=0, lt=1)
    # Factors of lr: at 0 the lr would start or end at 0 (cyclic) or at infinity (onecycle's
    # lr / div_factor).
    for key in ("div_factor", "final_div_factor", "start", "end"):
        if key in settings:
            require_number(f"sched.{key}", settings[key], gt=0)
    if "cycles" in settings:
        require_int("sched.cycles", settings["cycles"], lo=1)
    if "cycle_momentum" in settings:
        require_bool("sched.cycle_momentum", settings["cycle_momentum"])
    # Momentum (Adam's beta1) in [0, 1), as bench.optim requires of the optimizer's own.
    for key in ("base_momentum", "max_momentum"):
        if key in settings:
            require_number(f"sched.{key}", settings[key], ge=0, lt=1)
    lo, hi = settings.get("base_momentum"), settings.get("max_momentum")
    if lo is not None and hi is not None and not lo <= hi:
        fail("sched.base_momentum", lo, f"is above sched.max_momentum={hi!r}",
             "0 <= base_momentum <= max_momentum < 1")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, **settings):
    check_scheduler(name, **settings)
    if name == "constant":
        return None
    if name == "onecycle":
        lrs = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lrs, total_steps=total_steps,
                                                   **settings)
    if settings.get("cycles", 1) > total_steps:
        fail("sched.cycles", settings["cycles"], f"is more than the run's {total_steps} optimizer steps",
             f"1..{total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cyclic_factor(step, total_steps, **settings))
