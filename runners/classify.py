"""Classification: cross-entropy, Adam/RAdam/SGD at a fixed lr, metrics per epoch.

Per epoch: train loss and accuracy (averaged over the epoch's steps, in train mode, so BN uses
batch statistics), test loss and accuracy (eval mode, averaged over test images), train time,
images per second. Sums stay on the device and are read once per epoch: a `.item()` per step
would stall a GPU on every step.
"""

import logging
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bench.bn_eval import evaluate_three_ways
from bench.train import (
    accumulated_step,
    check_forward,
    data_shape,
    model_from_config,
    optimizer_from_config,
    progress,
    training_setup,
)

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    channels, size, classes = data_shape(cfg)
    model = model_from_config(cfg, channels, classes, size)
    check_forward(cfg, size, lambda: model(torch.empty(2, channels, size, size)))
    optimizer_from_config(cfg, model.parameters())


@torch.no_grad()
def evaluate(model, batches, amp) -> dict[str, float]:
    """Mean cross-entropy and accuracy over every image `batches` yields (not a mean of batch
    means), with the model in the mode the caller set."""
    sums = torch.zeros(2, device=batches.images.device)
    n = 0
    for x, y in batches:
        with amp:
            out = model(x)
        sums += torch.stack((F.cross_entropy(out.float(), y, reduction="sum"),
                             (out.argmax(1) == y).sum().float()))
        n += len(y)
    loss, correct = sums.tolist()
    return {"loss": loss / n, "acc": correct / n}


def run(cfg: DictConfig, data, device: torch.device, log_epoch) -> None:
    model, opt, train, test, amp = training_setup(cfg, data, device)

    def forward(x, y):
        with amp:
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        return loss, torch.stack((loss.detach() * len(y), (out.detach().argmax(1) == y).sum()))

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        sums = torch.zeros(2, device=device)  # loss * n, correct
        t0 = time.perf_counter()
        for x, y in progress(train, cfg, f"epoch {epoch}/{cfg.epochs}"):
            sums += accumulated_step(opt, x, y, cfg.accum_steps, forward)
        loss_sum, correct = sums.tolist()  # the one host sync of the epoch
        train_time = time.perf_counter() - t0
        n = len(train) * train.batch_size
        t1 = time.perf_counter()
        tests = evaluate_three_ways(cfg, model, lambda m, b: evaluate(m, b, amp), train, test)
        log_epoch(epoch, {
            ("train", "loss"): loss_sum / n, ("train", "acc"): correct / n,
            ("train", "time_s"): train_time, ("train", "images_per_s"): n / train_time,
            **{(split, k): v for split, r in tests.items() for k, v in r.items()},
            ("test", "time_s"): time.perf_counter() - t1,
        })
