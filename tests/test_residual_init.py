"""resnet18's `residual` setting: SkipInit (De & Smith 2020) and Fixup (Zhang, Dauphin & Ma 2019)
checked against the papers' rules written out here, and `plain` against the builder as it was."""

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_user_error, query
from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.resnet import BasicBlock

from bench.config_hash import config_hash
from bench.models import build_model
from bench.models.resnet import _Block, _NormSlot
from bench.norms import make_norm


def build(residual, norm="none", c=3, seed=0):
    torch.manual_seed(seed)
    return build_model("resnet18", in_channels=c, num_classes=10, image_size=32,
                       norm_layer=make_norm(norm), residual=residual)


def blocks(model):
    return [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]


def old_builder(in_channels, norm_layer):
    """bench/models/resnet.py's resnet18 before `residual` existed, step for step."""
    model = tv_resnet18(weights=None, num_classes=10, norm_layer=_NormSlot)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, _NormSlot):
                setattr(parent, name, norm_layer(child.num_channels))
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@pytest.mark.parametrize(("c", "norm"), [(3, "bn"), (1, "gn"), (3, "none")])
def test_plain_is_bit_identical_to_the_builder_before_the_setting(c, norm):
    torch.manual_seed(7)
    old, after_old = old_builder(c, make_norm(norm)), torch.rand(1)
    new, after_new = build("plain", norm, c, seed=7), torch.rand(1)
    assert [(k, type(m)) for k, m in old.named_modules()] == [(k, type(m)) for k, m in new.named_modules()]
    a, b = old.state_dict(), new.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(after_old, after_new)  # and the RNG is left where it was


@pytest.mark.parametrize("stride", [1, 2])
def test_the_blocks_forward_is_torchvisions_basicblock_for_plain(stride):
    torch.manual_seed(0)
    down = None if stride == 1 else nn.Sequential(nn.Conv2d(16, 32, 1, stride, bias=False),
                                                  nn.BatchNorm2d(32))
    block = BasicBlock(16, 16 if stride == 1 else 32, stride, down).eval()
    for m in block.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data.normal_()
            m.running_var.data.uniform_(0.5, 2)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(_Block(block, "plain")(x), block(x))


def test_skipinit_starts_as_the_network_without_residual_branches():
    model = build("skipinit")
    assert len(blocks(model)) == 8
    assert all(b.alpha.shape == (1,) and b.alpha.item() == 0 for b in blocks(model))
    x = torch.randn(4, 3, 32, 32)
    # De & Smith 2020, Section 4: x + alpha f(x) with alpha = 0 is x, so at init the network is
    # the stem, then each block's shortcut (identity or 1x1 projection) and the block's relu.
    h = model.maxpool(F.relu(model.conv1(x)))  # norm=none: no norm in the stem
    for b in blocks(model):
        h = F.relu(h if b.downsample is None else b.downsample(h))
    expected = F.linear(h.mean(dim=(2, 3)), model.fc.weight, model.fc.bias)
    out = model(x)
    torch.testing.assert_close(out, expected)
    F.cross_entropy(out, torch.arange(4)).backward()
    assert all(b.alpha.grad is not None and b.alpha.grad.abs().item() > 0 for b in blocks(model))


def test_fixup_initialisation_is_the_papers():
    model, plain = build("fixup"), build("plain")
    bs = blocks(model)
    # Zhang et al. 2019, Section 3: 1. the classifier and each branch's last layer at 0
    assert all(torch.count_nonzero(b.conv2.weight) == 0 for b in bs)
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0
    # 3. a multiplier (1) per branch, scalar biases (0): 4 per block, before the stem's relu and fc
    assert all(b.scale.item() == 1 for b in bs)
    for b in bs:
        assert [getattr(b, n).item() for n in ("bias1a", "bias1b", "bias2a", "bias2b")] == [0] * 4
    shifts = [n for n, p in model.named_parameters() if p.numel() == 1]
    assert len(shifts) == 8 * 5 + 2
    assert all(p.item() == 0 for n, p in model.named_parameters() if p.numel() == 1 and "scale" not in n)
    # 2. other branch layers: He init (fan_out, as torchvision and the authors' code), times
    # L^(-1/(2m-2)) with L = 8 branches of m = 2 layers; projection shortcuts: He, not scaled.
    w = model.layer4[1].conv1.weight  # 512 x 512 x 3 x 3: 2.4 M draws, std within ~0.05 %
    assert w.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)) * 8 ** -0.5, rel=0.02)
    d = model.layer4[0].downsample[0].weight  # 512 x 256 x 1 x 1
    assert d.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    # and the same draws as plain: the scaling is the only change
    torch.testing.assert_close(model.layer2[0].conv1.weight, plain.layer2[0].conv1.weight * 8 ** -0.5)
    assert torch.equal(model.layer2[0].downsample[0].weight, plain.layer2[0].downsample[0].weight)


def test_fixups_zero_layers_learn():
    model = build("fixup")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if _ == 0:  # the classifier learns at once; the branches only once it is non-zero
            assert torch.count_nonzero(model.fc.weight) > 0
    assert all(torch.count_nonzero(b.conv2.weight) > 0 for b in blocks(model))
    assert all(b.bias2b.item() != 0 for b in blocks(model))


def test_plain_keeps_the_hash_a_config_had_before_the_setting():
    old = {"model": {"name": "resnet18"}, "bs": 128, "lr": 0.001, "seed": 0}
    reference = hashlib.sha256(json.dumps(old, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config_hash({**old, "model": {"name": "resnet18", "residual": "plain"}}) == reference
    assert config_hash({**old, "model": {"name": "resnet18", "residual": "fixup"}}) != reference


def test_the_report_shows_residual_only_where_a_run_is_not_plain():
    import pandas as pd

    from analysis.cells import settings_table

    base = {"task": "classify", "dataset": "digits", "norm": "none", "bs": 32, "lr": 1e-3, "epochs": 1}
    runs = [{"model": "convnet", "config": {"model": {"name": "convnet", "width": 32}}},
            {"model": "resnet18", "config": {"model": {"name": "resnet18"}}},
            {"model": "resnet18", "config": {"model": {"name": "resnet18", "residual": "plain"}}}]
    assert "model.residual" not in settings_table(pd.DataFrame([{**base, **r} for r in runs])).columns
    runs.append({"model": "resnet18", "config": {"model": {"name": "resnet18", "residual": "fixup"}}})
    table = settings_table(pd.DataFrame([{**base, **r} for r in runs]))
    assert table["model.residual"].tolist() == ["plain", "plain", "plain", "fixup"]


def test_a_fixup_run_completes(bench, tmp_path):
    bench("model=resnet18", "model.residual=fixup", "norm=none", "dataset.train_subset=64",
          "dataset.test_subset=50", "bs=16", "epochs=1", "bn_eval.modes=false", "checkpoint.every=0",
          check_rc=0)
    (status, text), = query(tmp_path / "bench.db", "select status, config from runs")
    assert status == "completed" and json.loads(text)["model"]["residual"] == "fixup"


@pytest.mark.parametrize(("args", "message"), [
    (("model=resnet18", "model.residual=foo"),
     "model.residual='foo' is not allowed (allowed: plain, skipinit, fixup)"),
    (("model=convnet", "model.residual=fixup"), "model.residual='fixup' is not allowed: model 'convnet' "
     "has no residual blocks (allowed: a model with residual blocks: resnet18)"),
    (("model=cnn4", "+model.residual=skipinit"), "model.residual='skipinit' is not allowed: model 'cnn4' "
     "has no residual blocks (allowed: a model with residual blocks: resnet18)"),
])
def test_bad_residual_settings_are_one_line_and_write_nothing(bench, tmp_path, args, message):
    assert_user_error(bench(*args, "epochs=1"), message)
    assert not (tmp_path / "bench.db").exists()


@pytest.mark.parametrize("residual", ["skipinit", "fixup"])
def test_weight_standardization_still_finds_every_conv(residual):
    def standardized(model):
        return sorted(n for n, m in model.named_modules() if hasattr(m, "parametrizations"))

    assert standardized(build(residual, "ws_gn")) == standardized(build("plain", "ws_gn"))
    assert len(standardized(build("plain", "ws_gn"))) == 20  # every conv: 1 + 8 x 2 + 3 projections
