"""The normalization variants against formulas written out here (or PyTorch's own BN), in train and
eval mode, with the gradients where they are the point of the variant."""

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize
from omegaconf import OmegaConf
from torch import nn
from torch.nn.utils import parametrize

from bench.errors import UserError
from bench.models import build_model
from bench.norm_zoo.ws import apply_weight_standardization
from bench.norms import BATCH_DEPENDENT, NORMS, make_norm, norm_options
from runners.validate import CONF_DIR

C = (1, -1, 1, 1)


def normalize(x, mean, var, eps):
    return (x - mean.reshape(C)) / torch.sqrt(var.reshape(C) + eps)


def batch_stats(x):
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)


def affine(y, layer):
    return y * layer.weight.reshape(C) + layer.bias.reshape(C)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def data(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3 + 1


@pytest.fixture
def x():
    return data(6, 8, 5, 4)


# --- running_bn ---------------------------------------------------------------------------------

def test_running_bn_first_step_is_debiased_to_the_batch_statistics(x):
    layer = randomize(make_norm("running_bn", momentum=0.2)(8)).train()
    mean, var = batch_stats(x)
    close(layer(x), affine(normalize(x, mean, var, 1e-5), layer))


def test_running_bn_is_a_weighted_average_of_batches_and_keeps_the_old_part_out_of_the_gradient():
    layer = randomize(make_norm("running_bn", momentum=0.1, eps=1e-3)(4)).train()
    x1, x2 = data(5, 4, 3, 3, seed=1), data(10, 4, 3, 3, seed=2).requires_grad_()
    layer(x1)
    y = layer(x2)
    # Weights of the two batches in the averages of sums, squares and counts: the second enters
    # with m2, the first with m1 * (1 - m2), where m = 1 - (1 - 0.1) / sqrt(B - 1).
    m1, m2 = 1 - 0.9 / 2.0, 1 - 0.9 / 3.0
    w1, w2 = m1 * (1 - m2), m2
    n1, n2 = 5 * 9, 10 * 9
    s = w1 * x1.sum((0, 2, 3)) + w2 * x2.sum((0, 2, 3))
    q = w1 * (x1 * x1).sum((0, 2, 3)) + w2 * (x2 * x2).sum((0, 2, 3))
    mean = s / (w1 * n1 + w2 * n2)
    var = q / (w1 * n1 + w2 * n2) - mean**2
    expected = affine(normalize(x2, mean, var, 1e-3), layer)
    close(y, expected)
    g = torch.randn(y.shape)
    (grad,) = torch.autograd.grad(y, x2, g)
    (ref,) = torch.autograd.grad(expected, x2, g)  # x1 is a constant here: no graph reaches it
    close(grad, ref, 1e-4)
    # eval: the same statistics, nothing updated
    layer.eval()
    close(layer(x2.detach()), expected.detach())
    close(layer(x2.detach()), expected.detach())


def test_running_bn_before_training_is_the_identity_and_takes_a_batch_of_one(x):
    layer = make_norm("running_bn")(8).eval()
    close(layer(x), x, 1e-4)
    one = layer.train()(x[:1])
    assert torch.isfinite(one).all()


# --- brn ----------------------------------------------------------------------------------------

def test_brn_without_room_to_correct_is_batchnorm(x):
    layer = randomize(make_norm("brn", rmax=1, dmax=0, momentum=0.3)(8)).train()
    bn = nn.BatchNorm2d(8, momentum=0.3)
    bn.load_state_dict(layer.state_dict())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(xa), bn(xb)
    close(ya, yb)
    g = torch.randn(ya.shape)
    ya.backward(g)
    yb.backward(g)
    close(xa.grad, xb.grad, 1e-4)
    close(layer.running_mean, bn.running_mean)
    close(layer.running_var, bn.running_var)


def test_brn_formula_with_clipped_r_and_d_and_no_gradient_through_them(x):
    layer = randomize(make_norm("brn", rmax=1.2, dmax=0.1, eps=1e-3)(8)).train()
    with torch.no_grad():
        layer.running_mean.fill_(0.5)
        layer.running_var.copy_(torch.linspace(0.5, 20, 8))
    running_var = layer.running_var.clone()
    xg = x.clone().requires_grad_()
    y = layer(xg)
    mean, var = batch_stats(xg)
    std_b, std = torch.sqrt(var + 1e-3), torch.sqrt(running_var + 1e-3)
    r = (std_b / std).clamp(1 / 1.2, 1.2).detach()
    d = ((mean - 0.5) / std).clamp(-0.1, 0.1).detach()
    assert (r == 1.2).any() and (r == 1 / 1.2).any() and (d.abs() == 0.1).any()  # clipping happens
    expected = affine(normalize(xg, mean, var, 1e-3) * r.reshape(C) + d.reshape(C), layer)
    close(y, expected)
    g = torch.randn(y.shape)
    close(torch.autograd.grad(y, xg, g)[0], torch.autograd.grad(expected, xg, g)[0], 1e-4)
    layer.eval()  # eval: BN with the running statistics, updated once (momentum 0.1)
    n = 6 * 5 * 4
    rm = 0.9 * 0.5 + 0.1 * mean.detach()
    rv = 0.9 * running_var + 0.1 * var.detach() * n / (n - 1)
    close(layer(x), affine(normalize(x, rm, rv, 1e-3), layer).detach())


def test_brn_warmup_starts_as_batchnorm(x):
    layer = make_norm("brn", warmup=100)(8).train()
    with torch.no_grad():
        layer.running_mean.fill_(10.0)  # far off: without warm-up r and d would be clipped
    close(layer(x), normalize(x, *batch_stats(x), 1e-5))


# --- ghost_bn -----------------------------------------------------------------------------------

def test_ghost_bn_with_one_ghost_batch_is_batchnorm(x):
    layer = randomize(make_norm("ghost_bn", virtual_bs=6)(8)).train()
    bn = nn.BatchNorm2d(8)
    bn.load_state_dict(layer.state_dict())
    close(layer(x), bn(x))
    close(layer.running_var, bn.running_var)
    close(layer.eval()(x), bn.eval()(x))


def test_ghost_bn_is_batchnorm_per_even_chunk():
    x = data(10, 4, 3, 3)
    layer = randomize(make_norm("ghost_bn", virtual_bs=4, momentum=0.2)(4)).train()
    rm, rv = torch.zeros(4), torch.ones(4)
    parts = [F.batch_norm(x[a:b], rm, rv, layer.weight, layer.bias, True, 0.2, 1e-5)
             for a, b in ((0, 4), (4, 7), (7, 10))]  # 10 in chunks of at most 4: 4, 3, 3
    close(layer(x), torch.cat(parts))
    close(layer.running_mean, rm)
    close(layer.running_var, rv)
    assert int(layer.num_batches_tracked) == 3


def test_ghost_bn_settings_out_of_range():
    with pytest.raises(UserError,
                       match=r"norm.virtual_bs=0 is not a positive integer \(allowed: an integer >= 1\)"):
        make_norm("ghost_bn", virtual_bs=0)(8)


# --- frn ----------------------------------------------------------------------------------------

def test_frn_formula_and_tlu_same_in_train_and_eval(x):
    layer = randomize(make_norm("frn", eps=1e-3)(8))
    nu2 = (x * x).mean(dim=(2, 3), keepdim=True)
    y = x / torch.sqrt(nu2 + 1e-3) * layer.weight + layer.bias
    expected = torch.where(y > layer.tau, y, layer.tau.expand_as(y)).detach()
    assert (expected == layer.tau).any() and (expected > layer.tau).any()  # both TLU branches
    close(layer.train()(x), expected)
    close(layer.eval()(x), expected)
    close(layer(x)[:2], layer(x[:2]))  # no batch dependence


def test_frn_learnable_eps():
    layer = make_norm("frn", eps=1e-6, learnable_eps=True)(3)
    x = data(4, 3, 1, 1)  # 1x1 maps: where the paper needs a learned eps
    eps = 1e-6 + layer.eps_l.abs()
    close(layer(x), torch.clamp_min(x / torch.sqrt(x * x + eps), 0).detach())
    layer(x).sum().backward()
    assert layer.eps_l.grad is not None


# --- ws_gn --------------------------------------------------------------------------------------

def test_weight_standardization_standardizes_conv2d_only():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 3), nn.Linear(5, 5))
    before_t, before_l = m[1].weight.clone(), m[2].weight.clone()
    raw = m[0].weight.detach().clone()
    assert apply_weight_standardization(m) == 1
    assert apply_weight_standardization(m) == 0  # a second call changes nothing
    w = m[0].weight.reshape(8, -1)
    close(w.mean(1), torch.zeros(8))
    close(w.var(1, unbiased=False), torch.ones(8), 1e-4)
    assert torch.equal(m[1].weight, before_t) and torch.equal(m[2].weight, before_l)
    assert not parametrize.is_parametrized(m[1]) and not parametrize.is_parametrized(m[2])
    # the conv computes with (W - mean) / std, std the population std over (in, kH, kW)
    x = data(2, 3, 6, 6)
    flat = raw.reshape(8, -1)
    ws = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, unbiased=False, keepdim=True)).reshape(raw.shape)
    close(m[0](x), F.conv2d(x, ws, m[0].bias), 1e-4)


@pytest.mark.parametrize("model", ["cnn4", "dcgan_vgg"])
def test_ws_gn_builds_group_norm_and_standardized_convs(model):
    kw = {"nf": 8, "ngf": 8} if model == "dcgan_vgg" else {}
    norm = make_norm("ws_gn", groups=4)
    assert norm.standardize_weights and not hasattr(make_norm("gn"), "standardize_weights")
    m = build_model(model, in_channels=3, num_classes=10, image_size=32, norm_layer=norm, **kw)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    normed = [c for c in convs if parametrize.is_parametrized(c, "weight")]
    # cnn4: every conv has a norm after its ReLU; the discriminator's first conv has none.
    assert len(normed) == (len(convs) if model == "cnn4" else len(convs) - 1) > 0
    convs = normed
    assert not any(parametrize.is_parametrized(c) for c in m.modules() if isinstance(c, nn.ConvTranspose2d))
    assert any(isinstance(c, nn.GroupNorm) for c in m.modules())
    for c in convs:
        w = c.weight.reshape(c.out_channels, -1)
        close(w.mean(1), torch.zeros(c.out_channels))
        close(w.var(1, unbiased=False), torch.ones(c.out_channels), 1e-4)


def test_ws_gn_leaves_alone_the_convs_no_norm_follows():
    m = build_model("convnet", in_channels=1, num_classes=10, image_size=32,
                    norm_layer=make_norm("ws_gn", groups=4))
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert [parametrize.is_parametrized(c, "weight") for c in convs] == [True] * 4 + [False]
    r = build_model("resnet18", in_channels=3, num_classes=10, image_size=32,
                    norm_layer=make_norm("ws_gn", groups=8))
    # all 20 ResNet-18 convs (stem, 16 in blocks, 3 downsample) are followed by their norm
    assert sum(parametrize.is_parametrized(c, "weight") for c in r.modules()
               if isinstance(c, nn.Conv2d)) == 20


# --- bcn ----------------------------------------------------------------------------------------

def group_normalize(y, groups, eps):
    yg = y.reshape(y.shape[0], groups, -1)
    mean, var = yg.mean(2, keepdim=True), yg.var(2, unbiased=False, keepdim=True)
    return ((yg - mean) / torch.sqrt(var + eps)).reshape(y.shape)


def test_bcn_is_batchnorm_then_groupnorm(x):
    layer = randomize(make_norm("bcn", groups=2)(8)).train()
    h = affine(normalize(x, *batch_stats(x), 1e-5), layer.bn)
    close(layer(x), affine(group_normalize(h, 2, 1e-5), layer.gn).detach(), 1e-4)


def test_bcn_estimate_normalizes_with_running_estimates_without_their_gradient(x):
    layer = randomize(make_norm("bcn", groups=4, momentum=0.25, estimate=True)(8)).train()
    xg = x.clone().requires_grad_()
    y = layer(xg)
    mean, var = batch_stats(x)
    n = 6 * 5 * 4
    rm, rv = 0.25 * mean, 0.75 + 0.25 * var * n / (n - 1)  # updated first, from 0 and 1
    h = affine(normalize(xg, rm, rv, 1e-5), layer.bn)
    expected = affine(group_normalize(h, 4, 1e-5), layer.gn)
    close(y, expected, 1e-4)
    g = torch.randn(y.shape)
    close(torch.autograd.grad(y, xg, g)[0], torch.autograd.grad(expected, xg, g)[0], 1e-4)
    close(layer.eval()(x), affine(group_normalize(h, 4, 1e-5), layer.gn).detach(), 1e-4)


def test_bcn_group_count_that_does_not_divide():
    with pytest.raises(UserError, match=r"norm.groups=3 does not divide a layer's 8 channels"):
        make_norm("bcn", groups=3)(8)


# --- the Replacing BatchNorm post's ablation of BN's parts ---------------------------------------

def test_bn_affine_is_scale_and_shift_only(x):
    layer = randomize(make_norm("bn_affine")(8))
    close(layer.train()(x), affine(x, layer).detach())
    close(layer.eval()(x), affine(x, layer).detach())
    assert not list(layer.buffers())


def test_bn_norm_normalizes_without_affine(x):
    layer = make_norm("bn_norm", eps=1e-3)(8).train()
    assert not list(layer.parameters())
    close(layer(x), normalize(x, *batch_stats(x), 1e-3))
    n = 6 * 5 * 4
    mean, var = batch_stats(x)
    close(layer.eval()(x), normalize(x, 0.1 * mean, 0.9 + 0.1 * var * n / (n - 1), 1e-3))


def test_bn_detach_has_bn_forward_but_no_gradient_through_the_statistics(x):
    layer = randomize(make_norm("bn_detach")(8)).train()
    bn = nn.BatchNorm2d(8)
    bn.load_state_dict(layer.state_dict())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(xa), bn(xb)
    close(ya, yb)
    close(layer.running_var, bn.running_var)
    g = torch.randn(ya.shape)
    ga, gb = torch.autograd.grad(ya, xa, g)[0], torch.autograd.grad(yb, xb, g)[0]
    mean, var = batch_stats(xa)
    manual = affine(normalize(xa, mean.detach(), var.detach(), 1e-5), layer)
    close(ga, torch.autograd.grad(manual, xa, g)[0], 1e-4)
    assert (ga - gb).abs().max() > 1e-2  # BN's gradient has the terms through mean and var
    close(layer.eval()(x), bn.eval()(x))


# --- every name ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(NORMS))
def test_batch_dependent_is_exactly_the_norms_that_mix_samples_in_training(name, x):
    layer = randomize(make_norm(name)(8), seed=3).train()
    other = x.clone()
    other[2:] = data(4, 8, 5, 4, seed=9)
    a, b = copy.deepcopy(layer)(x)[:2], copy.deepcopy(layer)(other)[:2]
    assert (not torch.allclose(a, b)) == (name in BATCH_DEPENDENT)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_eval_is_per_sample_and_changes_nothing(name, x):
    layer = randomize(make_norm(name)(8), seed=3).train()
    layer(x)
    layer.eval()
    state = copy.deepcopy(layer.state_dict())
    close(layer(x)[:2], layer(x[:2]))
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("name", sorted(NORMS))
def test_config_file_states_the_defaults(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "norm" / f"{name}.yaml"))
    params = inspect.signature(NORMS[name]).parameters
    assert cfg.pop("name") == name
    assert cfg == {k: params[k].default for k in norm_options(name)}


def test_unknown_setting_of_a_class_entry_lists_the_allowed_ones():
    with pytest.raises(UserError, match=r"unknown setting norm.groups for norm 'brn' "
                                        r"\(allowed: dmax, eps, momentum, rmax, warmup\)"):
        make_norm("brn", groups=4)
    with pytest.raises(UserError, match=r"norm.rmax=0.5 is not allowed \(allowed: >= 1\)"):
        make_norm("brn", rmax=0.5)(8)
