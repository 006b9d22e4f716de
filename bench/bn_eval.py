"""Test metrics three ways for a model with batch-statistics layers (the fast.ai thread,
Wu & Johnson).

- split `test`: eval mode with the EMA running statistics (PyTorch's default evaluation);
- split `test_precise`: running statistics recomputed with the current weights over
  `bn_eval.precise_samples` training samples (PreciseBN, `bench.precise_bn`) in batches of the
  training size composed as `batch_composition.precise` says, then the EMA buffers
  are put back, so training goes on exactly as it would have;
- split `test_batchstats`: the statistics layers in train mode at test time, each test batch of
  the *training* batch size normalised by its own statistics (running buffers left untouched).
  The test set is taken in one fixed shuffled order (`batchstats_order`: the same for every run,
  so runs are compared on the same batches; a test set stored sorted by class would otherwise give
  one-class batches), cut into batches of min(bs, test images); the last batch is filled up with
  images from the start of that order, which are not scored again (`filled_batches`).
All three splits score every test image exactly once.
The fast.ai thread's 0.1135 is the `test` split of a model whose `test_batchstats` is fine; Wu &
Johnson show `test` lagging `test_precise` at large batch sizes.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bench.precise_bn import stat_layers, update_bn_stats

# The test order of the batch-statistics split is drawn from this seed, not the run's: every run
# (any seed, norm or batch size) then sees the same test images in the same order.
BATCHSTATS_ORDER_SEED = 0


def batchstats_order(n: int, device) -> torch.Tensor:
    """The fixed shuffled order of n test samples for batch-statistics evaluation. Drawn on the
    CPU, so it is the same on every device."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(BATCHSTATS_ORDER_SEED)).to(device)


@contextmanager
def untouched(*modules: nn.Module, train: bool | None = None) -> Iterator[None]:
    """For a probe that must not change the models: every buffer (BN running statistics) and
    every submodule's train/eval mode are restored afterwards. `train`: the mode to probe in."""
    saved = [([(b, b.clone()) for b in m.buffers()], {s: s.training for s in m.modules()})
             for m in modules]
    try:
        if train is not None:
            for m in modules:
                m.train(train)
        yield
    finally:
        for buffers, modes in saved:
            for b, copy in buffers:
                b.copy_(copy)
            for s, mode in modes.items():
                s.train(mode)


@torch.no_grad()
def score_bn_modes(model: nn.Module, score, train, test, *, bs: int, precise_samples: int,
                   precise_composition: str, seed: int, modes: bool = True) -> dict[str, dict]:
    """{split: score(model, batches)} for `test`, and for a model with statistics layers (and
    `modes`) also `test_precise` and `test_batchstats`.

    score(model, batches) -> {metric name: value} runs the model in whatever mode it is in and
    scores `model(x)[:len(y)]` of each batch (x, y) (see `DeviceBatches`' `fill_last`).
    train, test: the run's `DeviceBatches`; the extra passes use their own copies (with their own
    generator, seeded `seed + 1`), so the training data order does not depend on whether these
    are recorded. bs: the training batch size (of the batch-statistics split); precise_samples,
    precise_composition: PreciseBN's training samples and their batch composition.
    """
    model.eval()
    out = {"test": score(model, test)}
    layers = stat_layers(model)
    if not layers or not modes:
        return out
    gen = torch.Generator(device=train.images.device).manual_seed(seed + 1)
    with untouched(model):  # the EMA buffers are put back after each pass
        precise_batches = train.replace(generator=gen, composition=precise_composition)
        update_bn_stats(model, precise_batches, precise_samples)
        model.eval()
        out["test_precise"] = score(model, test)
    with untouched(model):
        for m in layers:
            m.train()
        n = len(test.labels)
        out["test_batchstats"] = score(model, test.replace(
            batch_size=min(bs, n), order=batchstats_order(n, test.images.device), fill_last=True))
    return out
