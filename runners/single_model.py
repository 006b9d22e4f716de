"""The training loop of the single-model tasks (classify, autoencode), written out in one place.

A task brings its `Objective`: the loss of a micro-batch with the statistics to sum over the
epoch, how those sums become the epoch's train metrics, and how a model is scored on test
batches. Everything else (setup, micro-batches, the lr schedule, the three BN evaluations,
timing, what each epoch records) is the same for both tasks and is here, and so is what changes
when `ddp.replicas` processes train one run together (`runners.replicas` starts them; the pieces
are `bench.ddp`): each replica trains on its share of every global batch through
DistributedDataParallel, the epoch's train sums are added over the replicas, BN buffers are
reconciled (`ddp.buffers`), and rank 0 alone evaluates, as one process would with the same weights
and buffers, and logs.
"""

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from bench import ddp
from bench.bn_eval import score_bn_modes
from bench.checkpoint import Checkpoint
from bench.ddp import Replica
from bench.norm_zoo.sync_bn import local_statistics
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
    """`train` in this process, or as `ddp.replicas` processes (`runners.replicas`)."""
    if cfg.ddp.replicas > 1:
        from runners.replicas import run_replicated

        run_replicated(cfg, data, device, log_epoch, checkpoint)
    else:
        train(cfg, data, device, log_epoch, objective, checkpoint)


def train(cfg: DictConfig, data, device: torch.device, log_epoch, objective: Objective,
          checkpoint: Checkpoint | None = None, replica: Replica | None = None) -> None:
    """Train cfg's model on `data` for cfg.epochs and call `log_epoch(epoch, metrics)` after each
    epoch with the objective's train metrics plus train/lr (the mean lr of the epoch's steps),
    train/time_s, train/images_per_s, the test metrics (three ways for a model with batch
    statistics: `bench.bn_eval`) and test/time_s. With a loaded checkpoint
    (`log_epoch.checkpoint`, `runners.job`) training continues after its epoch, exactly as if
    never stopped (`bench.checkpoint`).

    With `replica` (rank and world size of a data-parallel run; the process group joined), this
    process is one of the run's replicas: rank 0 passes its `log_epoch` and `checkpoint`, the
    others None. Their train metrics add train/comm_s (`bench.ddp.COMM`)."""
    model = model_from_config(cfg, data.channels, data.num_classes, data.image_size).to(device)
    if channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # data order and augmentation
    train, test = batches_from_config(cfg, data, device, gen, signed=objective.signed)
    opt = optimizer_from_config(cfg, model)
    sched = scheduler_from_config(cfg, opt, cfg.epochs * len(train))  # None: constant lr
    amp = autocast(device, cfg.amp)
    k = cfg.accum_steps

    def score(m, batches):
        return objective.score(m, batches, amp)

    first = (checkpoint or Checkpoint.off()).attach(
        {"model": model, "optimizer": opt, "sched": sched}, {"data": gen})
    net = model  # what trains; evaluation uses `model` itself
    if replica is not None:
        first = ddp.share_state(replica, first, opt, sched, gen)
        net = ddp.wrap(model, cfg.ddp.buffers, device)
    for epoch in range(first, cfg.epochs + 1):
        model.train()
        sums, lr_sum = None, 0.0
        t0 = time.perf_counter()
        if replica is not None:
            ddp.COMM.take()
        for x, y in progress(train, cfg.progress if log_epoch else False,
                             f"epoch {epoch}/{cfg.epochs}"):
            if replica is not None:  # this replica's share of the global batch
                x, y = ddp.share(x, replica), ddp.share(y, replica)
            lr_sum += learning_rate(opt)
            # One optimizer step over the batch taken as k equal micro-batches, so batch-statistics
            # layers only ever see bs / k samples (the GAN post's point about gradient
            # accumulation); the losses are averaged, so without such layers the gradient equals
            # one step over the whole batch (tests/test_train.py).
            opt.zero_grad(set_to_none=True)
            step = None
            for i, (xm, ym) in enumerate(zip(x.chunk(k), y.chunk(k), strict=True)):
                # DDP all-reduces the gradients at the last micro-batch's backward only
                with net.no_sync() if net is not model and i < k - 1 else nullcontext():
                    with amp:
                        out = net(xm)
                    loss, stats = objective.loss(out, xm, ym)
                    (loss / k).backward()
                step = stats if step is None else step + stats
            opt.step()
            if sched is not None:  # stepped per iteration, as the Replacing BatchNorm post does
                sched.step()
            sums = step if sums is None else sums + step
        n = len(train) * train.batch_size  # the global batch's images: every replica's
        extra = {}
        if replica is not None:
            sums = ddp.add_up(sums)
            extra[("train", "comm_s")] = ddp.COMM.take()
            ddp.reconcile_buffers(model, cfg.ddp.buffers, replica.world)
        metrics = objective.train_metrics(sums, n)  # the epoch's one host sync
        train_time = time.perf_counter() - t0
        if replica is not None and not replica.leader:
            if not ddp.carry_on(device):  # rank 0 evaluates and logs meanwhile
                return
            continue
        t1 = time.perf_counter()
        with local_statistics(model) if replica is not None else nullcontext():
            tests = score_bn_modes(model, score, train, test, bs=cfg.bs,
                                   precise_samples=cfg.bn_eval.precise_samples,
                                   precise_composition=cfg.batch_composition.precise,
                                   seed=cfg.seed, modes=cfg.bn_eval.modes)
        record = {
            **{("train", name): v for name, v in metrics.items()},
            ("train", "lr"): lr_sum / len(train),
            ("train", "time_s"): train_time, ("train", "images_per_s"): n / train_time,
            **extra,
            **{(split, name): v for split, r in tests.items() for name, v in r.items()},
            ("test", "time_s"): time.perf_counter() - t1,
        }
        if replica is None:
            log_epoch(epoch, record)
        else:  # the others wait for rank 0's word: go on, or stop (diverged, failed, last epoch)
            with ddp.leading(device):
                log_epoch(epoch, record)
