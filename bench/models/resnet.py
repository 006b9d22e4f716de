"""torchvision's ResNet-18 with every BatchNorm replaced by the chosen norm (Replacing BatchNorm).

torchvision already calls `norm_layer(num_channels)`, which is our norm signature. For inputs that
are not RGB only the stem conv changes; the ImageNet stem (7x7/2 conv + 3x3/2 max-pool) is kept, so
a 32 px image reaches the last stage at 1x1 (BN then averages over the batch only).
"""

from torch import nn
from torchvision.models import resnet18 as tv_resnet18


class _NormSlot(nn.Identity):
    """Where a norm goes, remembered with its channel count: torchvision's init sets every
    BatchNorm/GroupNorm weight to 1, which fails for norms without weights (affine=false)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels


def resnet18(in_channels: int, num_classes: int, image_size: int, norm_layer) -> nn.Module:
    model = tv_resnet18(weights=None, num_classes=num_classes, norm_layer=_NormSlot)
    # Fill the slots after torchvision's init; fresh norm layers start at weight 1, bias 0,
    # which is what that init would have set.
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, _NormSlot):
                setattr(parent, name, norm_layer(child.num_channels))
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
