"""Autoencoding (the autoencoder post): reconstruct the image through an 8w x 1 x 1 latent, MSE loss.

Pixels are in [-1, 1] whatever the dataset's mean/std (the post's loss is defined there), so
`dataset.mean` and `dataset.std` are not used by this task; its augmentation is (cifar10: flips
and shifts, as in the post). Per epoch:

- train/loss = train/mse: mean squared error per pixel, averaged over the epoch's steps in train
  mode (BN uses batch statistics), as the post's "train_loss";
- test/loss = test/mse: the same in eval mode, averaged over every test image (the post averages
  test batch means; the same number when the batches are equal). The post's "test L2 loss";
- train/lr, train/time_s, train/images_per_s, test/time_s (`runners.single_model.run`).

`loss` and `mse` hold the same number: `loss` is every task's training objective (and what the
divergence check watches), `mse` names what it is. The post's distance ratio between two norms
is `analysis.distance.distance_ratio` (sqrt(test mse a) / sqrt(test mse b)).
"""

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bench.errors import UserError
from runners import single_model
from runners.config import check_model, data_shape


def check(cfg: DictConfig) -> None:
    channels, size, _ = data_shape(cfg)
    shape = check_model(cfg)
    if shape != (2, channels, size, size):
        raise UserError(f"model '{cfg.model.name}' returns {shape[1:]} for {(channels, size, size)} "
                        f"images: not an autoencoder")


def prepare(cfg: DictConfig, data, device: torch.device) -> None:
    """Nothing to make before the run's row is written."""


def loss(out: torch.Tensor, x: torch.Tensor, _y: torch.Tensor):
    """MSE of the reconstruction `out` against the input x; stats: mse summed over images."""
    mse = F.mse_loss(out.float(), x)
    return mse, mse.detach() * len(x)


def train_metrics(total: torch.Tensor, n: int) -> dict[str, float]:
    mse = total.item() / n
    return {"loss": mse, "mse": mse}


@torch.no_grad()
def reconstruction_error(model, batches, amp) -> dict[str, float]:
    """Mean squared error per pixel over every image `batches` yields, with the model in the
    mode the caller set (`loss` and `mse` are the same number)."""
    total = torch.zeros((), device=batches.images.device)
    n = 0
    for x, y in batches:
        with amp:
            out = model(x)[:len(y)]  # a filled-up batch carries extra images (DeviceBatches)
        x = x[:len(y)]
        total += F.mse_loss(out.float(), x, reduction="sum")
        n += x.numel()
    mse = total.item() / n
    return {"loss": mse, "mse": mse}


OBJECTIVE = single_model.Objective(loss=loss, train_metrics=train_metrics,
                                   score=reconstruction_error, signed=True)


def run(cfg: DictConfig, data, device: torch.device, log_epoch, checkpoint=None) -> None:
    single_model.run(cfg, data, device, log_epoch, OBJECTIVE, checkpoint)
