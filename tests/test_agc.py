"""Adaptive gradient clipping (`bench.agc`) against eq. (3) of Brock et al. 2021 (NFNets,
Section 4.1) written out per unit in numpy, its step pre-hook, the final layer left unclipped,
its config (a real run, bad values, the config hash) and the report's settings table."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_user_error, compose_config, query
from torch import nn

from bench.agc import agc_, clip_before_step, clipped_params
from bench.config_hash import config_hash


def eq3(w, g, clipping, eps):
    """Eq. (3), one unit at a time: a unit is a slice along dim 0 (a 0-d or 1-d tensor is one)."""
    w, g = np.asarray(w, dtype=np.float64), np.asarray(g, dtype=np.float64)
    out = g.copy()
    units = [...] if w.ndim <= 1 else range(w.shape[0])
    for i in units:
        w_norm = max(np.sqrt(np.sum(w[i] ** 2)), eps)
        g_norm = np.sqrt(np.sum(g[i] ** 2))
        if g_norm / w_norm > clipping:
            out[i] = clipping * w_norm / g_norm * g[i]
    return out


def with_grad(w, g) -> nn.Parameter:
    p = nn.Parameter(torch.tensor(w, dtype=torch.float64))
    p.grad = torch.tensor(g, dtype=torch.float64)
    return p


def test_a_linear_weight_is_clipped_row_by_row_as_worked_out_by_hand():
    # lambda 0.2. Row 0: ||W|| 5, ||G|| 0.5, ratio 0.1: kept. Row 1: ||W|| 1, ||G|| 2, ratio 2:
    # scaled to 0.2 * 1 / 2 * G. Row 2, a zero-init unit: max(0, 1e-3) = 1e-3, ||G|| 0.01, ratio
    # 10: scaled to 0.2 * 1e-3 / 0.01 * G = 0.02 G (without the floor it could never move).
    p = with_grad([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]], [[0.3, 0.4], [0.0, 2.0], [0.01, 0.0]])
    agc_([p], clipping=0.2, eps=1e-3)
    assert torch.allclose(p.grad, torch.tensor([[0.3, 0.4], [0.0, 0.2], [2e-4, 0.0]],
                                               dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5,), ()], ids=["conv", "bias", "scalar"])
def test_conv_weights_biases_and_scalars_follow_eq3(shape):
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape)
    # gradients from 0.01x to 10x their weight's size: units on both sides of lambda = 0.1
    scale = np.logspace(-2, 1, shape[0]).reshape(-1, *[1] * (len(shape) - 1)) if shape else 3.0
    g = rng.normal(size=shape) * scale
    if len(shape) == 4:
        w[1] = 0.0  # the eps floor: a zero output channel
    p = with_grad(w, g)
    agc_([p], clipping=0.1, eps=1e-3)
    expected = eq3(w, g, 0.1, 1e-3)
    np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-12, atol=0)
    changed = ~np.isclose(expected, g, rtol=1e-12, atol=0)
    if len(shape) == 4:  # both branches taken: some channels clipped, some kept
        assert 0 < changed.reshape(shape[0], -1).all(axis=1).sum() < shape[0]
    else:
        assert changed.all()  # one unit, 3x (scalar) or on average 0.01..10x: above 0.1


def test_a_parameter_without_a_gradient_is_left_alone():
    p = nn.Parameter(torch.ones(3))
    agc_([p], clipping=0.01)
    assert p.grad is None


def test_each_step_moves_the_weights_by_exactly_the_clipped_gradient():
    layer = nn.Linear(3, 2).double()
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    g_w, g_b = torch.full((2, 3), 5.0, dtype=torch.float64), torch.tensor([0.0, 1e-4], dtype=torch.float64)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    plain_state = opt.state_dict()
    clip_before_step(opt, layer.parameters(), clipping=0.05)
    layer.weight.grad, layer.bias.grad = g_w.clone(), g_b.clone()
    opt.step()
    assert torch.allclose(layer.weight, w0 - torch.tensor(eq3(w0, g_w, 0.05, 1e-3)), rtol=1e-12, atol=0)
    assert torch.allclose(layer.bias, b0 - torch.tensor(eq3(b0, g_b, 0.05, 1e-3)), rtol=1e-12, atol=0)
    assert not torch.allclose(layer.weight, w0 - g_w)  # it did clip
    assert opt.state_dict() == plain_state  # the hook leaves the optimizer's state as it was


def test_the_hook_refuses_clipping_0_which_would_zero_every_gradient():
    from bench.errors import UserError

    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0)
    with pytest.raises(UserError, match=r"agc.clipping=0 is not a positive number \(allowed: > 0\)"):
        clip_before_step(opt, [], clipping=0)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()


def test_skip_last_leaves_the_final_layers_gradient_as_it_was():
    from runners.config import optimizer_from_config

    net = _net()
    assert [id(p) for p in clipped_params(net)] == [id(p) for p in list(net.parameters())[:4]]
    assert len(clipped_params(net, skip_last=False)) == 6
    # lr 1 and plain SGD: each weight moves by minus its (clipped) gradient
    cfg = compose_config("optim=sgd", "optim.momentum=0", "lr=1", "agc.clipping=0.01")
    opt = optimizer_from_config(cfg, net)
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.randn(16, 4, dtype=torch.float64)).square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    opt.step()
    moved = [b - p.detach() for b, p in zip(before, net.parameters(), strict=True)]
    for i in (4, 5):  # the last Linear's weight and bias: the plain gradient (b - (b - g) is g
        # up to float64 rounding)
        assert torch.allclose(moved[i], grads[i], rtol=1e-12, atol=1e-12)
    for i in range(4):  # the first Linear and BatchNorm's gain and bias: eq. (3)
        assert torch.allclose(moved[i], torch.tensor(eq3(before[i], grads[i], 0.01, 1e-3)),
                              rtol=1e-9, atol=1e-15)
    assert not torch.allclose(moved[0], grads[0])


def _last_called_with_parameters(model: nn.Module, x: torch.Tensor) -> nn.Module:
    order = []
    for m in model.modules():
        if next(m.parameters(recurse=False), None) is not None:
            m.register_forward_hook(lambda mod, args, out: order.append(mod))
    model.eval()(x)
    return order[-1]


@pytest.mark.parametrize("name", ["convnet", "cnn4", "resnet18", "keras_cnn", "conv_ae", "dcgan_vgg"])
def test_skip_last_leaves_out_the_layer_each_model_calls_last(name):
    from bench.models import build_model
    from bench.norms import make_norm

    bn = make_norm("bn")
    if name == "dcgan_vgg":
        gan = build_model(name, in_channels=1, num_classes=0, image_size=16, norm_layer=bn,
                          gen_norm_layer=bn)
        nets = [(gan.discriminator, torch.randn(2, 1, 16, 16)), (gan.generator, torch.randn(2, 100))]
    else:
        nets = [(build_model(name, in_channels=1, num_classes=10, image_size=16, norm_layer=bn),
                 torch.randn(2, 1, 16, 16))]
    for net, x in nets:
        last = {id(p) for p in _last_called_with_parameters(net, x).parameters(recurse=False)}
        assert {id(p) for p in net.parameters()} - {id(p) for p in clipped_params(net)} == last


def test_agc_off_adds_no_hook():
    from runners.config import optimizer_from_config

    opt = optimizer_from_config(compose_config(), _net())
    assert not opt._optimizer_step_pre_hooks


def test_a_run_with_agc_completes_and_records_it(bench, tmp_path, monkeypatch):
    from bench import agc

    calls = []
    monkeypatch.setattr(agc, "agc_", lambda *a: calls.append(a[1:]) or agc_(*a))
    bench("agc.clipping=0.01", "epochs=1", "dataset.train_subset=64", "dataset.test_subset=100",
          "model=convnet", "bs=32", "threads=1", "bn_eval.modes=false", "checkpoint.every=0", check_rc=0)
    (status, text, digest), = query(tmp_path / "bench.db", "select status, config, config_hash from runs")
    config = json.loads(text)
    assert status == "completed"
    assert calls == [(0.01, 1e-3)] * 2  # 64 images, bs 32: two optimizer steps, each clipped first
    assert config["agc"] == {"clipping": 0.01, "eps": 1e-3, "skip_last": True}
    assert digest == config_hash(config) != config_hash({**config, "agc": {**config["agc"], "clipping": 0}})


@pytest.mark.parametrize(("arg", "message"), [
    ("agc.clipping=-0.01", "agc.clipping=-0.01 is not allowed (allowed: 0 (off) or a number > 0)"),
    ("agc.clipping=inf", "agc.clipping=inf is not allowed (allowed: 0 (off) or a number > 0)"),
    ("agc.clipping=strong", "agc.clipping='strong' is not a number (allowed: 0 (off) or a number > 0)"),
    ("agc.eps=0", "agc.eps=0 is not a positive number (allowed: > 0)"),
    ("agc.skip_last=1", "agc.skip_last=1 is not allowed (allowed: true, false)"),
])
def test_bad_agc_settings_are_one_line_and_write_nothing(bench, tmp_path, arg, message):
    assert_user_error(bench(arg, "epochs=1"), message)
    assert not (tmp_path / "bench.db").exists()


def test_agc_off_keeps_the_hash_a_config_had_before_agc_existed():
    old = {"task": {"name": "classify"}, "bs": 128, "lr": 0.001, "seed": 0, "epochs": 2}
    off = {**old, "agc": {"clipping": 0, "eps": 1e-3, "skip_last": True}}
    on = {**old, "agc": {"clipping": 0.01, "eps": 1e-3, "skip_last": True}}
    assert config_hash(off) == config_hash(old)
    assert config_hash({**off, "agc": {"clipping": 0.0, "eps": 0.5, "skip_last": False}}) == config_hash(old)
    assert config_hash(on) != config_hash(old)
    assert config_hash(on) != config_hash({**on, "agc": {**on["agc"], "skip_last": False}})


def test_the_report_shows_the_clipping_factor_only_where_a_run_clipped():
    import pandas as pd

    from analysis.cells import settings_table

    base = {"task": "classify", "dataset": "digits", "model": "convnet", "norm": "bn", "bs": 32,
            "lr": 1e-3, "epochs": 1}
    off = {"clipping": 0, "eps": 1e-3, "skip_last": True}
    configs = [{"seed": 0}, {"seed": 1, "agc": off}]
    table = settings_table(pd.DataFrame([{**base, "config": c} for c in configs]))
    assert not [c for c in table.columns if c.startswith("agc.")]
    configs.append({"seed": 0, "agc": {**off, "clipping": 0.01}})
    table = settings_table(pd.DataFrame([{**base, "config": c} for c in configs]))
    assert table["agc.clipping"].tolist() == [0, 0, 0.01]  # before agc existed: off
    assert "agc.eps" not in table.columns and "agc.skip_last" not in table.columns
