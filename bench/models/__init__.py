"""Models by short name: every entry is `Model(in_channels, num_classes, image_size, norm_layer, **params)`.

`norm_layer` is a `Norm(num_channels) -> nn.Module` from `bench.norms`; models never name a norm.
Images are square (B, in_channels, image_size, image_size); outputs are logits (B, num_classes).
"""

import inspect
from collections.abc import Callable

from torch import nn

from bench.errors import UserError, choices
from bench.models.cnn4 import CNN4
from bench.models.convnet import ConvNet
from bench.models.resnet import resnet18

MODELS: dict[str, Callable[..., nn.Module]] = {
    "convnet": ConvNet,
    "cnn4": CNN4,
    "resnet18": resnet18,
}


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int,
                norm_layer: Callable[[int], nn.Module], **params) -> nn.Module:
    """Build model `name`; unknown names and settings are errors listing the allowed ones."""
    if name not in MODELS:
        raise UserError(f"unknown model '{name}' (allowed: {choices(MODELS)})")
    builder = MODELS[name]
    fixed = {"in_channels", "num_classes", "image_size", "norm_layer"}
    allowed = [p for p in inspect.signature(builder).parameters if p not in fixed]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UserError(
            f"unknown setting model.{unknown[0]} for model '{name}' "
            f"(allowed: {choices(allowed) or 'none'})"
        )
    return builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                   norm_layer=norm_layer, **params)
