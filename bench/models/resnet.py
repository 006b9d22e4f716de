"""torchvision's ResNet-18 with every BatchNorm replaced by the chosen norm (Replacing BatchNorm).

torchvision already calls `norm_layer(num_channels)`, which is our norm signature. For inputs that
are not RGB only the stem conv changes; the ImageNet stem (7x7/2 conv + 3x3/2 max-pool) is kept, so
a 32 px image reaches the last stage at 1x1 (BN then averages over the batch only).

`residual` picks how the residual blocks train without normalization: `plain` (torchvision's
blocks, untouched), `skipinit` or `fixup` (`_Block`, which reuses the block's own layers).
"""

import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from bench.checks import require_choice

RESIDUALS = ("plain", "skipinit", "fixup")


class _NormSlot(nn.Identity):
    """Where a norm goes, remembered with its channel count: torchvision's init sets every
    BatchNorm/GroupNorm weight to 1, which fails for norms without weights (affine=false)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels


class _Shift(nn.Module):
    """x + b, one learnable scalar b (init 0): Fixup's scalar bias."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class _Block(nn.Module):
    """A torchvision BasicBlock's own layers (conv1, bn1, conv2, bn2, downsample: same names, so
    norms and weight standardization still find them) with SkipInit's or Fixup's scalars.

    plain:    relu(shortcut(x) + bn2(conv2(relu(bn1(conv1(x))))))  (torchvision's forward)
    skipinit: relu(shortcut(x) + alpha * branch(x)), alpha init 0 (De & Smith 2020, Section 4)
    fixup:    Zhang, Dauphin & Ma 2019, Section 3 and their BasicBlock: a scalar bias before
              conv1 (also before the projection shortcut, as in the authors' code), before each
              relu and before conv2, and scale (init 1) then bias after bn2.
    """

    def __init__(self, block: nn.Module, residual: str):
        super().__init__()
        self.residual = residual
        self.conv1, self.bn1, self.relu = block.conv1, block.bn1, block.relu
        self.conv2, self.bn2, self.downsample = block.conv2, block.bn2, block.downsample
        if residual == "skipinit":
            self.alpha = nn.Parameter(torch.zeros(1))
        if residual == "fixup":
            self.bias1a, self.bias1b, self.bias2a = (nn.Parameter(torch.zeros(1)) for _ in range(3))
            self.scale = nn.Parameter(torch.ones(1))
            self.bias2b = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fixup = self.residual == "fixup"
        inp = x + self.bias1a if fixup else x
        out = self.bn1(self.conv1(inp))
        out = self.relu(out + self.bias1b if fixup else out)
        out = self.bn2(self.conv2(out + self.bias2a if fixup else out))
        if fixup:
            out = out * self.scale + self.bias2b
        elif self.residual == "skipinit":
            out = self.alpha * out
        shortcut = x if self.downsample is None else self.downsample(inp)
        return self.relu(out + shortcut)


def _fixup_init(model: nn.Module, blocks: list[_Block]) -> None:
    """Fixup's rules 1-2 (Zhang et al. 2019, Section 3): the last layer of every branch and the
    classifier at 0; the branch's other layers keep the standard init (torchvision's Kaiming
    normal, fan_out, the authors' code too) scaled by L^(-1/(2m-2)), L branches of m layers.
    Projection shortcuts keep the standard init, as in the authors' code. In place, so no RNG
    draws beyond torchvision's."""
    m = 2  # layers per BasicBlock branch
    scale = len(blocks) ** (-1 / (2 * m - 2))  # ResNet-18: 8^(-1/2)
    with torch.no_grad():
        for block in blocks:
            block.conv1.weight.mul_(scale)
            block.conv2.weight.zero_()
        model.fc.weight.zero_()
        model.fc.bias.zero_()


def resnet18(in_channels: int, num_classes: int, image_size: int, norm_layer,
             residual: str = "plain") -> nn.Module:
    require_choice("model.residual", residual, RESIDUALS)
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
    if residual == "plain":  # the model every earlier run trained, module for module
        return model
    blocks = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for i, block in enumerate(stage):
            stage[i] = _Block(block, residual)
            blocks.append(stage[i])
    if residual == "fixup":
        # The authors' ResNet also has a bias before the stem's relu and one before the fc (a
        # scalar: adding it after the pooling is the same). ResNet uses `model.relu` in the stem only.
        model.relu = nn.Sequential(_Shift(), model.relu)
        model.avgpool = nn.Sequential(model.avgpool, _Shift())
        _fixup_init(model, blocks)
    return model
