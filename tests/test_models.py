"""Models: the write-ups' architectures (layer order, parameter counts worked out by hand), every
dataset's image shape, and any norm in any model."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_every_parameter_learns
from torch import nn

from bench.errors import UserError
from bench.models import MODEL_TASKS, MODELS, build_model, models_for
from bench.models.convnet import ScaledReLU
from bench.norms import NORMS, make_norm


def build(name, c=3, size=32, norm="bn", **kw):
    return build_model(name, in_channels=c, num_classes=10, image_size=size,
                       norm_layer=make_norm(norm), **kw)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_convnet_is_the_autoencoder_posts_classifier():
    m = build("convnet", norm="none")
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 64, (3, 3), (2, 2)), (64, 128, (3, 3), (2, 2)),
        (128, 256, (3, 3), (2, 2)), (256, 10, (2, 2), (1, 1))]
    # conv weights+biases by hand: 896 + 18,496 + 73,856 + 295,168 + 10,250 (the "0.40 M").
    assert n_params(m) == 398_666
    assert not any(isinstance(l, nn.Linear) for l in m.modules())
    # block order conv -> norm -> ReLU*sqrt(2)
    kinds = [type(l).__name__ for l in m][:3]
    assert kinds == ["Conv2d", "Identity", "ScaledReLU"]


def test_scaled_relu_and_randn_fan_in_init_keep_unit_variance():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    m = build("convnet", norm="none")
    h = nn.Sequential(*list(m)[:3])(x)  # first block
    # He et al.: with randn/sqrt(fan_in) weights and sqrt(2)*ReLU the second moment stays ~1
    # (a little less: zero padding at the borders).
    assert 0.8 < h.square().mean().item() < 1.2
    assert torch.equal(ScaledReLU()(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2 * 2**0.5]))


def test_cnn4_is_the_replacing_bn_posts_small_cnn():
    m = build("cnn4", norm="bn")
    kinds = [type(l).__name__ for l in m]
    assert kinds[:3] == ["Conv2d", "ReLU", "BatchNorm2d"]  # norm after the activation
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 32]
    assert all(c.bias is None for c in convs)
    # 216 + 1152 + 4608 + 9216 conv weights, 330 linear, 2*(8+16+32+32) BN affine = 15,698
    assert n_params(m) == 15_698


def test_resnet18_replaces_every_batchnorm():
    m = build("resnet18", norm="gn")
    assert not any(isinstance(l, nn.BatchNorm2d) for l in m.modules())
    assert sum(isinstance(l, nn.GroupNorm) for l in m.modules()) == 20
    assert m.fc.out_features == 10


@pytest.mark.parametrize("name", models_for("classify"))  # the others: test_autoencode, test_gan
@pytest.mark.parametrize("c,size", [(3, 32), (1, 28), (1, 32), (3, 96)])
def test_every_classifier_takes_every_dataset_shape(name, c, size):
    m = build(name, c=c, size=size)
    assert m(torch.randn(2, c, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_any_norm_fits_any_model(name, norm):
    # ResNet-18 at 64 px: its last stage is then 2x2 (at 32 px it is 1x1, where instance norm has
    # nothing to normalise over; `runners.classify.check` reports that as a user error).
    size = 64 if name == "resnet18" else 32
    torch.manual_seed(0)
    m = build(name, norm=norm, size=size)
    # A batch of 8: with 2, BN over a 1x1 feature map (keras_cnn's dense layers) outputs +-1
    # whatever its input, and the layers before it would get next to no gradient.
    x = torch.randn(8, 3, size, size)
    if (name, norm) == ("keras_cnn", "in"):  # its dense layers' norms see 1x1 "images"
        with pytest.raises(ValueError, match="more than 1 spatial element"):
            m(x)
        return
    # The norm is in every place the model has one: as many layers of its type as BN layers in
    # the same model with norm=bn (convnet: 4, keras_cnn: 5, resnet18: 20, ...).
    positions = sum(isinstance(l, nn.BatchNorm2d) for l in build(name, norm="bn", size=size).modules())
    norm_type = type(make_norm(norm)(16))
    assert sum(type(l) is norm_type for l in m.modules()) == positions > 0
    # Each task's real loss on the output of the right shape ...
    out = m(x)
    if MODEL_TASKS[name] == "classify":
        assert out.shape == (8, 10)
        loss = F.cross_entropy(out, torch.arange(8) % 10)
    elif MODEL_TASKS[name] == "autoencode":
        assert out.shape == x.shape
        loss = F.mse_loss(out, x)
    else:  # the discriminator's logits on real and generated images: both halves get a gradient
        fake = m.generator(m.generator.noise(8))
        assert out.shape == (8,) and fake.shape == x.shape
        loss = (F.binary_cross_entropy_with_logits(out, torch.ones(8))
                + F.binary_cross_entropy_with_logits(m(fake), torch.zeros(8)))
    loss.backward()
    assert_every_parameter_learns(m)  # ... reaches every parameter


def test_keras_cnn_is_the_fastai_threads_model():
    m = build("keras_cnn", c=1, size=28, norm="bn")
    kinds = [type(l).__name__ for l in m]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "MaxPool2d",
                     "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "MaxPool2d",
                     "Flatten", "_Flat", "Linear", "ReLU", "_Flat", "Linear"]
    convs = [l for l in m.modules() if isinstance(l, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.padding) for c in convs] == [
        (1, 32, (1, 1)), (32, 32, (1, 1)), (32, 64, (1, 1)), (64, 64, (1, 1))]
    # convs 320 + 9,248 + 18,496 + 36,928; dense 3136*512+512 = 1,606,144 and 5,130;
    # BN affine 2*(32 + 32 + 64 + 3136 + 512) = 7,552
    assert n_params(m) == 1_683_818
    # the flat norms normalise each feature over the batch, as Keras' BatchNormalization does
    x = torch.randn(16, 3136) * 5 + 3
    flat = m[14]
    torch.testing.assert_close(flat(x), (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))


def test_keras_cnn_rejects_instance_norm_as_a_user_error():
    from omegaconf import OmegaConf

    from runners import classify

    cfg = OmegaConf.create({"model": {"name": "keras_cnn", "width": 4}, "norm": {"name": "in"},
                            "dataset": {"name": "digits", "image_size": 32},
                            "optim": {"name": "adam"}, "lr": 1e-3, "sched": {"name": "constant"}})
    with torch.device("meta"), pytest.raises(UserError, match="model 'keras_cnn' with norm 'in'"):
        classify.check(cfg)


def test_bad_model_name_and_setting():
    with pytest.raises(UserError, match=r"unknown model 'vgg' \(allowed: cnn4, conv_ae, convnet, "
                                        r"dcgan_vgg, keras_cnn, resnet18\)"):
        build("vgg")
    with pytest.raises(UserError, match=r"unknown setting model.depth for model 'convnet'"):
        build("convnet", depth=3)


def test_group_count_checked_against_the_models_layers():
    with pytest.raises(UserError, match="does not divide"):
        build_model("cnn4", in_channels=3, num_classes=10, image_size=32,
                    norm_layer=make_norm("gn", groups=16))  # first layer has 8 channels


@pytest.mark.parametrize("norm", ["bn", "gn", "ln", "in"])
def test_resnet18_takes_norms_without_affine_parameters(norm):
    m = build_model("resnet18", in_channels=3, num_classes=10, image_size=64,
                    norm_layer=make_norm(norm, affine=False))
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert sum(p.numel() for p in m.parameters()) == 11_181_642 - 2 * 4800  # BN affine: 4,800 channels
