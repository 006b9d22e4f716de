"""Test metrics three ways, each against a reference built from PyTorch's own BatchNorm."""

import copy

import torch
from torch import nn

from bench.bn_eval import score_bn_modes
from bench.data.loader import DeviceBatches


def setup(norm=nn.BatchNorm2d, modes=True, samples=64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm(4), nn.Flatten())
    # Stale EMA statistics, as after a few steps with Keras' momentum (the fast.ai thread).
    if isinstance(model[1], nn.BatchNorm2d):
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(0.25)
    g = torch.Generator().manual_seed(1)
    x_train = torch.randint(0, 256, (64, 1, 6, 6), dtype=torch.uint8, generator=g)
    x_test = torch.randint(0, 256, (20, 1, 6, 6), dtype=torch.uint8, generator=g)
    kw = {"mean": [0.5], "std": [0.5]}
    train = DeviceBatches(x_train, torch.zeros(64, dtype=torch.long), 16, shuffle=True,
                          drop_last=True, generator=torch.Generator().manual_seed(2), **kw)
    # Labels 0..19 name the test images, so a test can see which images a split scored.
    test = DeviceBatches(x_test, torch.arange(20), 7, **kw)
    # The run's settings: training batch size 8, seed 0, PreciseBN over `samples` random batches.
    kw = {"bs": 8, "seed": 0, "precise_composition": "random", "modes": modes,
          "precise_samples": samples}
    return kw, model, train, test


def outputs(model, batches):
    """The evaluation contract: a batch (x, y) scores model(x)[:len(y)], the images y names."""
    return {"out": torch.cat([model(x)[:len(y)] for x, y in batches]),
            "scored": torch.cat([y for _, y in batches])}


def fixed_order(n):
    # Written out here rather than imported: the batch-statistics order is documented as
    # torch.randperm(n) from a CPU generator seeded with 0, whatever the run's seed.
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_three_splits_match_pytorch_references():
    kw, model, train, test = setup()
    before = [b.clone() for b in model[1].buffers()]
    order = train.generator.get_state()
    got = score_bn_modes(model, outputs, train, test, **kw)
    x_test = torch.cat([x for x, _ in test])

    ema = copy.deepcopy(model).eval()
    torch.testing.assert_close(got["test"]["out"], ema(x_test))

    # PreciseBN over all 64 training images: the population mean and variance of the BN input.
    h = model[0](torch.cat([x for x, _ in train.replace(shuffle=False)]))
    precise = copy.deepcopy(model).eval()
    precise[1].running_mean.copy_(h.mean(dim=(0, 2, 3)))
    precise[1].running_var.copy_(h.var(dim=(0, 2, 3), unbiased=False))
    torch.testing.assert_close(got["test_precise"]["out"], precise(x_test), rtol=1e-4, atol=1e-4)

    # Batch statistics: the 20 test images in the fixed shuffled order, in batches of the
    # training batch size (8): 8, 8, then the last 4 filled up with the first 4 of the order,
    # whose outputs are not scored again.
    per_batch = copy.deepcopy(model).train()
    p = fixed_order(20)
    ref = torch.cat([per_batch(x_test[p[:8]]), per_batch(x_test[p[8:16]]),
                     per_batch(x_test[torch.cat((p[16:], p[:4]))])[:4]])
    torch.testing.assert_close(got["test_batchstats"]["out"], ref)
    # Every split scored each of the 20 test images exactly once.
    for split in ("test", "test_precise", "test_batchstats"):
        assert sorted(got[split]["scored"].tolist()) == list(range(20)), split

    # Nothing the training depends on has moved: EMA buffers, data order, mode.
    for b, old in zip(model[1].buffers(), before, strict=True):
        assert torch.equal(b, old)
    assert torch.equal(train.generator.get_state(), order)
    assert not model.training


def test_stale_ema_is_what_precise_and_batch_statistics_repair():
    kw, model, train, test = setup()
    got = score_bn_modes(model, outputs, train, test, **kw)
    # Put the batch-statistics outputs back in test-set order before comparing image by image.
    batchstats = got["test_batchstats"]["out"][torch.argsort(got["test_batchstats"]["scored"])]
    gap_ema = (got["test"]["out"] - batchstats).abs().mean()
    gap_precise = (got["test_precise"]["out"] - batchstats).abs().mean()
    assert gap_precise < gap_ema / 3


def test_only_ema_split_without_statistics_layers_or_when_switched_off():
    kw, model, train, test = setup(norm=lambda c: nn.GroupNorm(2, c))
    assert set(score_bn_modes(model, outputs, train, test, **kw)) == {"test"}
    kw, model, train, test = setup(modes=False)
    assert set(score_bn_modes(model, outputs, train, test, **kw)) == {"test"}


@torch.no_grad()
def test_batchstats_with_bs_above_the_test_set_is_one_batch_of_all_images():
    kw, model, train, test = setup()
    kw["bs"] = 64  # more than the 20 test images
    got = score_bn_modes(model, outputs, train, test, **kw)
    p = fixed_order(20)
    torch.testing.assert_close(got["test_batchstats"]["out"],
                               copy.deepcopy(model).train()(torch.cat([x for x, _ in test])[p]))
