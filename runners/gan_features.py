"""Which classifier a GAN run's cfid/ckid/cis use (`task.features`), where it is cached, and the
checks that fail before the run's row is written.

The classifier (`bench.metrics.feature_classifier`) is trained once per dataset and config and
cached at

    <data_root>/cache/gan_features/<dataset>-<size>px-<hash>.pt

where the hash covers what decides the weights: the dataset (name, size, options, subsets), the
classifier's settings (`task.features` without `train` and `min_acc`) and `VERSION`. Training forks
torch's random state, so a run's own random stream is the same whether the file was cached or not.

Failures are one-line `UserError`s: a config the classifier cannot take (checked on the meta
device), a missing file with `train: false`, and a classifier whose test accuracy stays below
`min_acc` (scores in the feature space of a classifier that has not learned the classes say
little).
"""

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bench.checks import fail, require_bool, require_int, require_number
from bench.data import dataset_train_size
from bench.errors import UserError, choices, one_line
from bench.metrics import feature_classifier as fc
from bench.models import models_for

log = logging.getLogger(__name__)

VERSION = 1  # bump when the training in bench.metrics.feature_classifier changes its weights
NOT_IN_KEY = ("train", "min_acc")  # settings that do not change the weights


def features(cfg: DictConfig) -> dict:
    """`task.features` as a plain dict (bench.metrics.feature_classifier's `features`)."""
    return OmegaConf.to_container(cfg.task.features, resolve=True)


def cache_key(cfg: DictConfig, image_size: int) -> dict:
    ds, f = cfg.dataset, features(cfg)
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


def _no_file(path: Path) -> UserError:
    return UserError(f"no classifier for the GAN metrics at {path} and task.features.train=false "
                     f"(set task.features.train=true to train one)")


def check(cfg: DictConfig, channels: int, size: int, classes: int) -> None:
    """Everything about the classifier that can be checked without training (meta device)."""
    f = features(cfg)
    name = f["model"].get("name")
    if name not in models_for("classify"):
        fail("task.features.model.name", name, "is not a classifier", choices(models_for("classify")))
    for key, least in (("epochs", 1), ("bs", 1), ("seed", 0)):
        require_int(f"task.features.{key}", f[key], lo=least)
    require_number("task.features.lr", f["lr"], gt=0)
    require_number("task.features.min_acc", f["min_acc"], ge=0, le=1)
    require_bool("task.features.train", f["train"])
    ds = cfg.dataset
    n_train = dataset_train_size(ds.name, train_subset=ds.train_subset, **ds.get("options", {}))
    if f["bs"] > n_train:
        fail("task.features.bs", f["bs"], f"is larger than the {n_train} training images of "
             f"'{ds.name}'", f"1..{n_train}")
    model = fc.build(f, channels, size, classes)
    try:
        shape = tuple(model(torch.empty(2, channels, size, size)).shape)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"task.features.model '{name}' cannot take {size} px images "
                        f"({one_line(e, with_type=False)})") from None
    if shape != (2, classes):
        raise UserError(f"task.features.model '{name}' returns {shape[1:]} per image, not "
                        f"{classes} class logits")
    path = cache_path(cfg, size)
    if not f["train"] and not path.exists():
        raise _no_file(path)


def feature_classifier(cfg: DictConfig, data, device: torch.device) -> tuple[nn.Module, float]:
    """(the classifier for `cfg`'s GAN metrics on `device`, in eval mode; its test accuracy):
    read from the cache, else trained and cached. UserError if it cannot be had."""
    f, path = features(cfg), cache_path(cfg, data.image_size)
    key = cache_key(cfg, data.image_size)
    if path.exists():
        if (found := fc.load(path, key, f, data, device)) is not None:
            return found
        log.warning("%s holds another classifier's weights; training a new one", path)
    if not f["train"]:
        raise _no_file(path)
    t0 = time.perf_counter()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leaves the run's random stream untouched
        torch.manual_seed(f["seed"])
        model, acc, loss = fc.train(f, data, device)
    if not math.isfinite(loss) or acc < f["min_acc"]:
        raise UserError(
            f"cannot train the classifier for the GAN metrics: test accuracy {acc:.3f} (last "
            f"training loss {loss:.4g}) after {f['epochs']} epochs is below task.features.min_acc="
            f"{f['min_acc']} (raise task.features.epochs or lower task.features.lr)")
    fc.save(path, key, model, acc)
    log.info("trained the classifier for the GAN metrics in %.1f s: test accuracy %.3f (%s)",
             time.perf_counter() - t0, acc, path)
    return model, acc
