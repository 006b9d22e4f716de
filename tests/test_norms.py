"""Every norm against its formula, written out here independently of torch.nn's layers."""

import pytest
import torch

from bench.errors import UserError
from bench.norms import NORMS, make_norm


def normalize(x, dims, eps):
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)  # normalisation uses the biased variance
    return (x - mean) / torch.sqrt(var + eps)


def randomize_affine(layer):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def affine(y, layer):
    if getattr(layer, "weight", None) is None:
        return y
    shape = (1, -1, 1, 1)
    return y * layer.weight.reshape(shape) + layer.bias.reshape(shape)


@pytest.fixture
def x():
    return torch.randn(6, 8, 5, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1


def test_none_is_identity(x):
    assert torch.equal(make_norm("none")(8)(x), x)


def test_bn_train_formula_and_running_stats(x):
    layer = make_norm("bn", eps=1e-3, momentum=0.25)(8)
    randomize_affine(layer)
    layer.train()
    y = layer(x)
    expected = affine(normalize(x, (0, 2, 3), 1e-3), layer)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    # PyTorch convention: running = (1 - momentum) * running + momentum * batch, with the
    # unbiased variance in the running estimate (n = B*H*W = 120 values per channel).
    n = 6 * 5 * 4
    batch_var = x.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)
    torch.testing.assert_close(layer.running_mean, 0.25 * x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(layer.running_var, 0.75 * torch.ones(8) + 0.25 * batch_var)


def test_bn_eval_uses_running_stats(x):
    layer = make_norm("bn")(8)
    randomize_affine(layer)
    with torch.no_grad():
        layer.running_mean.fill_(0.5)
        layer.running_var.fill_(4.0)
    layer.eval()
    expected = affine((x - 0.5) / torch.sqrt(torch.tensor(4.0 + 1e-5)), layer)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_gn_formula(x, groups):
    layer = make_norm("gn", groups=groups)(8)
    randomize_affine(layer)
    xg = x.reshape(6, groups, -1)
    expected = affine(normalize(xg, (2,), 1e-5).reshape_as(x), layer)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_gn_does_not_depend_on_the_batch(x):
    layer = make_norm("gn", groups=4)(8)
    torch.testing.assert_close(layer(x)[:2], layer(x[:2]))


def test_ln_formula(x):
    layer = make_norm("ln")(8)
    randomize_affine(layer)
    expected = affine(normalize(x, (1, 2, 3), 1e-5), layer)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_in_formula_same_in_train_and_eval(x):
    layer = make_norm("in", eps=1e-4)(8)
    randomize_affine(layer)
    expected = affine(normalize(x, (2, 3), 1e-4), layer)
    torch.testing.assert_close(layer.train()(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.eval()(x), expected, rtol=1e-5, atol=1e-5)


def test_affine_off_has_no_parameters():
    for name in ("bn", "gn", "ln", "in"):
        assert not list(make_norm(name, affine=False)(8).parameters()), name


def test_group_count_that_does_not_divide_is_a_user_error():
    with pytest.raises(UserError, match=r"norm.groups=3 does not divide a layer's 8 channels"):
        make_norm("gn", groups=3)(8)


def test_unknown_norm_and_setting_list_the_allowed_ones():
    allowed = ", ".join(sorted(NORMS))
    with pytest.raises(UserError, match=rf"unknown norm 'batchnorm' \(allowed: {allowed}\)"):
        make_norm("batchnorm")
    with pytest.raises(UserError, match=r"unknown setting norm.groups for norm 'bn'.*momentum"):
        make_norm("bn", groups=4)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_every_norm_keeps_the_shape_and_backpropagates(name, x):
    layer = make_norm(name)(8)
    x = x.clone().requires_grad_()
    y = layer(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
