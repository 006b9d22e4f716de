"""The small CNN of the Replacing BatchNorm post (Thomas Tumiel, Imagenette).

Four blocks `Conv2d(3x3, s=2, p=1, bias=False) -> ReLU -> norm` (the norm comes *after* the
activation, as in the post's notebook), channels in-w-2w-4w-4w (w=8 gives the post's 8-16-32-32),
then global average pooling and Linear(4w, classes). Kaiming-normal init, zero biases. The pooling
makes it take any image size.
"""

from torch import nn


class CNN4(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, norm_layer, width: int = 8):
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                       norm_layer(c_out)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], num_classes)]
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
