"""The GAN runner's per-epoch probes of G and D (definitions of the metrics in `bench.metrics`)."""

import math

import torch
from torch import nn

from bench.bn_eval import batchstats_order, untouched
from bench.data.loader import filled_batches
from bench.metrics.uniformity import batch_uniformity
from bench.precise_bn import stat_layers, update_bn_stats


def train_mode_untouched(*modules: nn.Module):
    """Train mode (BN normalises with the batch's statistics, as in training), nothing changed."""
    return untouched(*modules, train=True)


@torch.no_grad()
def uniformity(G, D, train, batches: int, generator: torch.Generator, amp) -> dict[str, float]:
    """Batch uniformity of D's logits (`bench.metrics.uniformity`) over `batches` batches of real
    training images and as many of fresh fakes, each batch of one kind and of the training batch
    size, D and G in train mode.

    train: the training `DeviceBatches` (uint8 images on the device, its normalisation).
    Returns {'d_uniformity' (both kinds pooled), 'd_uniformity_real', 'd_uniformity_fake'}.
    """
    bs, device = train.batch_size, train.images.device
    real, fake = [], []
    with train_mode_untouched(G, D):
        for _ in range(batches):
            x = train.sample(bs, generator)
            z = G.noise(bs, generator, device)
            with amp:
                real.append(D(x).float())
                fake.append(D(G(z)).float())
    real, fake = torch.stack(real), torch.stack(fake)
    return {"d_uniformity": batch_uniformity(real, fake),
            "d_uniformity_real": batch_uniformity(real),
            "d_uniformity_fake": batch_uniformity(fake)}


def _run(net, x: torch.Tensor, batch_size: int, batch_stats: bool, order=None) -> torch.Tensor:
    """net over x in batches of `batch_size`, float32, in x's order. With `batch_stats` the
    batches are those of `bench.bn_eval`'s batch-statistics split: all exactly `batch_size` (a
    short last batch is filled up, `filled_batches`), taken in `order` (default: as stored); the
    outputs come back in x's own order, each sample scored once."""
    if not batch_stats:
        return torch.cat([net(b).float() for b in x.split(batch_size)])
    order = torch.arange(len(x), device=x.device) if order is None else order
    outs, scored = [], []
    for idx, k in filled_batches(order, min(batch_size, len(x))):
        outs.append(net(x[idx]).float()[:k])
        scored.append(idx[:k])
    # `scored` is a permutation of 0..n-1: sorting by it puts the outputs back in x's order.
    return torch.cat(outs)[torch.argsort(torch.cat(scored))]


@torch.no_grad()
def fakes_and_d_accuracy(G, D, z: torch.Tensor, real: torch.Tensor, batch_size: int, amp,
                         batch_stats: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """(fakes G makes from `z`, float32; D's accuracy on `real` and on those fakes as
    {'d_acc_real', 'd_acc_fake'}), both in eval mode, or with `batch_stats` in the mode the
    caller set (train mode: each batch normalised by its own statistics; the real images in the
    fixed shuffled order of `bench.bn_eval.batchstats_order`, as the other tasks' test images)."""
    if not batch_stats:
        G.eval()
        D.eval()
    order = batchstats_order(len(real), real.device) if batch_stats else None
    with amp:
        fakes = _run(G, z, batch_size, batch_stats)
        d_real = _run(D, real, batch_size, batch_stats, order)
        d_fake = _run(D, fakes, batch_size, batch_stats)
    return fakes, {"d_acc_real": (d_real > 0).float().mean().item(),
                   "d_acc_fake": (d_fake < 0).float().mean().item()}


@torch.no_grad()
def precise_bn(G, D, train, samples: int, generator: torch.Generator, mixed: bool, amp) -> None:
    """PreciseBN (`bench.precise_bn`) for both networks, each over what it sees in training:
    G's statistics over `samples` noise vectors, D's over `samples` real training images and
    as many fakes from G in train mode (as in training), in batches of the training size, real
    and fake batches apart (task.d_batches=separate) or concatenated (mixed)."""
    bs, device = train.batch_size, train.images.device
    n = math.ceil(samples / bs)
    update_bn_stats(G, [G.noise(bs, generator, device) for _ in range(n)], samples)
    d_batches = []
    with train_mode_untouched(G), amp:
        for (x, _), _ in zip(train.replace(generator=generator), range(n), strict=False):
            fake = G(G.noise(bs, generator, device)).float()
            d_batches += [torch.cat((x, fake))] if mixed else [x, fake]
    update_bn_stats(D, d_batches, 2 * n * bs)


@torch.no_grad()
def bn_splits(G, D, z: torch.Tensor, real: torch.Tensor, train, amp, *, bs: int, eval_bs: int,
              precise_samples: int, seed: int, mixed: bool,
              modes: bool = True) -> dict[str, tuple[torch.Tensor, dict[str, float]]]:
    """The two extra evaluations of `bench.bn_eval` for a GAN with statistics layers in G or D
    (and `modes`): {'test_precise': fakes_and_d_accuracy(...) with PreciseBN statistics over
    `precise_samples` in both networks, 'test_batchstats': the same in train mode, batches of the
    training size `bs`}. G and D are left exactly as they were (buffers, modes); the noise and
    the real images drawn come from a generator of their own (seeded `seed + 1`), so training
    does not depend on these probes."""
    if not modes or not (stat_layers(G) or stat_layers(D)):
        return {}
    gen = torch.Generator(device=real.device).manual_seed(seed + 1)
    out = {}
    with untouched(G, D):
        precise_bn(G, D, train, precise_samples, gen, mixed, amp)
        out["test_precise"] = fakes_and_d_accuracy(G, D, z, real, eval_bs, amp)
    with untouched(G, D, train=True):
        out["test_batchstats"] = fakes_and_d_accuracy(G, D, z, real, bs, amp, batch_stats=True)
    return out
