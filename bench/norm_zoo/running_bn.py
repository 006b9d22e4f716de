"""Running BatchNorm of the fast.ai course, the Replacing BatchNorm post's "Running BatchNorm"."""

import math

import torch
from torch import nn

from bench.norm_zoo import check_eps, check_momentum
from bench.norm_zoo.batch_variants import DIMS, _c


class RunningBatchNorm2d(nn.Module):
    """Running BatchNorm of the fast.ai course (2019 part 2, lesson 10, notebook 07_batchnorm,
    `RunningBatchNorm`), used by the Replacing BatchNorm post: training *and* eval normalize with
    running statistics.

    Per channel it keeps exponential averages of the batch sums S = sum(x), Q = sum(x^2) and the
    count c = B*H*W, all started at 0; mean = S/c and var = Q/c - mean^2. In training the current
    batch enters the averages before they are used (gradients flow through its share; the older
    part is detached), with a momentum that grows with the batch: m' = 1 - (1 - m)/sqrt(B - 1)
    (m' = m at B = 2 and at B = 1, where the course's formula divides by zero). While fewer than
    20 samples have been seen the variance is clamped to >= 0.01 (a first batch of 2 is noisy).

    Debiasing: the course divides S, Q and c by dbias = 1 - prod(1 - m'_t) for the first 100
    steps. The factor cancels in S/c and Q/c (as noted on the course forum), so it is left out:
    c, averaged from 0 like S and Q, already debiases them. At the first step mean and var are
    exactly the batch's. Before any training step the layer is the identity (mean 0, var 1).
    """

    def __init__(self, num_channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        check_momentum(momentum, allow_none=False)
        check_eps(eps)
        self.num_channels, self.momentum, self.eps = num_channels, momentum, eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("sums", torch.zeros(num_channels))
        self.register_buffer("sqrs", torch.zeros(num_channels))
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # samples seen in training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        sums, sqrs, count = self.sums, self.sqrs, self.count
        if self.training:
            b = x.shape[0]
            m = self.momentum if b < 2 else 1 - (1 - self.momentum) / math.sqrt(b - 1)
            sums = torch.lerp(sums, xf.sum(DIMS), m)
            sqrs = torch.lerp(sqrs, (xf * xf).sum(DIMS), m)
            count = torch.lerp(count, torch.full_like(count, x.numel() // x.shape[1]), m)
            with torch.no_grad():
                self.sums.copy_(sums)
                self.sqrs.copy_(sqrs)
                self.count.copy_(count)
                self.seen.add_(b)
        fresh = count == 0
        c = torch.where(fresh, 1.0, count)
        mean = torch.where(fresh, 0.0, sums / c)
        var = torch.where(fresh, 1.0, (sqrs / c - mean * mean).clamp_min(0))
        var = torch.where(self.seen < 20, var.clamp_min(0.01), var)
        y = (xf - _c(mean)) * _c(torch.rsqrt(var + self.eps)) * _c(self.weight) + _c(self.bias)
        return y.to(x.dtype)

    @torch.no_grad()
    def set_population_stats(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Make the running mean and variance `mean` and `var` (used by `bench.precise_bn`), keeping
        the running count's scale so that later training steps weigh in as before."""
        c = torch.where(self.count == 0, 1.0, self.count)
        self.count.copy_(c)
        self.sums.copy_(mean * c)
        self.sqrs.copy_((var + mean * mean) * c)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, momentum={self.momentum}, eps={self.eps}"
