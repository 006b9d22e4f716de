"""PreciseBN as fvcore tests it: the result equals statistics computed directly over the same data,
does not depend on how the samples are split into batches, and relates to swa_utils' as it should."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

from bench.errors import UserError
from bench.norm_zoo.running_bn import RunningBatchNorm2d
from bench.norms import BATCH_DEPENDENT, NORMS, make_norm
from bench.precise_bn import stat_layers, update_bn_stats


def data(n, seed=0, c=3, size=6):
    g = torch.Generator().manual_seed(seed)
    # a different offset per sample, so batch means differ between batches
    return torch.randn(n, c, size, size, generator=g) * 2 + torch.randn(n, 1, 1, 1, generator=g) * 3


def running_stats(layer):
    """(mean, variance) that `layer` normalizes with in eval mode."""
    if isinstance(layer, RunningBatchNorm2d):
        mean = layer.sums / layer.count
        return mean, layer.sqrs / layer.count - mean**2
    return layer.running_mean, layer.running_var


def direct_stats(model, batches):
    """Mean and population variance of each stat layer's inputs, captured with forward hooks in a
    training-mode pass over `batches` (on a copy: the model itself is not touched)."""
    model = copy.deepcopy(model).train()
    seen = {m: [] for m in stat_layers(model)}
    hooks = [m.register_forward_pre_hook(lambda m, a: seen[m].append(a[0].transpose(0, 1).reshape(
        a[0].shape[1], -1).double())) for m in seen]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return [(torch.cat(v, 1).mean(1), torch.cat(v, 1).var(1, unbiased=False)) for v in seen.values()]


def randomize_state(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):  # a "trained" state: stats that are not 0 and 1
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            for p in m.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1 if p.dim() == 1 else 0))
    return model


def chain():
    """Every kind of stat layer in a chain. momentum 0: their running statistics stay put during the
    reference pass, as update_bn_stats holds them during its own (brn's and bcn-estimate's training
    outputs read them). running_bn drifts the same way in both passes; brn comes last."""
    torch.manual_seed(0)
    norm = {k: make_norm(k, momentum=0.0, **kw) for k, kw in
            [("bn", {}), ("ghost_bn", {"virtual_bs": 4}), ("bcn", {"groups": 2}),
             ("bn_detach", {}), ("bn_norm", {}), ("running_bn", {}), ("brn", {"rmax": 1.5, "dmax": 0.5})]}
    layers = [nn.Conv2d(3, 8, 3), norm["bn"](8), nn.ReLU(), nn.Conv2d(8, 8, 3), norm["ghost_bn"](8),
              norm["bcn"](8), make_norm("bcn", momentum=0.0, estimate=True, groups=4)(8),
              norm["bn_detach"](8), norm["bn_norm"](8), norm["running_bn"](8), norm["brn"](8)]
    return randomize_state(nn.Sequential(*layers))


class Parallel(nn.Module):
    """Every stat layer applied to the same conv output: their inputs do not depend on the split."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.norms = nn.ModuleList(make_norm(name, **kw)(8) for name, kw in [
            ("bn", {}), ("ghost_bn", {"virtual_bs": 3}), ("brn", {}), ("bn_detach", {}), ("bn_norm", {}),
            ("bcn", {"groups": 2}), ("bcn", {"estimate": True}), ("running_bn", {})])

    def forward(self, x):
        h = self.conv(x)
        return sum(norm(h) for norm in self.norms)


def test_result_equals_statistics_computed_directly():
    model = chain()
    model[4].eval()  # a module in eval mode stays in eval mode
    batches = list(data(60).split(12))
    expected = direct_stats(model, batches)
    before = {k: v.clone() for k, v in model.state_dict().items()
              if k.endswith(("num_batches_tracked", "seen"))}
    assert update_bn_stats(model, batches, 60) == 60
    layers = stat_layers(model)
    assert len(layers) == len(expected) == 8
    for layer, (mean, var) in zip(layers, expected, strict=True):
        got_mean, got_var = running_stats(layer)
        torch.testing.assert_close(got_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_var.double(), var, rtol=1e-5, atol=1e-5)
    assert model.training and not model[4].training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


def test_invariant_to_resplitting_the_same_samples():
    x = data(100)
    with torch.no_grad():
        h = Parallel().conv(x).transpose(0, 1).reshape(8, -1).double()
    mean, var = h.mean(1), h.var(1, unbiased=False)
    for bs in (10, 25, 100):
        model = Parallel().eval()
        assert update_bn_stats(model, [(b, None) for b in x.split(bs)], 100) == 100
        assert not model.training
        assert all(m.momentum == 0.1 for m in stat_layers(model))  # restored
        for layer in stat_layers(model):
            got_mean, got_var = running_stats(layer)
            torch.testing.assert_close(got_mean.double(), mean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_var.double(), var, rtol=1e-5, atol=1e-5)


def test_takes_whole_batches_until_enough_samples_and_stops_at_the_end_of_the_data():
    model = Parallel()
    assert update_bn_stats(model, data(50).split(10), 35) == 40
    assert update_bn_stats(model, data(50).split(10), 10_000) == 50
    assert update_bn_stats(nn.Conv2d(3, 3, 1), data(50).split(10), 10) == 0  # nothing to update


def test_against_swa_utils_update_bn_on_equal_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    batches = list(data(100, seed=3).split(10))
    swa = copy.deepcopy(model)
    update_bn(batches, swa)
    update_bn_stats(model, batches, 100)
    bn, swa_bn = model[1], swa[1]
    # equal batch sizes: the mean of batch means is the mean over all samples
    torch.testing.assert_close(bn.running_mean, swa_bn.running_mean, rtol=1e-5, atol=1e-5)
    # swa averages unbiased batch variances (n = 10 * 4 * 4 values per channel); the population
    # variance also holds the spread of the batch means between batches
    with torch.no_grad():
        means = torch.stack([model[0](b).mean(dim=(0, 2, 3)) for b in batches])
    n = 10 * 4 * 4
    expected = swa_bn.running_var * (n - 1) / n + means.var(0, unbiased=False)
    torch.testing.assert_close(bn.running_var, expected, rtol=1e-5, atol=1e-5)
    assert ((bn.running_var - swa_bn.running_var).abs() / swa_bn.running_var).max() > 0.02  # not tiny


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_sample_count_must_be_a_positive_integer(bad):
    with pytest.raises(UserError, match=rf"PreciseBN num_samples={bad!r} is not allowed"):
        update_bn_stats(Parallel(), data(10).split(5), bad)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_the_batch_dependent_norms_are_the_ones_with_statistics_to_recompute(name):
    assert bool(stat_layers(make_norm(name)(8))) == (name in BATCH_DEPENDENT)
