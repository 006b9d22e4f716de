"""Classification: cross-entropy, Adam/RAdam/SGD with the `sched` lr schedule, metrics per epoch.

Per epoch: train loss and accuracy (averaged over the epoch's steps, in train mode, so BN uses
batch statistics), test loss and accuracy (eval mode, averaged over test images; three ways for
models with batch statistics), and what `bench.train.fit` adds: train/lr, train time, images per
second.
"""

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bench.train import check_model, fit, training_setup


def check(cfg: DictConfig) -> None:
    check_model(cfg)


@torch.no_grad()
def evaluate(model, batches, amp) -> dict[str, float]:
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
    loss, correct = sums.tolist()
    return {"loss": loss / n, "acc": correct / n}


def run(cfg: DictConfig, data, device: torch.device, log_epoch) -> None:
    model, optim, train, test, amp = training_setup(cfg, data, device)

    def forward(x, y):
        with amp:
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        return loss, torch.stack((loss.detach() * len(y), (out.detach().argmax(1) == y).sum()))

    def train_metrics(sums, n):
        loss_sum, correct = sums.tolist()
        return {"loss": loss_sum / n, "acc": correct / n}

    fit(cfg, model, optim, train, test, forward, train_metrics,
        lambda m, b: evaluate(m, b, amp), log_epoch)
