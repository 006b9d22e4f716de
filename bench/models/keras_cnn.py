"""The fast.ai thread's Keras MNIST model (the fast.ai course's, as posted with batch 4096).

    conv(w) ReLU, norm, conv(w) ReLU, maxpool,
    norm, conv(2w) ReLU, norm, conv(2w) ReLU, maxpool,
    flatten, norm, dense(16w) ReLU, norm, dense(classes)

with w = 32 as in the thread (32, 32, 64, 64, dense 512). Every conv is 3x3 with a zero padding of
1 (the post's ZeroPadding2D before each one), so 28 px images reach the dense layer as 7x7. The
norms come after the activations, where the post puts its BatchNormalization layers; the first
conv has none in front (the post normalises the input instead).

The two norms after `flatten` normalise each of the flattened features (Keras' BatchNormalization
on a flat tensor: 2w * (s/4)^2 features, then 16w): they get the features as channels of a 1x1
image, so `bn` there is BatchNorm1d, `gn` groups features, and a norm that needs spatial extent
(`in`) cannot be used. Keras' initialisation: Glorot-uniform weights, zero biases.
"""

import torch
from torch import nn


class _Flat(nn.Module):
    """A norm over the features of a flat (B, F) tensor, taken as (B, F, 1, 1)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[:, :, None, None]).flatten(1)


class KerasCNN(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, norm_layer, width: int = 32):
        w, s = width, image_size // 4
        flat = 2 * w * s * s
        super().__init__(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), norm_layer(w),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            norm_layer(w), nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            norm_layer(2 * w), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), _Flat(norm_layer(flat)), nn.Linear(flat, 16 * w), nn.ReLU(),
            _Flat(norm_layer(16 * w)), nn.Linear(16 * w, num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
