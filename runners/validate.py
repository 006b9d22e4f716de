"""Bad input, caught before any work starts and reported as one line.

Two places: `runners.overrides.check_overrides` reads the command line before Hydra composes
anything, and `check_config` here checks a composed job config. A sweep runs `check_config` on
every job before the first one starts (`runners.job.prepare_sweep`), so a bad value in a sweep
loses no work.
"""

import math
import numbers
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.checks import (
    fail,
    require_bool,
    require_choice,
    require_int,
    require_name,
    require_number,
    require_numbers,
)
from bench.errors import UserError, choices
from bench.heartbeat import check_heartbeat

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("task", "dataset", "model", "norm", "optim", "sched", "experiment")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# A URL inside an override's text: SQLAlchemy's `scheme://` start, up to what ends a value in
# Hydra's grammar (a comma between sweep values, a quote or a closing bracket).
URL_IN_TEXT = re.compile(r"[A-Za-z][\w+]*://[^\s,'\"}\])]*")


def check_no_password(url) -> None:
    """Refuse a db.url that holds a password. The URL is part of the run's config, which is
    stored where anyone who reads the results sees it (runs.config, `python -m db show`, Hydra's
    .hydra/*.yaml and multirun.yaml). libpq, under psycopg, reads the password from PGPASSWORD or
    ~/.pgpass by itself (https://www.postgresql.org/docs/15/libpq-pgpass.html), so it never needs
    to be in the URL. Not a URL at all: `check_config` says so."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(str(url))
    except ArgumentError:
        return
    if parsed.password is not None:
        fail("db.url", parsed.render_as_string(hide_password=True), "contains a password",
             "a URL without one; put the password in ~/.pgpass or PGPASSWORD instead, see the "
             "README")


# The smallest image size each model is checked to take. convnet, cnn4, resnet18 and conv_ae pass
# their own check on the meta device with 2 px images (the stride-2 convs keep returning 1x1 maps;
# conv_ae pads to 16 px), but such an image is a few grey levels: convnet on digits resized to
# that size, 5 epochs, had test accuracy 0.60 at 2 px, 0.94 at 4, 0.97 at 6, 0.975 at 8, 0.978 at
# 9 and at 32. The floor is 8 px, the native size of scikit-learn's digits and the smallest images
# any dataset here ships; at 8 px real pixels still reach every layer of every model, as each
# entry says.
MIN_IMAGE_SIZE = {
    # 4 stride-2 convs (k=3, p=1): 8 -> 4 -> 2 -> 1 -> 1. The fourth takes a 1x1 map, seen by its
    # centre tap only; it does no worse for it (0.975 against 0.978 at 9 px, where it takes 2x2).
    "convnet": 8,
    "cnn4": 8,
    # The stem (7x7/2 conv, 3x3/2 max-pool) and layer2..4: 8 -> 4 -> 2 -> 1 -> 1 -> 1, so layer3
    # and layer4 work on 1x1 maps (layer4 does at CIFAR's 32 px too, by torchvision's design).
    # On digits, 5 epochs: test accuracy 0.93 at 8 px, 0.85 at 16, 0.97 at 32.
    "resnet18": 8,
    # Two 2x2 max-pools: 8 -> 4 -> 2, a 2x2 map into the dense layers.
    "keras_cnn": 8,
    # It pads any size to a multiple of 16 and crops back: at 8 px the encoder sees 8x8 real
    # pixels in 16x16 (at 2 px it would see 4 real pixels of 256).
    "conv_ae": 8,
    # bench.models.gan.gan_stages: one 4x4/2 stage from 8 px to 4 px is its smallest size.
    "dcgan_vgg": 8,
}


def check_residual(model: str, value) -> None:
    """`model.residual` (SkipInit, Fixup: bench/models/resnet.py) only on a model whose config has
    it; on another, a one line error naming the models that have residual blocks."""
    configs = [OmegaConf.load(p) for p in (CONF_DIR / "model").glob("*.yaml")]
    have = sorted(c.name for c in configs if "residual" in c)
    if model not in have:
        fail("model.residual", value, f"is not allowed: model '{model}' has no residual blocks",
             f"a model with residual blocks: {choices(have)}")


def _check_plain_values(cfg: DictConfig) -> None:
    """Top-level values that need nothing but the config (no torch): reported within a second."""
    if "residual" in cfg.model:  # `+model.residual=` on a model without the key
        check_residual(cfg.model.name, cfg.model.residual)
    for key in ("bs", "epochs", "eval_bs", "accum_steps", "bn_eval.precise_samples"):
        require_int(key, OmegaConf.select(cfg, key), lo=1)
    if cfg.bs % cfg.accum_steps:
        divisors = ", ".join(str(d) for d in range(1, cfg.bs + 1) if cfg.bs % d == 0)
        fail("accum_steps", cfg.accum_steps, f"does not divide bs={cfg.bs}",
             f"the divisors of bs, {divisors}")
    require_bool("bn_eval.modes", cfg.bn_eval.modes)
    require_number("lr", cfg.lr, gt=0)  # inf: the first step makes every weight inf or NaN
    # np.random.seed takes 0..2**32 - 1 (numpy's documented range); bench.runtime.seed_everything
    # reduces the seed modulo 2**32 for it, so seed=-1 would silently share numpy's stream with
    # seed=4294967295.
    require_int("seed", cfg.seed, lo=0, hi=2**32 - 1)
    for key in ("channels_last", "amp", "progress"):
        require_choice(key, cfg[key], ("auto", True, False))
    require_bool("resume", cfg.resume)
    require_int("threads", cfg.threads, lo=1, or_words=("auto",))
    check_heartbeat(cfg.db.heartbeat.every_s, cfg.db.heartbeat.stale_after_s)
    ck = cfg.checkpoint  # bench/checkpoint.py, runners/resume.py
    require_int("checkpoint.every", ck.every, lo=0)
    for key in ("keep", "strict", "resume_failed", "retry_diverged"):
        require_bool(f"checkpoint.{key}", ck[key])
    if not isinstance(ck.dir, str) or not ck.dir.strip():
        fail("checkpoint.dir", ck.dir, "is not a folder", "a folder path (relative: to where the "
             "command was started)")
    ds = cfg.dataset
    require_bool("dataset.download", ds.download)
    require_bool("dataset.augment.flip", ds.augment.flip)
    if ds.image_size is not None:
        require_int("dataset.image_size", ds.image_size, lo=1)
    agc, off_or_positive = cfg.agc, "0 (off) or a number > 0"  # bench/agc.py
    if isinstance(agc.clipping, bool) or not isinstance(agc.clipping, numbers.Real):
        fail("agc.clipping", agc.clipping, "is not a number", off_or_positive)
    if not (agc.clipping == 0 or agc.clipping > 0 and math.isfinite(agc.clipping)):  # inf: never clips
        fail("agc.clipping", agc.clipping, "is not allowed", off_or_positive)
    require_number("agc.eps", agc.eps, gt=0)  # 0: a zero-init unit's gradient would be zeroed
    require_bool("agc.skip_last", agc.skip_last)


def _check_images(cfg: DictConfig, channels: int, size: int) -> None:
    """The dataset's pixel statistics and augmentation against its images, and the image size
    against the model (MIN_IMAGE_SIZE)."""
    ds = cfg.dataset
    # (x/255 - mean) / std per channel (bench.data.loader): one entry for all channels or one each;
    # std = 0 divides by 0 (every pixel inf), std < 0 flips the image's sign.
    note = f" for {channels}-channel images"
    require_numbers("dataset.mean", ds.mean, (1, channels), note)
    require_numbers("dataset.std", ds.std, (1, channels), note, gt=0)
    # A shift of `size` or more can move an image out of the frame entirely.
    require_int("dataset.augment.shift", ds.augment.shift, lo=0, hi=size - 1)
    least = MIN_IMAGE_SIZE.get(cfg.model.name, 1)  # an unknown model is build_model's error
    if size < least:
        native = f" ({size} px, the native size of '{ds.name}')" if ds.image_size is None else ""
        fail("dataset.image_size", ds.image_size, f"is too small for model '{cfg.model.name}'{native}",
             f"{least} px or more, the size of the smallest images any dataset here ships")



def _off_or(v, ok) -> bool:
    """v turns a rule off (None or 0), or is a number (not a bool) that passes `ok`."""
    return v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool)
                         and (v == 0 or ok(v)))


def check_diverge(cfg: DictConfig) -> None:
    """`diverge.factor`: auto, a number >= 1, or 0/null (off); `diverge.max_loss`: a positive
    number, or 0/null (off). The rules themselves are `bench.divergence`."""
    factor, max_loss = (OmegaConf.select(cfg, f"diverge.{k}") for k in ("factor", "max_loss"))
    off = "or 0 or null to turn the rule off"
    if factor != "auto" and not _off_or(factor, lambda v: v >= 1):
        fail("diverge.factor", factor, "is not allowed", f"auto, a number >= 1, {off}")
    if not _off_or(max_loss, lambda v: v > 0):
        fail("diverge.max_loss", max_loss, "is not allowed", f"a positive number, {off}")

def _check_ddp_values(cfg: DictConfig) -> None:
    """`ddp` settings that need no torch (runners/replicas.py): the replica count divides bs
    (and each replica's share divides into accum_steps micro-batches)."""
    d = cfg.ddp
    r = require_int("ddp.replicas", d.replicas, lo=1)
    require_choice("ddp.buffers", d.buffers, ("average", "broadcast"))
    require_int("ddp.port", d.port, lo=1, hi=65535, or_words=("auto",))
    require_number("ddp.timeout_s", d.timeout_s, gt=0)
    require_bool("ddp.oversubscribe", d.oversubscribe)
    if cfg.bs % r:
        divisors = ", ".join(str(k) for k in range(1, cfg.bs + 1) if cfg.bs % k == 0)
        fail("ddp.replicas", r, f"does not divide bs={cfg.bs} (the global batch, split evenly "
             f"across replicas)", f"the divisors of bs, {divisors}")
    per = cfg.bs // r
    if r > 1 and per % cfg.accum_steps:
        fail("accum_steps", cfg.accum_steps, f"does not divide the {per} samples per replica "
             f"(bs={cfg.bs} / ddp.replicas={r})",
             f"the divisors of {per}, {', '.join(str(k) for k in range(1, per + 1) if per % k == 0)}")


def _check_ddp_resources(cfg: DictConfig) -> None:
    """Replicas against the task, the machine and the port (torch imported)."""
    r = cfg.ddp.replicas
    if r == 1:
        return
    if cfg.task.name not in ("classify", "autoencode"):
        fail("ddp.replicas", r, f"is not supported by task {cfg.task.name}",
             "1, or task=classify or task=autoencode for more")
    from bench.runtime import pick_device
    from runners.replicas import launched, pick_port

    device = pick_device(cfg.device)
    if launched() is not None:
        pass  # torchrun or SLURM started the replicas, each with its own cores or GPU
    elif device.type == "cuda":
        import torch

        have = torch.cuda.device_count() - (device.index or 0)
        if r > have:
            fail("ddp.replicas", r, f"needs one GPU each: {have} from {device} on", f"1..{have}")
    elif device.type != "cpu":
        fail("ddp.replicas", r, f"is not supported on {device}", "1, or device=cpu or cuda")
    else:
        from bench.launchers import usable_cores

        cores = usable_cores()
        if r > cores and not cfg.ddp.oversubscribe:
            fail("ddp.replicas", r, f"is more than the {cores} CPU cores this process may use "
                 f"(ddp.oversubscribe=true allows it, at a cost)", f"1..{cores}")
    if cfg.ddp.port != "auto":
        pick_port(cfg.ddp.port)


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no training: names, ranges, batch size vs data, the model builds.

    The checks of plain values come first and import nothing heavy, so `bs=0` is reported in
    about a second; torch (~3 s to import) comes in for the checks that need it. A password in
    db.url (from a preset, `db={...}` or an interpolation) is checked first; Hydra has written
    the job's files by then, and `bench.cli.fail` removes them."""
    check_no_password(cfg.db.url)
    check_diverge(cfg)
    _check_plain_values(cfg)
    _check_ddp_values(cfg)

    import torch

    from bench.data import DATASETS, dataset_shape, dataset_train_size
    from bench.data.loader import COMPOSITIONS
    from runners import RUNNERS, TASKS

    for key in ("train", "precise"):
        require_choice(f"batch_composition.{key}", cfg.batch_composition[key], sorted(COMPOSITIONS))
    require_name("task", cfg.task.name, TASKS)
    require_name("dataset", cfg.dataset.name, DATASETS)
    from bench.models import MODEL_TASKS, models_for

    model, task = cfg.model.name, cfg.task.name
    if MODEL_TASKS.get(model, task) != task:  # an unknown model is build_model's error
        raise UserError(f"model '{model}' is a model for task {MODEL_TASKS[model]}, not {task} "
                        f"(allowed with task={task}: {choices(models_for(task))})")
    ds = cfg.dataset
    options = ds.get("options", {})
    channels, size, _ = dataset_shape(ds.name, image_size=ds.image_size, **options)
    _check_images(cfg, channels, size)
    n_train = dataset_train_size(ds.name, train_subset=ds.train_subset, **options)
    if cfg.bs > n_train:
        fail("bs", cfg.bs, f"is larger than the {n_train} training images of '{ds.name}'",
             f"1..{n_train}")
    virtual_bs, micro = OmegaConf.select(cfg, "norm.virtual_bs"), cfg.bs // cfg.accum_steps
    if virtual_bs is not None and require_int("norm.virtual_bs", virtual_bs, lo=1) > micro:
        fail("norm.virtual_bs", virtual_bs,
             f"is larger than bs={micro}{' per micro-batch' if cfg.accum_steps > 1 else ''}",
             f"1..{micro}")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(cfg.db.url)
    except ArgumentError:
        fail("db.url", cfg.db.url, "is not a database URL",
             "an SQLAlchemy URL such as sqlite:///results/bench.db")
    # The task builds its model on the meta device: shapes and layer settings are checked (a
    # group count that does not divide a layer, a norm's or optimizer's setting out of range)
    # without allocating.
    _check_ddp_resources(cfg)
    with torch.device("meta"):
        RUNNERS[cfg.task.name].check(cfg)
