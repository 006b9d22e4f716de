"""Filter response normalization with a thresholded linear unit (Singh & Krishnan 2019,
"Filter Response Normalization Layer", arXiv 1911.09737).

Per sample and channel, nu2 = mean(x^2) over (H, W); y = gamma * x / sqrt(nu2 + eps) + beta;
z = max(y, tau), with learned per-channel gamma (1), beta (0), tau (0). No mean is subtracted and
no statistic crosses samples, so train and eval are the same and the batch size does not matter.
TLU is part of the layer, as in the paper; the models' ReLU after it is then redundant only where
tau <= 0, which is how it starts.

On a 1x1 map nu2 = x^2 and x / |x| is a sign: the paper makes eps learnable for such layers.
`learnable_eps=True` uses eps + |eps_l| with a per-channel eps_l learned from 1e-4 (the start
value is our choice; the paper's lower bound is the fixed eps, 1e-6 by default).
"""

import torch
from torch import nn

from bench.norm_zoo import check_eps, check_flag

LEARNED_EPS_START = 1e-4


class FilterResponseNorm2d(nn.Module):
    def __init__(self, num_channels: int, eps: float = 1e-6, learnable_eps: bool = False):
        super().__init__()
        check_eps(eps)
        check_flag("learnable_eps", learnable_eps)
        self.num_channels, self.eps = num_channels, eps
        shape = (1, num_channels, 1, 1)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.tau = nn.Parameter(torch.zeros(shape))
        self.eps_l = nn.Parameter(torch.full(shape, LEARNED_EPS_START)) if learnable_eps else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        eps = self.eps if self.eps_l is None else self.eps + self.eps_l.abs()
        nu2 = xf.square().mean(dim=(2, 3), keepdim=True)
        y = xf * torch.rsqrt(nu2 + eps) * self.weight + self.bias
        return torch.maximum(y, self.tau).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, learnable_eps={self.eps_l is not None}"
