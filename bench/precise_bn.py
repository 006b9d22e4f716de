"""PreciseBN: recompute BN's population statistics with the final weights (Wu & Johnson).

Wu & Johnson, "Rethinking 'Batch' in BatchNorm" (arXiv 2105.07576), section 3: the EMA of batch
statistics lags a model whose weights keep changing, most at large batch sizes and learning rates;
statistics recomputed over 10^3-10^4 training samples with the weights frozen are better. The
reference implementation is fvcore's `update_bn_stats` (fvcore/nn/precise_bn.py): momentum set
aside during the pass, batches weighted by their size, population variance (Bessel's correction
undone), momentum restored. Here each layer's input is accumulated directly instead (float64 sums
of x and x^2 per channel, via forward pre-hooks), which gives the same numbers without undoing
the running update, and works for the zoo's layers whose running update is not BN's (ghost BN
moves its statistics once per sub-batch; running BN keeps sums and counts).

`torch.optim.swa_utils.update_bn` differs: it averages the batches' means and *unbiased*
variances with equal weights, so its variance lacks the spread of the batch means between batches
and keeps each batch's Bessel factor n/(n-1).
"""

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bench.errors import UserError


def stat_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose eval mode uses running statistics: every `_BatchNorm` that tracks them
    (nn.BatchNorm2d and the zoo's subclasses: brn, ghost_bn, bn_detach, bn_norm, bcn's batch part)
    and every layer with a `set_population_stats(mean, var)` method (running_bn)."""
    return [m for m in model.modules()
            if (isinstance(m, _BatchNorm) and m.running_mean is not None)
            or callable(getattr(m, "set_population_stats", None))]


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable, num_samples: int) -> int:
    """Set the running mean and variance of every layer in `stat_layers(model)` to the mean and
    population variance of its inputs over about `num_samples` training samples.

    `batches` yields input tensors (B, C, H, W) or tuples whose first item is one, e.g. a training
    loader; whole batches are taken until `num_samples` samples are seen (or the data ends), so a
    batch is never cut and the count may run over by less than one batch. The pass runs the model
    in training mode, as fvcore does (so a layer sees inputs normalized by batch statistics above
    it; dropout is active too), without gradients; the layers' running statistics are held still
    during it (momentum 0; running_bn, whose training forward always folds in the batch, is the
    exception) and every other buffer of theirs is restored after it. Each module's train/eval
    mode is restored. Returns the number of samples used (0 when the model has no such layer).

    Statistics over a channel's B*H*W values of each batch are pooled over batches, so the result
    does not depend on how the same samples were split into batches, except through the layers
    above that normalize with batch statistics.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise UserError(f"PreciseBN num_samples={num_samples!r} is not allowed (allowed: an integer >= 1)")
    layers = stat_layers(model)
    if not layers:
        return 0
    sums: dict[nn.Module, list] = {m: [0, 0.0, 0.0] for m in layers}

    def accumulate(layer: nn.Module, args: tuple) -> None:
        x = args[0]
        acc = sums[layer]
        dtype = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        xd = x.to(dtype)
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + xd.sum(dim=(0, 2, 3))
        acc[2] = acc[2] + xd.square().sum(dim=(0, 2, 3))

    modes = {m: m.training for m in model.modules()}
    saved = {m: [b.clone() for b in m.buffers(recurse=False)] for m in layers}
    momenta = {m: m.momentum for m in layers if isinstance(m, _BatchNorm)}
    hooks = [m.register_forward_pre_hook(accumulate) for m in layers]
    seen = 0
    try:
        for m in momenta:
            m.momentum = 0.0
        model.train()
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            seen += x.shape[0]
            if seen >= num_samples:
                break
    finally:
        for h in hooks:
            h.remove()
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, buffers in saved.items():
            for b, old in zip(m.buffers(recurse=False), buffers, strict=True):
                b.copy_(old)
        for m, training in modes.items():
            m.train(training)
    if seen == 0:
        raise ValueError("PreciseBN got no batches")
    for m, (n, s, q) in sums.items():
        if n == 0:  # not reached by these inputs (e.g. a GAN generator's norms when fed images)
            continue
        mean = s / n
        var = (q / n - mean.square()).clamp_min(0)
        if isinstance(m, _BatchNorm):
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            m.running_var.copy_(var.to(m.running_var.dtype))
        else:
            m.set_population_stats(mean.float(), var.float())
    return seen
