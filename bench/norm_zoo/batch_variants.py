"""Layers that normalize with batch statistics: batch renorm, ghost BN, BN's parts (running BN: `running_bn`).

All act on (B, C, H, W) and keep per-channel statistics over (B, H, W). Except `Affine2d`, they
are `_BatchNorm` subclasses with BN's buffers (`running_mean`, `running_var` averaging the batches'
*unbiased* variances, `num_batches_tracked`) and BN's eval mode, so `bench.precise_bn` and
anything else that looks for `_BatchNorm` treats them as BN. `momentum` is PyTorch's: the weight of
the new batch statistic. Statistics are computed in float32 also under bf16 autocast, as PyTorch's
own BN does.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bench.checks import require_int, require_number
from bench.norm_zoo import check_eps, check_flag, check_momentum

DIMS = (0, 2, 3)  # the (B, H, W) dimensions a channel's statistics run over


def _c(t: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, 1), to broadcast over (B, C, H, W)."""
    return t.view(1, -1, 1, 1)


def values_per_channel(x: torch.Tensor) -> int:
    n = x.numel() // x.shape[1]
    if n < 2:  # the unbiased variance needs two values; nn.BatchNorm2d raises the same
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)}")
    return n


@torch.no_grad()
def update_running_stats(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                         n: int) -> None:
    """As nn.BatchNorm2d does: running = (1 - m) * running + m * batch, with the batch's biased
    variance `var` over `n` values turned unbiased; momentum None is a cumulative average."""
    bn.num_batches_tracked.add_(1)
    m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.lerp_(mean.detach(), m)
    bn.running_var.lerp_(var.detach() * (n / (n - 1)), m)


class BatchRenorm2d(nn.BatchNorm2d):
    """Batch renormalization (Ioffe 2017, arXiv 1702.03275, Algorithm 1).

    Training: y = ((x - mu_B) / sigma_B * r + d) * gamma + beta, with sigma_B = sqrt(var_B + eps),
    sigma = sqrt(running_var + eps), r = clip(sigma_B / sigma, 1/rmax, rmax) and
    d = clip((mu_B - mu) / sigma, -dmax, dmax), both without gradient; then the running averages
    are updated. rmax = 1, dmax = 0 is BN. Eval: BN's, with the running statistics.

    Differences from the paper, on purpose: the running average is of the variance (as BN's, so
    eval and PreciseBN are BN's) rather than of sigma. The paper keeps r = 1, d = 0 for 5k steps
    and then relaxes rmax to 3 (at 40k) and dmax to 5 (at 25k); here `warmup` > 0 ramps the bounds
    linearly from (1, 0) to (rmax, dmax) over that many training forward passes (counted by
    `num_batches_tracked`), and warmup = 0 uses rmax, dmax from the first step.
    """

    def __init__(self, num_channels: int, rmax: float = 3.0, dmax: float = 5.0, momentum: float | None = 0.1,
                 eps: float = 1e-5, warmup: int = 0):
        # r is clipped to [1/rmax, rmax] and d to [-dmax, dmax]: rmax < 1 or dmax < 0 is an empty
        # interval. inf is allowed: no clipping, i.e. the running statistics used in training.
        require_number("norm.rmax", rmax, ge=1, finite=False)
        require_number("norm.dmax", dmax, ge=0, finite=False)
        require_int("norm.warmup", warmup, lo=0)
        check_momentum(momentum)
        check_eps(eps)
        super().__init__(num_channels, eps=eps, momentum=momentum)
        self.rmax, self.dmax, self.warmup = float(rmax), float(dmax), warmup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        xf = x.float()
        n = values_per_channel(x)
        var, mean = torch.var_mean(xf, dim=DIMS, unbiased=False)
        std_b = torch.sqrt(var + self.eps)
        with torch.no_grad():
            std = torch.sqrt(self.running_var + self.eps)
            t = (self.num_batches_tracked / self.warmup).clamp(max=1.0) if self.warmup else 1.0
            rmax, dmax = 1 + (self.rmax - 1) * t, self.dmax * t
            r = torch.clamp(std_b / std, 1 / rmax, rmax)
            d = torch.clamp((mean - self.running_mean) / std, -dmax, dmax)
            update_running_stats(self, mean, var, n)
        y = ((xf - _c(mean)) / _c(std_b) * _c(r) + _c(d)) * _c(self.weight) + _c(self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup={self.warmup}"


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Ghost batch norm (Hoffer et al. 2017, "Train longer, generalize better", arXiv 1705.08741):
    in training, BN over virtual sub-batches of at most `virtual_bs` samples.

    A batch of B > virtual_bs is cut into k = ceil(B / virtual_bs) sub-batches as evenly as
    `torch.tensor_split` cuts (sizes differ by at most one: B=10, virtual_bs=4 gives 4, 3, 3), so
    no sub-batch is larger than asked and none is a tiny remainder. A batch of B <= virtual_bs
    is one sub-batch: plain BN (the config check rejects virtual_bs > bs; smaller batches still
    reach the layer legitimately, e.g. train-mode evaluation of a short last test batch). Each
    sub-batch updates the running statistics in turn, so a batch moves them k momentum steps.
    Eval: BN's, with the running statistics.
    """

    def __init__(self, num_channels: int, virtual_bs: int = 32, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True):
        require_int("norm.virtual_bs", virtual_bs, lo=1)
        check_momentum(momentum)
        check_eps(eps)
        check_flag("affine", affine)
        super().__init__(num_channels, eps=eps, momentum=momentum, affine=affine)
        self.virtual_bs = virtual_bs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.virtual_bs:
            return super().forward(x)
        out = []
        for chunk in x.tensor_split(-(-x.shape[0] // self.virtual_bs)):
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            out.append(F.batch_norm(chunk, self.running_mean, self.running_var, self.weight, self.bias,
                                    True, m, self.eps))
        return torch.cat(out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_bs={self.virtual_bs}"


class DetachedBatchNorm2d(nn.BatchNorm2d):
    """BN whose batch mean and variance are constants to autograd (the Replacing BatchNorm post's
    "normalize with detached statistics"): the same forward as BN, but the gradient skips the terms
    that flow through mean and variance, dy/dx = gamma / sigma_B. Eval: BN's."""

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1):
        check_momentum(momentum)
        check_eps(eps)
        super().__init__(num_channels, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        xf = x.float()
        n = values_per_channel(x)
        with torch.no_grad():
            var, mean = torch.var_mean(xf, dim=DIMS, unbiased=False)
            update_running_stats(self, mean, var, n)
        y = (xf - _c(mean)) * _c(torch.rsqrt(var + self.eps)) * _c(self.weight) + _c(self.bias)
        return y.to(x.dtype)


class BatchNormOnly2d(nn.modules.batchnorm._BatchNorm):
    """BN without its learnable scale and shift (the Replacing BatchNorm post's "normalize only"):
    nn.BatchNorm2d's forward with affine=False. Not an nn.BatchNorm2d subclass on purpose:
    torchvision's ResNet sets the weight of every BatchNorm2d to 1 after building, which fails when
    there is none."""

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1):
        check_momentum(momentum)
        check_eps(eps)
        super().__init__(num_channels, eps=eps, momentum=momentum, affine=False)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected (B, C, H, W) input, got {x.dim()}D")


class Affine2d(nn.Module):
    """Only BN's learnable per-channel scale and shift, no normalization (the Replacing BatchNorm
    post's "affine only"): y = x * gamma + beta, gamma = 1 and beta = 0 at the start. Same in train
    and eval."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _c(self.weight) + _c(self.bias)
