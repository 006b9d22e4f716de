"""The CIFAR classifier of the autoencoder post ("When Batch Normalization Hurts Performance").

Four blocks `Conv2d(k=3, s=2, p=1) -> norm -> ReLU*sqrt(2)`, channels in-w-2w-4w-8w (w=32 gives the
post's 32-64-128-256), then a conv whose kernel covers what is left of the image (2x2 for 32 px, as
in the post) straight to the class logits; no linear layer. About 0.40 M parameters at w=32.
The author's layers draw weights as randn / sqrt(fan_in) with zero bias, and scale ReLU by sqrt(2)
so activations keep unit variance at initialisation (He et al.'s gain, moved out of the weights).
"""

import math

import torch
from torch import nn


class ScaledReLU(nn.Module):
    """ReLU(x) * sqrt(2): with randn/sqrt(fan_in) weights this keeps the activation variance ~1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * math.sqrt(2.0)


def randn_fan_in_init_(module: nn.Module) -> None:
    """Weights ~ N(0, 1/fan_in), biases 0, for every conv / transposed conv / linear in `module`."""
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        elif isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
        elif isinstance(m, nn.Linear):
            fan_in = m.in_features
        else:
            continue
        nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(fan_in))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def stride2_size(size: int, blocks: int) -> int:
    """Spatial size after `blocks` convs with k=3, s=2, p=1 (32 -> 16 -> 8 -> 4 -> 2)."""
    for _ in range(blocks):
        size = (size - 1) // 2 + 1
    return size


class ConvNet(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, norm_layer, width: int = 32):
        chans = [in_channels, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), norm_layer(c_out), ScaledReLU()]
        # 28 px (MNIST) also ends at 2x2; 96 px (Imagenette) at 6x6.
        head = stride2_size(image_size, 4)
        layers += [nn.Conv2d(chans[-1], num_classes, head), nn.Flatten()]
        super().__init__(*layers)
        randn_fan_in_init_(self)
