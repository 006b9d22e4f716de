"""The GAN runner's per-epoch probes of G and D (definitions of the metrics in `bench.metrics`)."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bench.metrics.uniformity import batch_uniformity


@contextmanager
def train_mode_untouched(*modules: nn.Module) -> Iterator[None]:
    """Train mode (BN normalises with the batch's statistics, as in training) for a probe that
    must not change the models: every buffer (BN running statistics) is restored afterwards."""
    saved = [(m, m.training, [(b, b.clone()) for b in m.buffers()]) for m in modules]
    try:
        for m in modules:
            m.train()
        yield
    finally:
        for m, mode, buffers in saved:
            for b, copy in buffers:
                b.copy_(copy)
            m.train(mode)


@torch.no_grad()
def uniformity(G, D, train, batches: int, generator: torch.Generator, amp) -> dict[str, float]:
    """Batch uniformity of D's logits (`bench.metrics.uniformity`) over `batches` batches of real
    training images and as many of fresh fakes, each batch of one kind and of the training batch
    size, D and G in train mode.

    train: the training `DeviceBatches` (uint8 images on the device, its normalisation).
    Returns {'d_uniformity' (both kinds pooled), 'd_uniformity_real', 'd_uniformity_fake'}.
    """
    images, bs = train.images, train.batch_size
    device = images.device
    real, fake = [], []
    with train_mode_untouched(G, D):
        for _ in range(batches):
            idx = torch.randperm(len(images), device=device, generator=generator)[:bs]
            x = torch.addcmul(train.bias, images[idx].float(), train.scale)
            z = G.noise(bs, generator, device)
            with amp:
                real.append(D(x).float())
                fake.append(D(G(z)).float())
    real, fake = torch.stack(real), torch.stack(fake)
    return {"d_uniformity": batch_uniformity(real, fake),
            "d_uniformity_real": batch_uniformity(real),
            "d_uniformity_fake": batch_uniformity(fake)}


@torch.no_grad()
def evaluate(G, D, z: torch.Tensor, real: torch.Tensor, batch_size: int,
             amp) -> tuple[torch.Tensor, dict[str, float]]:
    """(fakes G makes from `z` in eval mode, float32; D's eval-mode accuracy on `real` and on
    those fakes as {'d_acc_real', 'd_acc_fake'})."""
    G.eval()
    D.eval()
    with amp:
        fakes = torch.cat([G(zb).float() for zb in z.split(batch_size)])
        d_real = torch.cat([D(x).float() for x in real.split(batch_size)])
        d_fake = torch.cat([D(f).float() for f in fakes.split(batch_size)])
    return fakes, {"d_acc_real": (d_real > 0).float().mean().item(),
                   "d_acc_fake": (d_fake < 0).float().mean().item()}
