"""Models by short name: every entry is `Model(in_channels, num_classes, image_size, norm_layer, **params)`.

`norm_layer` is a `Norm(num_channels) -> nn.Module` from `bench.norms`; models never name a norm.
Images are square (B, in_channels, image_size, image_size). What a model returns depends on the
task it is built for (`MODEL_TASKS`): classifiers return logits (B, num_classes); the autoencoder
returns images of its input's shape; the GAN pair holds `generator` and `discriminator` and
returns the discriminator's logits (B,).
"""

import inspect
from collections.abc import Callable

from torch import nn

from bench.checks import require_known_settings, require_name
from bench.models.autoencoder import ConvAE
from bench.models.cnn4 import CNN4
from bench.models.convnet import ConvNet
from bench.models.gan import GAN
from bench.models.keras_cnn import KerasCNN
from bench.models.resnet import resnet18
from bench.norm_zoo.ws import apply_weight_standardization

MODELS: dict[str, Callable[..., nn.Module]] = {
    "convnet": ConvNet,
    "cnn4": CNN4,
    "resnet18": resnet18,
    "keras_cnn": KerasCNN,
    "conv_ae": ConvAE,
    "dcgan_vgg": GAN,
}

# The task each model is built for: a model of another task is a user error before any work.
MODEL_TASKS: dict[str, str] = {
    "convnet": "classify",
    "cnn4": "classify",
    "resnet18": "classify",
    "keras_cnn": "classify",
    "conv_ae": "autoencode",
    "dcgan_vgg": "gan",
}


def models_for(task: str) -> list[str]:
    """The models built for `task`, sorted."""
    return sorted(name for name, t in MODEL_TASKS.items() if t == task)


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int,
                norm_layer: Callable[[int], nn.Module],
                gen_norm_layer: Callable[[int], nn.Module] | None = None, **params) -> nn.Module:
    """Build model `name`; unknown names and settings are errors listing the allowed ones.

    `gen_norm_layer` is the generator's norm, for GAN models only (they take it as a keyword).
    """
    builder = MODELS[require_name("model", name, MODELS)]
    fixed = {"in_channels", "num_classes", "image_size", "norm_layer", "gen_norm_layer"}
    require_known_settings("model", name, params,
                           [p for p in inspect.signature(builder).parameters if p not in fixed])
    if gen_norm_layer is not None:
        params["gen_norm_layer"] = gen_norm_layer
    model = builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                    norm_layer=norm_layer, **params)
    # A norm such as `ws_gn` also changes the convolutions: the one place that happens (the
    # Conv2d layers its GroupNorm follows; a GAN's generator has only transposed convs).
    if getattr(norm_layer, "standardize_weights", False):
        apply_weight_standardization(model, norm_types=(nn.GroupNorm,))
    return model
