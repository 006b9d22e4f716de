"""Optimizers by short name: `build_optimizer(name, params, lr, **settings)`."""

import inspect

import torch

from bench.errors import UserError, choices

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "radam": torch.optim.RAdam,
    "sgd": torch.optim.SGD,
}


def build_optimizer(name: str, params, lr: float, **settings) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optim '{name}' (allowed: {choices(OPTIMIZERS)})")
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    try:
        return OPTIMIZERS[name](params, lr=lr, **settings)
    except TypeError as e:  # an unknown keyword: name it and the ones the optimizer takes
        allowed = [p for p in inspect.signature(OPTIMIZERS[name]).parameters if p not in ("params", "lr")]
        bad = sorted(set(settings) - set(allowed))
        raise UserError(
            f"unknown setting optim.{bad[0] if bad else '?'} for optim '{name}' "
            f"(allowed: {choices(allowed)})"
        ) from e
