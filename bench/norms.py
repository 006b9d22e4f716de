"""Normalization layers by short name: every entry builds `Norm(num_channels) -> nn.Module`.

As in timm's `create_norm` and detectron2's `get_norm`, a model takes a `norm_layer` callable and
calls it with a channel count, so any norm fits any model. The short names are what the database
stores and the plots print. All layers act on (B, C, H, W) activations. An entry's settings are its
keyword arguments (defaults in `conf/norm/<name>.yaml`); the variants beyond torch.nn's are in
`bench.norm_zoo`, with their sources.

Conventions worth knowing:
- `momentum` is PyTorch's: the weight of the *new* batch statistic in the running average
  (running = (1 - momentum) * running + momentum * batch). Keras' BatchNormalization
  `momentum=0.99` (the weight of the *old* average) is PyTorch's 0.01 (the fast.ai thread), and
  Keras' default epsilon is 1e-3 where PyTorch's is 1e-5 (the Replacing BatchNorm post also tries
  eps=0.1). `momentum: null` is a cumulative average. `running_bn` adjusts its momentum to the
  batch size (see its class).
- `ln` is GroupNorm with one group (normalizes over C, H, W per sample), as in the Replacing
  BatchNorm post; `in` normalizes each channel of each sample over H, W.
- `ws_gn` is GroupNorm here *and* weight-standardized convolutions: `make_norm` marks its layer
  with `standardize_weights = True` and `bench.models.build_model` changes the convs.
- The Replacing BatchNorm post's ablation of BN's parts: `bn_affine` (scale and shift only),
  `bn_norm` (batch statistics, no affine), `bn_detach` (batch statistics that get no gradient,
  with affine).
- `sync_bn` is BN with statistics over the global batch of all data-parallel replicas (the default
  torch.distributed process group); with one process it is `bn` exactly.
"""

import inspect
from collections.abc import Callable
from functools import partial

from torch import nn

from bench.checks import require_known_settings, require_name
from bench.errors import UserError
from bench.norm_zoo import check_eps, check_flag, check_groups, check_momentum
from bench.norm_zoo.batch_variants import (
    Affine2d,
    BatchNormOnly2d,
    BatchRenorm2d,
    DetachedBatchNorm2d,
    GhostBatchNorm2d,
)
from bench.norm_zoo.bcn import BatchChannelNorm2d
from bench.norm_zoo.frn import FilterResponseNorm2d
from bench.norm_zoo.running_bn import RunningBatchNorm2d
from bench.norm_zoo.sync_bn import SyncBatchNorm2d

NormLayer = Callable[[int], nn.Module]


def _none(num_channels: int) -> nn.Module:
    return nn.Identity()


def _bn(num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1,
        affine: bool = True) -> nn.Module:
    # torch.nn checks none of these. momentum=2 or -1 trains as well as 0.1 (train loss 0.0106
    # on digits after 5 epochs, all three), but each update throws the running statistics away
    # from the batch's (2 * batch - running): eval-mode test accuracy 0.10, chance, against 0.978.
    check_eps(eps)
    check_momentum(momentum)
    check_flag("affine", affine)
    return nn.BatchNorm2d(num_channels, eps=eps, momentum=momentum, affine=affine)


def _check_groups(groups: int, num_channels: int) -> None:
    check_groups(groups)
    if num_channels % groups:
        divisors = [str(d) for d in range(1, num_channels + 1) if num_channels % d == 0]
        raise UserError(
            f"norm.groups={groups} does not divide a layer's {num_channels} channels "
            f"(allowed here: {', '.join(divisors)})"
        )


def _gn(num_channels: int, groups: int = 8, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    _check_groups(groups, num_channels)
    check_eps(eps)
    check_flag("affine", affine)
    return nn.GroupNorm(groups, num_channels, eps=eps, affine=affine)


def _ln(num_channels: int, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    check_eps(eps)
    check_flag("affine", affine)
    return nn.GroupNorm(1, num_channels, eps=eps, affine=affine)


def _in(num_channels: int, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    check_eps(eps)
    check_flag("affine", affine)
    # track_running_stats=False: instance statistics at train and test time alike.
    return nn.InstanceNorm2d(num_channels, eps=eps, affine=affine, track_running_stats=False)


def _bcn(num_channels: int, groups: int = 8, eps: float = 1e-5, momentum: float | None = 0.1,
         estimate: bool = False) -> nn.Module:
    _check_groups(groups, num_channels)
    return BatchChannelNorm2d(num_channels, groups=groups, eps=eps, momentum=momentum, estimate=estimate)


# name -> builder (a function or a class) whose first argument is the channel count.
NORMS: dict[str, Callable[..., nn.Module]] = {
    "none": _none,
    "bn": _bn,
    "gn": _gn,
    "ln": _ln,
    "in": _in,
    "running_bn": RunningBatchNorm2d,
    "brn": BatchRenorm2d,
    "ghost_bn": GhostBatchNorm2d,
    "frn": FilterResponseNorm2d,
    "ws_gn": _gn,
    "bcn": _bcn,
    "bn_affine": Affine2d,
    "bn_norm": BatchNormOnly2d,
    "bn_detach": DetachedBatchNorm2d,
    "sync_bn": SyncBatchNorm2d,
}

# Norms whose output in training mode depends on the other samples of the batch (and so on batch
# size). Each keeps running statistics for eval, which `bench.precise_bn` can recompute.
BATCH_DEPENDENT = frozenset({"bn", "running_bn", "brn", "ghost_bn", "bcn", "bn_norm", "bn_detach",
                             "sync_bn"})

# Norms that also standardize the model's convolution weights (see `bench.norm_zoo.ws`).
WEIGHT_STANDARDIZED = frozenset({"ws_gn"})


def norm_options(name: str) -> list[str]:
    """The options (keyword arguments) norm `name` takes, in signature order."""
    return list(inspect.signature(NORMS[name]).parameters)[1:]


def make_norm(name: str, **params) -> NormLayer:
    """The `Norm(num_channels)` constructor for norm `name` with its settings bound.

    Unknown names and unknown settings are errors that list what is allowed. For the norms in
    `WEIGHT_STANDARDIZED` the constructor carries `standardize_weights = True` for build_model.
    """
    require_name("norm", name, NORMS)
    require_known_settings("norm", name, params, norm_options(name))
    layer = partial(NORMS[name], **params)
    if name in WEIGHT_STANDARDIZED:
        layer.standardize_weights = True
    return layer
