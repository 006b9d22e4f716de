"""Gradient accumulation: equal to one big step without batch statistics, not with them."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bench.train import Optimization


def step(model, k, x, y):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def forward(xm, ym):
        loss = F.cross_entropy(model(xm), ym)
        return loss, loss.detach()

    Optimization(opt, None, k).step(x, y, forward)
    return model


def test_accumulation_equals_one_step_without_batch_statistics():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(4))
    model(x)  # materialise the lazy layer
    one, four = step(model, 1, x, y), step(model, 4, x, y)
    for a, b in zip(one.parameters(), four.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_batchnorm_sees_each_micro_batch_alone():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 4, (8,))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(4))
    model(x)
    one, four = step(model, 1, x, y), step(model, 4, x, y)
    assert int(four[1].num_batches_tracked) - int(model[1].num_batches_tracked) == 4
    assert int(one[1].num_batches_tracked) - int(model[1].num_batches_tracked) == 1
    assert not torch.allclose(one[0].weight, four[0].weight)  # statistics of 2 vs 8 samples
