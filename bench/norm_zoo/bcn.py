"""Batch-channel normalization (Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization", arXiv 1903.10520; code:
github.com/joe-siyuan-qiao/Batch-Channel-Normalization).

BCN = a batch part, then a channel part: y = GN(BN(x)), each with its own learned affine.
- `estimate=False` (default): the batch part is plain BN with batch statistics in training, the
  paper's form for large batches and the "BN then GN" that the Replacing BatchNorm post tried.
- `estimate=True`: the paper's micro-batch form (its `EstBN`): the batch part normalizes with
  running estimates of the batch statistics, updated from the current batch *before* use and
  without gradient through them. The official code updates the variance around the previous
  running mean and leaves the update rate to the training script; here the update is BN's
  (batch mean, unbiased batch variance, `momentum`), so eval and PreciseBN treat it as BN.
The channel part is nn.GroupNorm with `groups` groups and a per-channel affine (the official
code's affine is per group). Eval: the batch part with its running statistics, then GN.
"""

import torch
from torch import nn

from bench.norm_zoo import check_eps, check_flag, check_groups, check_momentum
from bench.norm_zoo.batch_variants import DIMS, _c, update_running_stats, values_per_channel


class EstimatedBatchNorm2d(nn.BatchNorm2d):
    """BN that normalizes with its running statistics in training too, after folding in the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            n = values_per_channel(x)
            with torch.no_grad():
                var, mean = torch.var_mean(x.float(), dim=DIMS, unbiased=False)
                update_running_stats(self, mean, var, n)
        xf = x.float()
        y = (xf - _c(self.running_mean)) * _c(torch.rsqrt(self.running_var + self.eps))
        return (y * _c(self.weight) + _c(self.bias)).to(x.dtype)


class BatchChannelNorm2d(nn.Module):
    def __init__(self, num_channels: int, groups: int = 8, eps: float = 1e-5, momentum: float | None = 0.1,
                 estimate: bool = False):
        super().__init__()
        check_groups(groups)
        check_momentum(momentum)
        check_eps(eps)
        check_flag("estimate", estimate)
        batch_norm = EstimatedBatchNorm2d if estimate else nn.BatchNorm2d
        self.bn = batch_norm(num_channels, eps=eps, momentum=momentum)
        self.gn = nn.GroupNorm(groups, num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.bn(x))
