"""Small pieces every training loop here uses, with plain arguments (no config): mixed precision,
memory layout, the progress bar, shapes-only model checks."""

import sys
from contextlib import nullcontext

import torch
from tqdm import tqdm


def autocast(device: torch.device, amp):
    """bf16 autocast where asked; amp='auto' only on CUDA, so CPU results stay float32."""
    on = device.type == "cuda" if amp == "auto" else bool(amp)
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else nullcontext()


def use_channels_last(bs: int, setting) -> bool:
    """setting: 'auto', True or False.

    `python -m bench.speed.data_path --model M` on a 2-core CPU (torch 2.14), channels_last vs
    NCHW per training step: convnet 1.09x at bs 2 .. 1.51x at bs 512; cnn4 1.09-1.16x at every
    bs; resnet18 0.77x at bs 2, 0.90x at 32, 1.07x at 128, 1.21x at 512. An earlier measurement
    here (4-layer CNN, 32 px, 2 threads) had channels_last 1.5x slower at bs 2 (6.1 vs 4.1 ms).
    'auto' (bs >= 32) keeps the big losses away and most of the gains."""
    return bs >= 32 if setting == "auto" else bool(setting)


def progress(iterable, setting, desc: str):
    """A progress bar on a terminal (setting 'auto'), or always (True) or never (False); nothing
    in logs and CI by default."""
    enabled = sys.stderr.isatty() if setting == "auto" else bool(setting)
    return tqdm(iterable, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


def learning_rate(opt: torch.optim.Optimizer) -> float:
    """The learning rate the next step will use (of the first parameter group)."""
    return opt.param_groups[0]["lr"]


def meta_safe(model: torch.nn.Module) -> torch.nn.Module:
    """`model` (built on the meta device) made fit for a shapes-only forward pass: a norm with
    momentum None (a cumulative average) divides by its batch counter as a Python number, which a
    meta tensor cannot give (`Tensor.item()`), so the throw-away copy uses a fixed momentum."""
    for m in model.modules():
        if getattr(m, "momentum", 0.1) is None:
            m.momentum = 0.1
    return model
