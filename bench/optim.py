"""Optimizers by short name: `build_optimizer(name, params, lr, **settings)`."""

import inspect

import torch

from bench.checks import (
    fail,
    require_bool,
    require_known_settings,
    require_name,
    require_number,
    require_numbers,
)

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "radam": torch.optim.RAdam,
    "sgd": torch.optim.SGD,
}

# Each numeric or true/false setting's allowed values, checked here with our message rather than
# left to torch, which raises a ValueError (a traceback) for some (momentum=-1, betas=[2, 0.999])
# and takes others silently (SGD momentum=1.5: the velocity then grows without bound).
SETTING_CHECKS = {
    # Kingma & Ba 2015 (Adam, Algorithm 1) and Liu et al. 2020 (RAdam): beta1, beta2 in [0, 1).
    # At 1 a moment estimate stays 0 and the bias correction m / (1 - beta^t) is 0 / 0; RAdam's
    # rho_inf = 2 / (1 - beta2) - 1 divides by 0.
    "betas": lambda v: require_numbers("optim.betas", v, (2,), ge=0, lt=1),
    "eps": lambda v: require_number("optim.eps", v, gt=0),  # added to sqrt(v): must not cancel it
    "weight_decay": lambda v: require_number("optim.weight_decay", v, ge=0),  # < 0 grows weights
    # Heavy-ball momentum (Polyak 1964) converges for 0 <= momentum < 1; at 1 every past gradient
    # keeps its full weight forever.
    "momentum": lambda v: require_number("optim.momentum", v, ge=0, lt=1),
    "dampening": lambda v: require_number("optim.dampening", v, ge=0, le=1),
    "nesterov": lambda v: require_bool("optim.nesterov", v),
    "amsgrad": lambda v: require_bool("optim.amsgrad", v),
    "maximize": lambda v: require_bool("optim.maximize", v),
    "decoupled_weight_decay": lambda v: require_bool("optim.decoupled_weight_decay", v),
}


def check_optimizer(name: str, **settings) -> None:
    """The one-line error for an unknown optimizer or setting, or a value out of range; no
    parameters needed."""
    require_name("optim", name, OPTIMIZERS)
    require_known_settings("optim", name, settings, [
        p for p in inspect.signature(OPTIMIZERS[name]).parameters if p not in ("params", "lr")])
    for key, value in settings.items():
        if key in SETTING_CHECKS:
            SETTING_CHECKS[key](value)
    # torch.optim.SGD raises "Nesterov momentum requires a momentum and zero dampening".
    momentum, dampening = settings.get("momentum", 0), settings.get("dampening", 0)
    if settings.get("nesterov") and not (momentum > 0 and dampening == 0):
        fail("optim.nesterov", True, f"needs momentum and no dampening (optim.momentum={momentum!r}, "
             f"optim.dampening={dampening!r})", "false, or true with momentum > 0 and dampening 0")


def build_optimizer(name: str, params, lr: float, **settings) -> torch.optim.Optimizer:
    check_optimizer(name, **settings)
    if "betas" in settings:  # torch.optim.Adam rejects betas=(0, 0.999): "both floats or both Tensors"
        settings["betas"] = tuple(float(b) for b in settings["betas"])
    return OPTIMIZERS[name](params, lr=lr, **settings)
