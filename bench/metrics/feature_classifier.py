"""The classifier behind the GAN's classifier-feature scores: trained by the suite, cached on disk.

FID/IS packages download their Inception weights from a URL at first use, which an offline
machine cannot do, so `cfid`, `ckid` and `cis`
use a classifier of the model registry trained on the same dataset, on pixels in [-1, 1] (the
generator's range). It is trained once per dataset and config and cached at

    <data_root>/cache/gan_features/<dataset>-<size>px-<hash>.pt

where the hash covers what decides the weights: the dataset (name, size, options, subsets), the
classifier's config (`task.features` without `train` and `min_acc`) and `VERSION`. Training forks
torch's random state, so a run's own random stream is the same whether the file was cached or not.

Failures are one-line `UserError`s before the run's row is written: a config the classifier
cannot take (checked on the meta device), a missing file with `train: false`, and a classifier
whose test accuracy stays below `min_acc` (scores in the feature space of a classifier that has
not learned the classes say little).
"""

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bench.data import dataset_train_size
from bench.data.loader import DeviceBatches
from bench.errors import UserError, choices
from bench.models import MODEL_TASKS, build_model, models_for
from bench.norms import make_norm

log = logging.getLogger(__name__)

VERSION = 1  # bump when the training below changes what a cached file holds
SIGNED = {"mean": [0.5], "std": [0.5]}  # uint8 -> [-1, 1]
NOT_IN_KEY = ("train", "min_acc")  # settings that do not change the weights


def _settings(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.task.features, resolve=True)


def cache_key(cfg: DictConfig, image_size: int) -> dict:
    ds, f = cfg.dataset, _settings(cfg)
    return {"version": VERSION, "dataset": ds.name, "image_size": image_size,
            "options": dict(OmegaConf.to_container(ds.options, resolve=True)) if "options" in ds
            else {},
            "train_subset": ds.train_subset, "test_subset": ds.test_subset,
            "classifier": {k: v for k, v in f.items() if k not in NOT_IN_KEY}}


def cache_path(cfg: DictConfig, image_size: int) -> Path:
    text = json.dumps(cache_key(cfg, image_size), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    root = Path(cfg.data_root).expanduser().resolve()
    return root / "cache" / "gan_features" / f"{cfg.dataset.name}-{image_size}px-{digest}.pt"


def _build(f: dict, channels: int, size: int, classes: int) -> nn.Module:
    model = dict(f["model"])
    name = model.pop("name")
    return build_model(name, in_channels=channels, num_classes=classes, image_size=size,
                       norm_layer=make_norm(f["norm"]), **model)


def check(cfg: DictConfig, channels: int, size: int, classes: int) -> None:
    """Everything about the classifier that can be checked without training (meta device)."""
    f = _settings(cfg)
    name = f["model"].get("name")
    if MODEL_TASKS.get(name) != "classify":
        raise UserError(f"task.features.model.name '{name}' is not a classifier "
                        f"(allowed: {choices(models_for('classify'))})")
    for key, least in (("epochs", 1), ("bs", 1), ("seed", 0)):
        v = f[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise UserError(f"task.features.{key}={v!r} is not an integer >= {least}")
    lr, min_acc = f["lr"], f["min_acc"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise UserError(f"task.features.lr={lr!r} is not a positive number")
    if isinstance(min_acc, bool) or not isinstance(min_acc, (int, float)) or not 0 <= min_acc <= 1:
        raise UserError(f"task.features.min_acc={min_acc!r} is not a number in [0, 1]")
    if not isinstance(f["train"], bool):
        raise UserError(f"task.features.train={f['train']!r} is not allowed (allowed: true, false)")
    ds = cfg.dataset
    n_train = dataset_train_size(ds.name, train_subset=ds.train_subset, **ds.get("options", {}))
    if f["bs"] > n_train:
        raise UserError(f"task.features.bs={f['bs']} is larger than the {n_train} training images "
                        f"of '{ds.name}'")
    model = _build(f, channels, size, classes)
    try:
        shape = tuple(model(torch.empty(2, channels, size, size)).shape)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"task.features.model '{name}' cannot take {size} px images "
                        f"({' '.join(str(e).split())})") from None
    if shape != (2, classes):
        raise UserError(f"task.features.model '{name}' returns {shape[1:]} per image, not "
                        f"{classes} class logits")
    path = cache_path(cfg, size)
    if not f["train"] and not path.exists():
        raise UserError(f"no classifier for the GAN metrics at {path} and task.features.train=false "
                        f"(set task.features.train=true to train one)")


def _train(f: dict, data, device: torch.device) -> tuple[nn.Module, float, float]:
    """(classifier in eval mode, test accuracy, last epoch's mean training loss)."""
    model = _build(f, data.channels, data.image_size, data.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=f["lr"])
    gen = torch.Generator(device=device).manual_seed(f["seed"])
    train = DeviceBatches(data.train_x.to(device), data.train_y.to(device), f["bs"], shuffle=True,
                          drop_last=True, generator=gen, **SIGNED)
    for _ in range(f["epochs"]):
        model.train()
        total = torch.zeros((), device=device)
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        train_loss = total.item() / len(train)
    model.eval()
    test = DeviceBatches(data.test_x.to(device), data.test_y.to(device),
                         min(500, len(data.test_y)), **SIGNED)
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
    return model, correct / len(data.test_y), train_loss


def feature_classifier(cfg: DictConfig, data, device: torch.device) -> tuple[nn.Module, float]:
    """(the classifier for `cfg`'s GAN metrics on `device`, in eval mode; its test accuracy):
    read from the cache, else trained and cached. UserError if it cannot be had."""
    f, path = _settings(cfg), cache_path(cfg, data.image_size)
    key = cache_key(cfg, data.image_size)
    if path.exists():
        saved = torch.load(path, map_location=device, weights_only=True)
        if saved.get("key") == key:
            model = _build(f, data.channels, data.image_size, data.num_classes).to(device)
            model.load_state_dict(saved["state_dict"])
            return model.eval(), float(saved["test_acc"])
        log.warning("%s holds another classifier's weights; training a new one", path)
    if not f["train"]:
        raise UserError(f"no classifier for the GAN metrics at {path} and task.features.train=false "
                        f"(set task.features.train=true to train one)")
    t0 = time.perf_counter()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leaves the run's random stream untouched
        torch.manual_seed(f["seed"])
        model, acc, loss = _train(f, data, device)
    if not math.isfinite(loss) or acc < f["min_acc"]:
        raise UserError(
            f"cannot train the classifier for the GAN metrics: test accuracy {acc:.3f} (last "
            f"training loss {loss:.4g}) after {f['epochs']} epochs is below task.features.min_acc="
            f"{f['min_acc']} (raise task.features.epochs or lower task.features.lr)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # parallel jobs: last rename wins
    torch.save({"key": key, "state_dict": model.state_dict(), "test_acc": acc}, tmp)
    os.replace(tmp, path)
    log.info("trained the classifier for the GAN metrics in %.1f s: test accuracy %.3f (%s)",
             time.perf_counter() - t0, acc, path)
    return model, acc
