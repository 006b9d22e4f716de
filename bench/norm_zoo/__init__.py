"""The normalization variants beyond torch.nn's, one module per family.

- `batch_variants`: layers that normalize with batch statistics (batch renorm, ghost BN, and the
  Replacing BatchNorm post's ablation of BN's parts);
- `running_bn`: the fast.ai course's running batch norm (running statistics in training too);
- `frn`: filter response normalization with its thresholded linear unit;
- `bcn`: batch-channel normalization;
- `sync_bn`: BN with statistics synchronized across torch.distributed processes;
- `ws`: weight standardization of a built model's convolutions (used with group norm as `ws_gn`).

Every layer takes the channel count first (`Norm(num_channels)`) and acts on (B, C, H, W); the short
names and their settings live in `bench.norms`. A setting out of range is a `UserError` naming it,
raised by the layer's constructor with the checks below (shared with `bench.norms`' torch.nn ones).
"""

from bench.checks import require_bool, require_int, require_number


def check_momentum(momentum: float | None, allow_none: bool = True) -> None:
    """PyTorch's convention, the weight of the new batch statistic: 0 keeps the initial running
    statistics (mean 0, var 1) forever, 1 keeps only the last batch's; None is a cumulative average
    (nn.BatchNorm2d's `momentum=None`)."""
    require_number("norm.momentum", momentum, ge=0, le=1,
                   null="a cumulative average" if allow_none else None)


def check_eps(eps: float) -> None:
    """eps is added to the variance under the square root: at 0 a constant channel divides by 0."""
    require_number("norm.eps", eps, gt=0)


def check_groups(groups: int) -> None:
    """A group count is a positive integer (whether it divides a layer's channels is checked where
    the layer is built, with the divisors in the message)."""
    require_int("norm.groups", groups, lo=1)


def check_flag(name: str, value) -> None:
    """A true/false setting (affine, estimate, learnable_eps): 1 or "yes" would pass as truthy."""
    require_bool(f"norm.{name}", value)
