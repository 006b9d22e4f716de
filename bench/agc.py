"""Adaptive gradient clipping (AGC): `agc_(params, clipping, eps)` clips gradients in place, and
`clip_before_step(opt, params, ...)` makes every `opt.step()` do so first.

Brock, De, Smith & Simonyan 2021, "High-Performance Large-Scale Image Recognition Without
Normalization" (NFNets, arXiv:2102.06171), Section 4.1, eq. (3), unit-wise: for each unit i,

    G_i <- clipping * max(||W_i||, eps) / ||G_i|| * G_i   where ||G_i|| / max(||W_i||, eps) > clipping,

else G_i unchanged (||.|| the Frobenius norm, eps = 1e-3 in the paper). A unit is a slice along dim 0
(a row of a Linear weight, an output channel of a Conv2d weight; of a ConvTranspose2d weight,
(in, out, kh, kw), an input channel), as in timm's port (`timm/utils/agc.py`) of the paper's code
(deepmind-research `nfnets/optim.py`, `unitwise_norm`); a 1-d or scalar parameter (a bias, a
norm's gain) is one unit. The eps floor lets a zero-initialised unit (e.g. a bias at 0) move.
"""

from collections.abc import Iterable

import torch
from torch import nn

from bench.checks import require_number


def unit_norms(x: torch.Tensor) -> torch.Tensor:
    """||x_i|| for each slice x_i along dim 0, shaped to broadcast against x ((out, 1, 1, 1) for a
    conv weight); a 0-d or 1-d x is one unit: its whole norm, shape ()."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def agc_(params: Iterable[torch.Tensor], clipping: float, eps: float = 1e-3) -> None:
    """Clip each parameter's .grad in place, unit-wise, to at most clipping x max(||W_i||, eps);
    a parameter without a gradient is left alone."""
    for p in params:
        if p.grad is None:
            continue
        max_norm = unit_norms(p.detach()).clamp_min(eps) * clipping
        g_norm = unit_norms(p.grad)
        clip = g_norm > max_norm
        # Where clip holds g_norm > 0; elsewhere divide by 1, not 0, and keep the gradient.
        p.grad.mul_(torch.where(clip, max_norm / torch.where(clip, g_norm, 1.0), 1.0))


def clipped_params(model: nn.Module, skip_last: bool = True) -> list[nn.Parameter]:
    """model's parameters, without those of its last module that has parameters of its own when
    `skip_last` (the paper leaves the final classifier unclipped). That is the output layer of
    every model in bench.models (modules in registration order): convnet's last conv, the
    classifiers' Linear, the decoder's and generator's last ConvTranspose2d, D's head."""
    params = list(model.parameters())
    if not skip_last:
        return params
    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    last = {id(p) for p in owners[-1].parameters(recurse=False)} if owners else set()
    return [p for p in params if id(p) not in last]


def clip_before_step(opt: torch.optim.Optimizer, params: Iterable[torch.Tensor], clipping: float,
                     eps: float = 1e-3):
    """Make every `opt.step()` first run `agc_(params, clipping, eps)` (a step pre-hook: `opt`,
    its state_dict and checkpoints stay as they were). Returns the hook's handle (`.remove()`)."""
    # 0 would zero every gradient: the config's agc.clipping=0 (off) adds no hook at all
    require_number("agc.clipping", clipping, gt=0)
    require_number("agc.eps", eps, gt=0)  # 0: a zero-init unit's max norm is 0, its gradient zeroed
    params = list(params)
    return opt.register_step_pre_hook(lambda optimizer, args, kwargs: agc_(params, clipping, eps))
