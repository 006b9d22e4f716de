"""The training loop of the single-model tasks (classify, autoencode), written out in one place.

A task brings its `Objective`: the loss of a micro-batch with the statistics to sum over the
epoch, how those sums become the epoch's train metrics, and how a model is scored on test
batches. Everything else (setup, micro-batches, the lr schedule, the three BN evaluations,
timing, what each epoch records) is the same for both tasks and is here.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from bench.bn_eval import score_bn_modes
from bench.checkpoint import Checkpoint
from bench.train import autocast, learning_rate, progress
from runners.config import (
    batches_from_config,
    channels_last,
    model_from_config,
    optimizer_from_config,
    scheduler_from_config,
)


@dataclass(frozen=True)
class Objective:
    # (model output, input images, labels) of a micro-batch -> (mean loss, stats tensor). The
    # stats are summed on the device over the epoch and read once by `train_metrics`: a `.item()`
    # per step would stall a GPU on every step.
    loss: Callable
    # (stats summed over the epoch, training images seen) -> {metric name: value}
    train_metrics: Callable
    # (model, test batches, autocast context) -> {metric name: value}, the model in the mode the
    # caller set, scoring `model(x)[:len(y)]` (a filled-up batch carries extra images)
    score: Callable
    # pixels in [-1, 1] instead of the dataset's mean and std (`batches_from_config`)
    signed: bool = False


def run(cfg: DictConfig, data, device: torch.device, log_epoch, objective: Objective,
        checkpoint: Checkpoint | None = None) -> None:
    """Train cfg's model on `data` for cfg.epochs and call `log_epoch(epoch, metrics)` after each
    epoch with the objective's train metrics plus train/lr (the mean lr of the epoch's steps),
    train/time_s, train/images_per_s, the test metrics (three ways for a model with batch
    statistics: `bench.bn_eval`) and test/time_s. With a loaded checkpoint
    (`log_epoch.checkpoint`, `runners.job`) training continues after its epoch, exactly as if
    never stopped (`bench.checkpoint`)."""
    model = model_from_config(cfg, data.channels, data.num_classes, data.image_size).to(device)
    if channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # data order and augmentation
    train, test = batches_from_config(cfg, data, device, gen, signed=objective.signed)
    opt = optimizer_from_config(cfg, model.parameters())
    sched = scheduler_from_config(cfg, opt, cfg.epochs * len(train))  # None: constant lr
    amp = autocast(device, cfg.amp)
    k = cfg.accum_steps

    def score(m, batches):
        return objective.score(m, batches, amp)

    first = (checkpoint or Checkpoint.off()).attach(
        {"model": model, "optimizer": opt, "sched": sched}, {"data": gen})
    for epoch in range(first, cfg.epochs + 1):
        model.train()
        sums, lr_sum = None, 0.0
        t0 = time.perf_counter()
        for x, y in progress(train, cfg.progress, f"epoch {epoch}/{cfg.epochs}"):
            lr_sum += learning_rate(opt)
            # One optimizer step over the batch taken as k equal micro-batches, so batch-statistics
            # layers only ever see bs / k samples (the GAN post's point about gradient
            # accumulation); the losses are averaged, so without such layers the gradient equals
            # one step over the whole batch (tests/test_train.py).
            opt.zero_grad(set_to_none=True)
            step = None
            for xm, ym in zip(x.chunk(k), y.chunk(k), strict=True):
                with amp:
                    out = model(xm)
                loss, stats = objective.loss(out, xm, ym)
                (loss / k).backward()
                step = stats if step is None else step + stats
            opt.step()
            if sched is not None:  # stepped per iteration, as the Replacing BatchNorm post does
                sched.step()
            sums = step if sums is None else sums + step
        n = len(train) * train.batch_size
        metrics = objective.train_metrics(sums, n)  # the epoch's one host sync
        train_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        tests = score_bn_modes(model, score, train, test, bs=cfg.bs,
                               precise_samples=cfg.bn_eval.precise_samples,
                               precise_composition=cfg.batch_composition.precise, seed=cfg.seed,
                               modes=cfg.bn_eval.modes)
        log_epoch(epoch, {
            **{("train", name): v for name, v in metrics.items()},
            ("train", "lr"): lr_sum / len(train),
            ("train", "time_s"): train_time, ("train", "images_per_s"): n / train_time,
            **{(split, name): v for split, r in tests.items() for name, v in r.items()},
            ("test", "time_s"): time.perf_counter() - t1,
        })
