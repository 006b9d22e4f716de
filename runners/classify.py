"""Classification: cross-entropy, Adam/RAdam/SGD with the `sched` lr schedule, metrics per epoch.

Per epoch: train loss and accuracy (averaged over the epoch's steps, in train mode, so BN uses
batch statistics), test loss and accuracy (eval mode, averaged over test images; three ways for
models with batch statistics), and what `runners.single_model.run` adds: train/lr, train time,
images per second.
"""

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from runners import single_model
from runners.config import check_model


def check(cfg: DictConfig) -> None:
    check_model(cfg)


def prepare(cfg: DictConfig, data, device: torch.device) -> None:
    """Nothing to make before the run's row is written."""


def loss(out: torch.Tensor, _x: torch.Tensor, y: torch.Tensor):
    """Cross-entropy of logits `out` (B, classes); stats: (summed loss, correct predictions)."""
    ce = F.cross_entropy(out.float(), y)
    return ce, torch.stack((ce.detach() * len(y), (out.detach().argmax(1) == y).sum()))


def train_metrics(sums: torch.Tensor, n: int) -> dict[str, float]:
    loss_sum, correct = sums.tolist()
    return {"loss": loss_sum / n, "acc": correct / n}


@torch.no_grad()
def loss_and_accuracy(model, batches, amp) -> dict[str, float]:
    """Mean cross-entropy and accuracy over every image `batches` yields (not a mean of batch
    means), with the model in the mode the caller set."""
    sums = torch.zeros(2, device=batches.images.device)
    n = 0
    for x, y in batches:
        with amp:
            out = model(x)[:len(y)]  # a filled-up batch carries extra images (DeviceBatches)
        sums += torch.stack((F.cross_entropy(out.float(), y, reduction="sum"),
                             (out.argmax(1) == y).sum().float()))
        n += len(y)
    loss_sum, correct = sums.tolist()
    return {"loss": loss_sum / n, "acc": correct / n}


OBJECTIVE = single_model.Objective(loss=loss, train_metrics=train_metrics, score=loss_and_accuracy)


def run(cfg: DictConfig, data, device: torch.device, log_epoch, checkpoint=None) -> None:
    single_model.run(cfg, data, device, log_epoch, OBJECTIVE, checkpoint)
