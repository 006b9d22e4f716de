"""The normalization variants beyond torch.nn's, one module per family.

- `batch_variants`: layers that normalize with batch statistics (batch renorm, ghost BN, and seed
  003's ablation of BN's parts);
- `running_bn`: the fast.ai course's running batch norm (running statistics in training too);
- `frn`: filter response normalization with its thresholded linear unit;
- `bcn`: batch-channel normalization;
- `ws`: weight standardization of a built model's convolutions (used with group norm as `ws_gn`).

Every layer takes the channel count first (`Norm(num_channels)`) and acts on (B, C, H, W); the short
names and their settings live in `bench.norms`. A setting out of range is a `UserError` naming it.
"""

from bench.errors import UserError


def check_setting(name: str, value, ok: bool, allowed: str) -> None:
    """One-line error for a norm setting out of range: `norm.rmax=0.5 is not allowed (allowed: >= 1)`."""
    if not ok:
        raise UserError(f"norm.{name}={value!r} is not allowed (allowed: {allowed})")


def check_momentum(momentum: float | None, allow_none: bool = True) -> None:
    ok = (momentum is None and allow_none) or (
        isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and 0 <= momentum <= 1)
    check_setting("momentum", momentum, ok, "0..1" + (" or null (cumulative average)" if allow_none else ""))


def check_eps(eps: float) -> None:
    check_setting("eps", eps, isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0,
                  "a positive number")
