"""Test metrics three ways, each against a reference built from PyTorch's own BatchNorm."""

import copy

import torch
from omegaconf import OmegaConf
from torch import nn

from bench.bn_eval import evaluate_three_ways
from bench.data.loader import DeviceBatches


def setup(norm=nn.BatchNorm2d, modes=True, samples=64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm(4), nn.Flatten())
    # Stale EMA statistics, as after a few steps with Keras' momentum (seed 002).
    if isinstance(model[1], nn.BatchNorm2d):
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(0.25)
    g = torch.Generator().manual_seed(1)
    x_train = torch.randint(0, 256, (64, 1, 6, 6), dtype=torch.uint8, generator=g)
    x_test = torch.randint(0, 256, (20, 1, 6, 6), dtype=torch.uint8, generator=g)
    kw = {"mean": [0.5], "std": [0.5]}
    train = DeviceBatches(x_train, torch.zeros(64, dtype=torch.long), 16, shuffle=True,
                          drop_last=True, generator=torch.Generator().manual_seed(2), **kw)
    test = DeviceBatches(x_test, torch.zeros(20, dtype=torch.long), 7, **kw)
    cfg = OmegaConf.create({"bs": 8, "seed": 0, "batch_composition": {"precise": "random"},
                            "bn_eval": {"modes": modes, "precise_samples": samples}})
    return cfg, model, train, test


def outputs(model, batches):
    return {"out": torch.cat([model(x) for x, _ in batches])}


@torch.no_grad()
def test_three_splits_match_pytorch_references():
    cfg, model, train, test = setup()
    before = [b.clone() for b in model[1].buffers()]
    order = train.generator.get_state()
    got = evaluate_three_ways(cfg, model, outputs, train, test)
    x_test = torch.cat([x for x, _ in test])

    ema = copy.deepcopy(model).eval()
    torch.testing.assert_close(got["test"]["out"], ema(x_test))

    # PreciseBN over all 64 training images: the population mean and variance of the BN input.
    h = model[0](torch.cat([x for x, _ in train.replace(shuffle=False)]))
    precise = copy.deepcopy(model).eval()
    precise[1].running_mean.copy_(h.mean(dim=(0, 2, 3)))
    precise[1].running_var.copy_(h.var(dim=(0, 2, 3), unbiased=False))
    torch.testing.assert_close(got["test_precise"]["out"], precise(x_test), rtol=1e-4, atol=1e-4)

    # Batch statistics: test batches of the training batch size (8), last short batch dropped.
    per_batch = copy.deepcopy(model).train()
    ref = torch.cat([per_batch(x_test[i:i + 8]) for i in (0, 8)])
    torch.testing.assert_close(got["test_batchstats"]["out"], ref)

    # Nothing the training depends on has moved: EMA buffers, data order, mode.
    for b, old in zip(model[1].buffers(), before, strict=True):
        assert torch.equal(b, old)
    assert torch.equal(train.generator.get_state(), order)
    assert not model.training


def test_stale_ema_is_what_precise_and_batch_statistics_repair():
    cfg, model, train, test = setup()
    got = evaluate_three_ways(cfg, model, outputs, train, test)
    gap_ema = (got["test"]["out"][:16] - got["test_batchstats"]["out"]).abs().mean()
    gap_precise = (got["test_precise"]["out"][:16] - got["test_batchstats"]["out"]).abs().mean()
    assert gap_precise < gap_ema / 3


def test_only_ema_split_without_statistics_layers_or_when_switched_off():
    cfg, model, train, test = setup(norm=lambda c: nn.GroupNorm(2, c))
    assert set(evaluate_three_ways(cfg, model, outputs, train, test)) == {"test"}
    cfg, model, train, test = setup(modes=False)
    assert set(evaluate_three_ways(cfg, model, outputs, train, test)) == {"test"}
