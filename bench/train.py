"""Pieces every runner's training loop shares: model and optimizer from the config, batches on
the device, mixed precision, progress display."""

import sys
import time
from contextlib import nullcontext

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bench.bn_eval import evaluate_three_ways
from bench.data import dataset_shape, load_dataset
from bench.data.loader import DeviceBatches
from bench.errors import UserError
from bench.models import build_model
from bench.norms import make_norm
from bench.optim import build_optimizer
from bench.sched import build_scheduler, check_scheduler


def settings(node: DictConfig) -> dict:
    """A config group's settings as plain keyword arguments (its `name` removed)."""
    d = OmegaConf.to_container(node, resolve=True)
    d.pop("name", None)
    return d


def model_from_config(cfg: DictConfig, in_channels: int, num_classes: int, image_size: int):
    norm_layer = make_norm(cfg.norm.name, **settings(cfg.norm))
    return build_model(cfg.model.name, in_channels=in_channels, num_classes=num_classes,
                       image_size=image_size, norm_layer=norm_layer, **settings(cfg.model))


def data_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(channels, image size, classes) of cfg's dataset, without loading it."""
    ds = cfg.dataset
    return dataset_shape(ds.name, image_size=ds.image_size, **ds.get("options", {}))


def check_forward(cfg: DictConfig, size: int, forward, what: str = ""):
    """Run `forward()` (a model on meta tensors: shapes only, no compute); a shape error is the
    user's: the model and norm (`what`: more settings) cannot take images of this size."""
    try:
        return forward()
    except (ValueError, RuntimeError) as e:
        raise UserError(
            f"model '{cfg.model.name}' with norm '{cfg.norm.name}'{what} cannot take {size} px "
            f"images ({' '.join(str(e).split())})"
        ) from None


def meta_safe(model: torch.nn.Module) -> torch.nn.Module:
    """`model` (built on the meta device) made fit for a shapes-only forward pass: a norm with
    momentum None (a cumulative average) divides by its batch counter as a Python number, which a
    meta tensor cannot give (`Tensor.item()`), so the throw-away copy uses a fixed momentum."""
    for m in model.modules():
        if getattr(m, "momentum", 0.1) is None:
            m.momentum = 0.1
    return model


def check_model(cfg: DictConfig) -> tuple[int, ...]:
    """The checks of a single-model task (classify, autoencode), on the meta device: the model
    builds and takes the dataset's images, the optimizer and the lr schedule accept their
    settings. Returns the shape of the model's output for a batch of 2."""
    channels, size, classes = data_shape(cfg)
    model = meta_safe(model_from_config(cfg, channels, classes, size))
    out = check_forward(cfg, size, lambda: model(torch.empty(2, channels, size, size)))
    optimizer_from_config(cfg, model.parameters())
    check_scheduler(cfg.sched.name, **settings(cfg.sched))
    return tuple(out.shape)


def data_from_config(cfg: DictConfig):
    """The job's dataset (`bench.data.load_dataset`), with its subsets, as cfg.dataset says."""
    ds = cfg.dataset
    return load_dataset(ds.name, cfg.data_root, download=ds.download, image_size=ds.image_size,
                        train_subset=ds.train_subset, test_subset=ds.test_subset,
                        **ds.get("options", {}))


def training_setup(cfg: DictConfig, data, device: torch.device, signed: bool = False):
    """(model, step, train batches, test batches, autocast context) for a single-model task;
    `step` is the optimizer with its lr schedule (an `Optimization`)."""
    model = model_from_config(cfg, data.channels, data.num_classes, data.image_size).to(device)
    if use_channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    train, test = batches(cfg, data, device, gen, signed=signed)
    opt = optimizer_from_config(cfg, model.parameters())
    sched = build_scheduler(cfg.sched.name, opt, cfg.epochs * len(train), **settings(cfg.sched))
    return model, Optimization(opt, sched, cfg.accum_steps), train, test, autocast(cfg, device)


def optimizer_from_config(cfg: DictConfig, params) -> torch.optim.Optimizer:
    return build_optimizer(cfg.optim.name, params, cfg.lr, **settings(cfg.optim))


def use_channels_last(cfg: DictConfig) -> bool:
    # `python -m bench.speed.data_path --model M` on a 2-core CPU (torch 2.14), channels_last vs
    # NCHW per training step: convnet 1.09x at bs 2 .. 1.51x at bs 512; cnn4 1.09-1.16x at every
    # bs; resnet18 0.77x at bs 2, 0.90x at 32, 1.07x at 128, 1.21x at 512. An earlier measurement here
    # (4-layer CNN, 32 px, 2 threads) had channels_last 1.5x slower at bs 2 (6.1 vs 4.1 ms).
    # bs >= 32 keeps the big losses away and most of the gains.
    return cfg.bs >= 32 if cfg.channels_last == "auto" else bool(cfg.channels_last)


def autocast(cfg: DictConfig, device: torch.device):
    """bf16 autocast where asked; 'auto' only on CUDA so CPU results stay float32."""
    on = device.type == "cuda" if cfg.amp == "auto" else bool(cfg.amp)
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else nullcontext()


def batches(cfg: DictConfig, data, device: torch.device, generator: torch.Generator, *,
            signed: bool = False):
    """(train, test) batch iterators over the dataset moved once to `device`.

    Pixels go through the dataset's mean and std, or to [-1, 1] with `signed` (the autoencoder's
    loss and the generator's tanh are defined in that range, whatever the dataset's statistics).
    """
    ds, cl = cfg.dataset, use_channels_last(cfg)
    mean, std = ([0.5], [0.5]) if signed else (list(ds.mean), list(ds.std))
    norm = {"mean": mean, "std": std, "channels_last": cl}
    train = DeviceBatches(data.train_x.to(device), data.train_y.to(device), cfg.bs, shuffle=True,
                          drop_last=True, flip=ds.augment.flip, shift=ds.augment.shift,
                          generator=generator, composition=cfg.batch_composition.train, **norm)
    test_bs = min(cfg.eval_bs, len(data.test_y))
    test = DeviceBatches(data.test_x.to(device), data.test_y.to(device), test_bs, **norm)
    return train, test


def progress(iterable, cfg: DictConfig, desc: str):
    """A progress bar on a terminal (progress=auto), nothing in logs and CI."""
    enabled = sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress)
    return tqdm(iterable, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


class Optimization:
    """The optimizer, its lr schedule (None: constant) and the accumulation of micro-batches."""

    def __init__(self, opt: torch.optim.Optimizer, sched, accum_steps: int = 1):
        self.opt, self.sched, self.accum_steps = opt, sched, accum_steps

    @property
    def lr(self) -> float:
        """The learning rate the next step will use (of the first parameter group)."""
        return self.opt.param_groups[0]["lr"]

    def step(self, x: torch.Tensor, y: torch.Tensor, forward) -> torch.Tensor:
        """One optimizer step over the batch (x, y) taken as `accum_steps` equal micro-batches, so
        batch-statistics layers only ever see bs / accum_steps samples (the GAN post's point
        about gradient accumulation), then one step of the lr schedule (stepped per iteration, as
        the Replacing BatchNorm post does). forward(x_micro, y_micro) -> (mean loss, stats tensor);
        the losses are averaged, so without such layers the gradient equals one step over the whole
        batch.
        Returns the stats summed over the micro-batches."""
        self.opt.zero_grad(set_to_none=True)
        total = None
        for xm, ym in zip(x.chunk(self.accum_steps), y.chunk(self.accum_steps), strict=True):
            loss, stats = forward(xm, ym)
            (loss / self.accum_steps).backward()
            total = stats if total is None else total + stats
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        return total


def fit(cfg: DictConfig, model: torch.nn.Module, optim: Optimization, train, test, forward,
        train_metrics, evaluate, log_epoch) -> None:
    """The epoch loop of a single-model task (classify, autoencode).

    Each epoch: one `optim.step` per training batch with `forward`, whose stats tensors are summed
    on the device and read once (a `.item()` per step would stall a GPU on every step); then
    `train_metrics(sums, n_images)` -> {name: value} for split train, the test metrics of
    `evaluate(model, batches)` three ways (`bench.bn_eval`), and `log_epoch` with them plus
    train/lr (the mean lr of the epoch's steps), train/time_s, train/images_per_s, test/time_s.
    """
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        sums, lr_sum = None, 0.0
        t0 = time.perf_counter()
        for x, y in progress(train, cfg, f"epoch {epoch}/{cfg.epochs}"):
            lr_sum += optim.lr
            stats = optim.step(x, y, forward)
            sums = stats if sums is None else sums + stats
        n = len(train) * train.batch_size
        metrics = train_metrics(sums, n)  # the epoch's one host sync
        train_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        tests = evaluate_three_ways(cfg, model, evaluate, train, test)
        log_epoch(epoch, {
            **{("train", k): v for k, v in metrics.items()},
            ("train", "lr"): lr_sum / len(train),
            ("train", "time_s"): train_time, ("train", "images_per_s"): n / train_time,
            **{(split, k): v for split, r in tests.items() for k, v in r.items()},
            ("test", "time_s"): time.perf_counter() - t1,
        })
