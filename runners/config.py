"""From a job's config to the building blocks: the one place the runners turn `cfg` groups into
the plain arguments of `bench.data`, `bench.models`, `bench.norms`, `bench.optim`, `bench.sched`.
"""

import torch
from omegaconf import DictConfig, OmegaConf

from bench.agc import clip_before_step, clipped_params
from bench.data import dataset_shape, load_dataset
from bench.data.loader import DeviceBatches
from bench.errors import UserError, one_line
from bench.models import build_model
from bench.norms import make_norm
from bench.optim import build_optimizer
from bench.sched import build_scheduler, check_scheduler
from bench.train import meta_safe, use_channels_last


def group_kwargs(node: DictConfig) -> dict:
    """A config group (norm, model, optim, sched) as the keyword arguments of its builder: every
    key but `name`."""
    d = OmegaConf.to_container(node, resolve=True)
    d.pop("name", None)
    return d


def data_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(channels, image size, classes) of cfg's dataset, without loading it."""
    ds = cfg.dataset
    return dataset_shape(ds.name, image_size=ds.image_size, **ds.get("options", {}))


def load_data(cfg: DictConfig):
    """The job's dataset (`bench.data.load_dataset`), with its subsets, as cfg.dataset says."""
    ds = cfg.dataset
    return load_dataset(ds.name, cfg.data_root, download=ds.download, image_size=ds.image_size,
                        train_subset=ds.train_subset, test_subset=ds.test_subset,
                        **ds.get("options", {}))


def model_from_config(cfg: DictConfig, in_channels: int, num_classes: int, image_size: int):
    norm_layer = make_norm(cfg.norm.name, **group_kwargs(cfg.norm))
    return build_model(cfg.model.name, in_channels=in_channels, num_classes=num_classes,
                       image_size=image_size, norm_layer=norm_layer, **group_kwargs(cfg.model))


def optimizer_from_config(cfg: DictConfig, model: torch.nn.Module, lr: float | None = None,
                          **changes) -> torch.optim.Optimizer:
    """`optim` over `model`'s parameters at `lr` (default cfg.lr), with `changes` to its settings;
    with agc.clipping > 0 each step clips the gradients first (`bench.agc`)."""
    opt = build_optimizer(cfg.optim.name, model.parameters(), cfg.lr if lr is None else lr,
                          **{**group_kwargs(cfg.optim), **changes})
    if cfg.agc.clipping:
        clip_before_step(opt, clipped_params(model, cfg.agc.skip_last), cfg.agc.clipping, cfg.agc.eps)
    return opt


def scheduler_from_config(cfg: DictConfig, opt: torch.optim.Optimizer, total_steps: int):
    """`sched` over `total_steps` optimizer steps (None: constant)."""
    return build_scheduler(cfg.sched.name, opt, total_steps, **group_kwargs(cfg.sched))


def channels_last(cfg: DictConfig) -> bool:
    return use_channels_last(cfg.bs, cfg.channels_last)


def batches_from_config(cfg: DictConfig, data, device: torch.device, generator: torch.Generator,
                        *, signed: bool = False) -> tuple[DeviceBatches, DeviceBatches]:
    """(train, test) batch iterators over the dataset moved once to `device`.

    Pixels go through the dataset's mean and std, or to [-1, 1] with `signed` (the autoencoder's
    loss and the generator's tanh are defined in that range, whatever the dataset's statistics).
    """
    ds = cfg.dataset
    mean, std = ([0.5], [0.5]) if signed else (list(ds.mean), list(ds.std))
    norm = {"mean": mean, "std": std, "channels_last": channels_last(cfg)}
    train = DeviceBatches(data.train_x.to(device), data.train_y.to(device), cfg.bs, shuffle=True,
                          drop_last=True, flip=ds.augment.flip, shift=ds.augment.shift,
                          generator=generator, composition=cfg.batch_composition.train, **norm)
    test_bs = min(cfg.eval_bs, len(data.test_y))
    test = DeviceBatches(data.test_x.to(device), data.test_y.to(device), test_bs, **norm)
    return train, test


def check_forward(cfg: DictConfig, size: int, forward, what: str = ""):
    """Run `forward()` (a model on meta tensors: shapes only, no compute); a shape error is the
    user's: the model and norm (`what`: more settings) cannot take images of this size."""
    try:
        return forward()
    except (ValueError, RuntimeError) as e:
        raise UserError(f"model '{cfg.model.name}' with norm '{cfg.norm.name}'{what} cannot take "
                        f"{size} px images ({one_line(e, with_type=False)})") from None


def check_model(cfg: DictConfig) -> tuple[int, ...]:
    """The checks of a single-model task (classify, autoencode), on the meta device: the model
    builds and takes the dataset's images, the optimizer and the lr schedule accept their
    settings. Returns the shape of the model's output for a batch of 2."""
    channels, size, classes = data_shape(cfg)
    model = meta_safe(model_from_config(cfg, channels, classes, size))
    out = check_forward(cfg, size, lambda: model(torch.empty(2, channels, size, size)))
    _check_one_sample(cfg, model, channels, size)
    optimizer_from_config(cfg, model)
    check_scheduler(cfg.sched.name, **group_kwargs(cfg.sched))
    return tuple(out.shape)


def stats_batch(cfg: DictConfig) -> int:
    """The samples a batch-statistics layer normalizes over in training: bs per micro-batch
    (accum_steps) and per replica (ddp.replicas), except `sync_bn`, whose statistics are over
    every replica's share (with one replica, plain BN over bs / accum_steps)."""
    per = cfg.bs // cfg.accum_steps
    return per if cfg.norm.name == "sync_bn" else per // cfg.ddp.replicas


def _check_one_sample(cfg: DictConfig, model, channels: int, size: int) -> None:
    """A batch-statistics layer given 1 sample fails where the model's feature map is 1x1 (one
    value per channel: no variance). Caught on the meta device, before any work."""
    if stats_batch(cfg) != 1:
        return
    try:
        model(torch.empty(1, channels, size, size))
    except ValueError as e:
        if "value per channel" not in str(e):
            raise
        r, k = cfg.ddp.replicas, cfg.accum_steps
        where = " per replica" if r > 1 else ""
        where += " per micro-batch" if k > 1 else ""
        alone = " (sync_bn with one replica is plain BN)" if cfg.norm.name == "sync_bn" else ""
        sync = ", or norm=sync_bn (statistics over all replicas)" if r > 1 else ""
        raise UserError(f"bs={cfg.bs} leaves norm '{cfg.norm.name}'{alone} 1 sample{where}, and "
                        f"model '{cfg.model.name}' has 1x1 feature maps at {size} px: batch "
                        f"statistics need 2 values per channel (allowed: bs >= {2 * r * k}{sync})"
                        ) from None
