"""Autoencoding (the autoencoder post): reconstruct the image through an 8w x 1 x 1 latent, MSE loss.

Pixels are in [-1, 1] whatever the dataset's mean/std (the post's loss is defined there), so
`dataset.mean` and `dataset.std` are not used by this task; its augmentation is (cifar10: flips
and shifts, as in the post). Per epoch:

- train/loss = train/mse: mean squared error per pixel, averaged over the epoch's steps in train
  mode (BN uses batch statistics), as the post's "train_loss";
- test/loss = test/mse: the same in eval mode, averaged over every test image (the post averages
  test batch means; the same number when the batches are equal). The post's "test L2 loss";
- train/lr, train/time_s, train/images_per_s, test/time_s (`bench.train.fit`).

`loss` and `mse` hold the same number: `loss` is every task's training objective (and what the
divergence check watches), `mse` names what it is. The post's distance ratio between two norms
is `analysis.distance.distance_ratio` (sqrt(test mse a) / sqrt(test mse b)).
"""

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bench.errors import UserError
from bench.train import check_model, data_shape, fit, training_setup


def check(cfg: DictConfig) -> None:
    channels, size, _ = data_shape(cfg)
    shape = check_model(cfg)
    if shape != (2, channels, size, size):
        raise UserError(f"model '{cfg.model.name}' returns {shape[1:]} for {(channels, size, size)} "
                        f"images: not an autoencoder")


@torch.no_grad()
def evaluate(model, batches, amp) -> dict[str, float]:
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


def run(cfg: DictConfig, data, device: torch.device, log_epoch) -> None:
    model, optim, train, test, amp = training_setup(cfg, data, device, signed=True)

    def forward(x, _labels):
        with amp:
            out = model(x)
        loss = F.mse_loss(out.float(), x)
        return loss, loss.detach() * len(x)  # summed over micro-batches and steps: mse * images

    def train_metrics(total, n):
        mse = total.item() / n
        return {"loss": mse, "mse": mse}

    fit(cfg, model, optim, train, test, forward, train_metrics,
        lambda m, b: evaluate(m, b, amp), log_epoch)
