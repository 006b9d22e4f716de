"""Synchronized BatchNorm: batch statistics over the global batch of all data-parallel replicas."""

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules._functions import SyncBatchNorm as torch_sync_batch_norm

from bench.ddp import AllReduceSum
from bench.norm_zoo import check_eps, check_flag, check_momentum
from bench.norm_zoo.batch_variants import DIMS, _c, update_running_stats


def sync_world_size(group=None) -> int:
    """The number of processes statistics are synchronized over: the size of `group` (None: the
    default process group), 1 when torch.distributed is not initialized."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over the whole global batch, across the processes
    of the default torch.distributed process group (Ioffe & Szegedy's BN over the global batch, as
    `torch.nn.SyncBatchNorm`).

    - No process group, a world size of 1, eval mode, or inside `local_statistics`: exactly
      nn.BatchNorm2d (its own forward).
    - CUDA input: the autograd function `torch.nn.SyncBatchNorm` runs (PyTorch's kernels: an
      all_gather of per-rank mean/invstd/count, one all_reduce in backward).
    - CPU input: torch refuses nn.SyncBatchNorm on the CPU (its forward raises "SyncBatchNorm
      expected input tensor to be on GPU", and DistributedDataParallel raises "SyncBatchNorm
      layers only work with GPU modules" for any module that *is* an nn.SyncBatchNorm, which is
      why this class is a BatchNorm2d and not its subclass). Here each process sums x and x^2 per
      channel (accumulated in float64) and counts its B*H*W values; one differentiable
      all_reduce of [sums, squares, count] (`bench.ddp.AllReduceSum`, timed as communication)
      gives the global mean and biased variance. Its
      backward all-reduces the gradients of those statistics, so each replica's input gradient
      is the global-batch BN gradient (the sum over replicas' losses). Cost, measured on this
      2-core machine: 2 gloo replicas under DDP, two conv+norm layers, 16x3x28x28 per replica:
      30-32 ms per SGD step against 13-18 ms with `bn` (two all_reduces per layer per step).

    Running mean/var are updated with the global statistics, the variance made unbiased with the
    global count, as nn.BatchNorm2d does on the whole batch; so every replica keeps the same
    buffers. Statistics of float16/bfloat16 inputs are computed in float32, as torch's BN does.

    It is a `_BatchNorm`, so `bench.precise_bn` and `bench.bn_eval` treat it as BN. Caveat for
    data-parallel runs: every training-mode forward is a collective, so all processes of the group
    must make it together; a forward on one process alone waits for the others until the group's
    timeout. Evaluation, which one replica does alone (PreciseBN's pass and the batch-statistics
    evaluation run the layers in training mode), runs inside `local_statistics`.
    """

    local = False  # set by `local_statistics`: statistics of this process's input only

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True):
        check_eps(eps)
        check_momentum(momentum)
        check_flag("affine", affine)
        super().__init__(num_channels, eps=eps, momentum=momentum, affine=affine)
        self.process_group = None  # as nn.SyncBatchNorm's: None is the default group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        world = sync_world_size(self.process_group)
        if not self.training or world == 1 or self.local:
            return super().forward(x)
        self._check_input_dim(x)
        if x.device.type != "cpu":
            # What nn.SyncBatchNorm.forward does for a tracked, training BN (torch 2.14,
            # torch/nn/modules/batchnorm.py): count the batch, then its autograd function.
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            group = self.process_group if self.process_group is not None else dist.group.WORLD
            return torch_sync_batch_norm.apply(x, self.weight, self.bias, self.running_mean,
                                               self.running_var, self.eps, m, group, world)
        y, mean, var, n = global_batch_norm(x, self.weight, self.bias, self.eps, self.process_group)
        update_running_stats(self, mean.to(self.running_mean.dtype), var.to(self.running_var.dtype), n)
        return y


def global_batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      eps: float, group=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """BN's training forward of the (B, C, H, W) share `x` of a batch spread over the processes of
    `group` (None: the default group): (y, global mean (C,), global biased variance (C,), global
    count of values per channel). Differentiable in x, weight and bias through one all_reduce."""
    xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    local = torch.cat([xs.sum(DIMS, dtype=torch.float64), xs.square().sum(DIMS, dtype=torch.float64),
                       torch.full((1,), x.numel() // x.shape[1], dtype=torch.float64)])
    total = AllReduceSum.apply(local, group if group is not None else dist.group.WORLD)
    c, n = x.shape[1], float(total[-1].detach())
    if n < 2:  # the unbiased running variance needs two values; nn.BatchNorm2d raises the same
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)} on each process")
    mean = total[:c] / n
    var = (total[c:2 * c] / n - mean.square()).clamp_min(0)
    y = (xs - _c(mean.to(xs.dtype))) * _c(torch.rsqrt(var + eps).to(xs.dtype))
    if weight is not None:
        y = y * _c(weight) + _c(bias)
    return y.to(x.dtype), mean, var, n


@contextmanager
def local_statistics(model: nn.Module):
    """Within the block, `model`'s SyncBatchNorm2d layers are plain BN over this process's input:
    for the evaluation one replica makes alone, as one process would (`runners.replicas`)."""
    layers = [m for m in model.modules() if isinstance(m, SyncBatchNorm2d)]
    for m in layers:
        m.local = True
    try:
        yield
    finally:
        for m in layers:
            m.local = False
