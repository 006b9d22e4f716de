"""Weight standardization (Qiao et al., arXiv 1903.10520): every Conv2d of a model convolves with
its weight standardized per output channel, W_hat = (W - mean(W)) / sqrt(var(W) + eps), mean and
population variance over (in_channels / groups, kH, kW), as in the paper's equation.

The norm `ws_gn` is GroupNorm in the norm slot plus this change to the convolutions; the change
is made in one place, `bench.models.build_model`, which calls `apply_weight_standardization` when
the norm layer carries `standardize_weights = True` (set by `bench.norms.make_norm`).

It uses `torch.nn.utils.parametrize`: the stored parameter is `weight.original` (so state-dict keys
change to `...parametrizations.weight.original`) and `conv.weight` is the standardized weight,
recomputed at each forward. Convs stay `nn.Conv2d` instances. ConvTranspose2d and Linear are left
alone (the paper standardizes convolutions; a transposed conv's filters are laid out (in, out)).
Every Conv2d means also those that no norm follows (convnet's classifier conv, conv_ae's latent
conv, the discriminator's first conv): their outputs then scale with sqrt(fan_in).
"""

import torch
from torch import nn
from torch.nn.utils import parametrize

# Keeps a constant filter finite. The paper's code adds 1e-5 to the std instead, which shrinks a
# 3x3x512 filter under Kaiming init (std ~0.02) by 0.05%; 1e-10 inside the sqrt changes it by <1e-6.
WS_EPS = 1e-10


class Standardize(nn.Module):
    """(out, in/groups, kH, kW) weight -> per-output-channel mean 0, population variance 1."""

    def __init__(self, eps: float = WS_EPS):
        super().__init__()
        self.eps = eps

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) * torch.rsqrt(var + self.eps)


def apply_weight_standardization(model: nn.Module, eps: float = WS_EPS) -> int:
    """Standardize the weight of every nn.Conv2d in `model`, in place; returns how many were
    changed. Calling it twice changes nothing more."""
    convs = [m for m in model.modules()
             if isinstance(m, nn.Conv2d) and not parametrize.is_parametrized(m, "weight")]
    for m in convs:  # listed first: registering adds submodules to the tree being walked
        parametrize.register_parametrization(m, "weight", Standardize(eps))
    return len(convs)
