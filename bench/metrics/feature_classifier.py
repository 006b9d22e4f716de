"""The classifier behind the GAN's classifier-feature scores, trained by the suite.

FID/IS packages download their Inception weights from a URL at first use, which an offline
machine cannot do, so `cfid`, `ckid` and `cis` use a classifier of the model registry trained on
the same dataset, on pixels in [-1, 1] (the generator's range). Plain arguments here; which
classifier a GAN run uses, where it is cached and when it is good enough is decided by
`runners.gan_features` from the config.

`features`: the classifier's settings, a dict with `model` ({name, ...model options}), `norm`
(a norm's short name), `epochs`, `bs`, `lr` (Adam) and `seed`.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

from bench.data.loader import DeviceBatches
from bench.models import build_model
from bench.norms import make_norm

SIGNED = {"mean": [0.5], "std": [0.5]}  # uint8 -> [-1, 1]


def build(features: dict, channels: int, size: int, classes: int) -> nn.Module:
    model = dict(features["model"])
    name = model.pop("name")
    return build_model(name, in_channels=channels, num_classes=classes, image_size=size,
                       norm_layer=make_norm(features["norm"]), **model)


def train(features: dict, data, device: torch.device) -> tuple[nn.Module, float, float]:
    """(classifier in eval mode, test accuracy, last epoch's mean training loss), trained with
    Adam on `data` (a `bench.data.Dataset`). Draws from torch's global generator (seed it, or
    fork it, first) and a data-order generator seeded features['seed']."""
    model = build(features, data.channels, data.image_size, data.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=features["lr"])
    gen = torch.Generator(device=device).manual_seed(features["seed"])
    batches = DeviceBatches(data.train_x.to(device), data.train_y.to(device), features["bs"],
                            shuffle=True, drop_last=True, generator=gen, **SIGNED)
    for _ in range(features["epochs"]):
        model.train()
        total = torch.zeros((), device=device)
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        train_loss = total.item() / len(batches)
    model.eval()
    test = DeviceBatches(data.test_x.to(device), data.test_y.to(device),
                         min(500, len(data.test_y)), **SIGNED)
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
    return model, correct / len(data.test_y), train_loss


def load(path, key: dict, features: dict, data, device: torch.device):
    """(classifier in eval mode, its test accuracy) from the file at `path` when the file holds
    the weights of `key`; None when it holds another classifier's."""
    saved = torch.load(path, map_location=device, weights_only=True)
    if saved.get("key") != key:
        return None
    model = build(features, data.channels, data.image_size, data.num_classes).to(device)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), float(saved["test_acc"])


def save(path, key: dict, model: nn.Module, test_acc: float) -> None:
    """Write atomically: parallel jobs that train the same classifier each rename their own
    temporary file, and the last rename wins (the files are the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"key": key, "state_dict": model.state_dict(), "test_acc": test_acc}, tmp)
    os.replace(tmp, path)
