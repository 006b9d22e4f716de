"""Normalization layers by short name: every entry builds `Norm(num_channels) -> nn.Module`.

As in timm's `create_norm` and detectron2's `get_norm`, a model takes a `norm_layer` callable and
calls it with a channel count, so any norm fits any model. The short names are what the database
stores and the plots print. All layers act on (B, C, H, W) activations.

Conventions worth knowing:
- `momentum` is PyTorch's: the weight of the *new* batch statistic in the running average
  (running = (1 - momentum) * running + momentum * batch). Keras' `momentum=0.99` is PyTorch's 0.01.
- `ln` is GroupNorm with one group (normalizes over C, H, W per sample), as in seed 003; `in`
  normalizes each channel of each sample over H, W.
"""

from collections.abc import Callable
from functools import partial

from torch import nn

from bench.errors import UserError, choices

NormLayer = Callable[[int], nn.Module]


def _none(num_channels: int) -> nn.Module:
    return nn.Identity()


def _bn(num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1,
        affine: bool = True) -> nn.Module:
    return nn.BatchNorm2d(num_channels, eps=eps, momentum=momentum, affine=affine)


def _gn(num_channels: int, groups: int = 8, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    if groups < 1 or num_channels % groups:
        divisors = [str(d) for d in range(1, num_channels + 1) if num_channels % d == 0]
        raise UserError(
            f"norm.groups={groups} does not divide a layer's {num_channels} channels "
            f"(allowed here: {', '.join(divisors)})"
        )
    return nn.GroupNorm(groups, num_channels, eps=eps, affine=affine)


def _ln(num_channels: int, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    return nn.GroupNorm(1, num_channels, eps=eps, affine=affine)


def _in(num_channels: int, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    # track_running_stats=False: instance statistics at train and test time alike.
    return nn.InstanceNorm2d(num_channels, eps=eps, affine=affine, track_running_stats=False)


NORMS: dict[str, Callable[..., nn.Module]] = {
    "none": _none,
    "bn": _bn,
    "gn": _gn,
    "ln": _ln,
    "in": _in,
}

# Norms whose output depends on the other samples of the batch (and so on batch size).
BATCH_DEPENDENT = frozenset({"bn"})


def make_norm(name: str, **params) -> NormLayer:
    """The `Norm(num_channels)` constructor for norm `name` with its settings bound.

    Unknown names and unknown settings are errors that list what is allowed.
    """
    if name not in NORMS:
        raise UserError(f"unknown norm '{name}' (allowed: {choices(NORMS)})")
    builder = NORMS[name]
    allowed = builder.__code__.co_varnames[1 : builder.__code__.co_argcount]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UserError(
            f"unknown setting norm.{unknown[0]} for norm '{name}' (allowed: {choices(allowed) or 'none'})"
        )
    return partial(builder, **params)
