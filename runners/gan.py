"""GANs (the GAN post): the `norm` axis sets the discriminator's norm, `task.gen_norm` the generator's.

Training: non-saturating loss (Goodfellow et al. 2014): D minimises softplus(-D(x)) +
softplus(D(G(z))), G minimises softplus(-D(G(z))); one D step then one G step per batch of `bs`
real images and `bs` fakes, the fakes generated once per step. Adam-family optimizers take
`task.betas` (default (0.5, 0.999), DCGAN's) in place of `optim.betas`; D's lr is `lr`, G's is
`task.g_lr` (null: `lr`). `task.d_batches` is how D sees a step:
- separate: real and fake in two forward passes (the post's setup; BN normalises each kind
  with its own batch statistics, so a batch's score can carry "this batch is fake");
- mixed: one forward pass over the concatenated batch, in the D step and in the G step.

Pixels are in [-1, 1] (the generator's tanh), whatever the dataset's mean/std.

Per epoch (`bench.metrics` has the definitions):
- train/d_loss, train/g_loss, train/d_acc_real, train/d_acc_fake: means over the epoch's steps,
  in train mode, as D saw them (acc: share of real scored > 0, of fake scored < 0);
- train/d_uniformity (and _real, _fake): batch uniformity of D's logits over
  `task.uniformity_batches` batches of `bs` training images and as many of fresh fakes, each
  batch of one kind, D and G in train mode (as in training; their BN buffers restored after);
- test/cfid, test/ckid, test/cis: classifier-feature scores (NOT Inception FID/KID/IS) of
  `task.eval_samples` fakes (G in eval mode, the same noise every epoch) against as many test
  images; test/d_acc_real, test/d_acc_fake: D in eval mode on those two sets;
- train/time_s, train/images_per_s (real images), test/time_s;
- for G or D with batch-statistics layers, the test metrics again as splits test_precise
  (PreciseBN statistics in both networks, G's over noise and D's over real and fake training
  batches) and test_batchstats (both in train mode, batches of bs): `runners.gan_eval.bn_splits`.
Epoch 0 holds references: test/cis_real (the test images' own cis) and test/classifier_acc.
The last grid of `task.grid` fakes is `samples.png` in the run's output directory, recorded
in the database as the run's 'samples' artifact.
"""

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision.utils import save_image

from bench.checkpoint import Checkpoint
from bench.checks import require_int, require_name, require_number, require_numbers
from bench.errors import UserError
from bench.models import build_model
from bench.norms import NORMS, make_norm
from bench.train import autocast, meta_safe, progress
from runners.config import (
    batches_from_config,
    channels_last,
    check_forward,
    data_shape,
    group_kwargs,
    optimizer_from_config,
)
from runners.gan_eval import bn_splits, fakes_and_d_accuracy, uniformity
from runners.gan_features import check as check_features
from runners.gan_features import feature_classifier

D_BATCHES = ("separate", "mixed")


def gan_from_config(cfg: DictConfig, channels: int, size: int):
    return build_model(cfg.model.name, in_channels=channels, num_classes=0, image_size=size,
                       norm_layer=make_norm(cfg.norm.name, **group_kwargs(cfg.norm)),
                       gen_norm_layer=make_norm(cfg.task.gen_norm), **group_kwargs(cfg.model))


def optimizers(cfg: DictConfig, gan):
    """(D's optimizer, G's optimizer): `optim` with `task.betas` and `task.g_lr` applied."""
    changes = {}
    if cfg.task.betas is not None:
        if "betas" not in cfg.optim:
            raise UserError(f"task.betas is set but optim '{cfg.optim.name}' has no betas "
                            f"(set task.betas=null, or optim=adam or radam)")
        changes["betas"] = list(cfg.task.betas)
    g_lr = cfg.lr if cfg.task.g_lr is None else cfg.task.g_lr
    return (optimizer_from_config(cfg, gan.discriminator, **changes),
            optimizer_from_config(cfg, gan.generator, g_lr, **changes))


def _check_task(t: DictConfig) -> None:
    require_name("task.gen_norm", t.gen_norm, NORMS)
    require_name("task.d_batches", t.d_batches, D_BATCHES)
    for key, least in (("eval_samples", 2), ("uniformity_batches", 2), ("kid_subsets", 1),
                       ("kid_subset_size", 2), ("grid", 1)):
        require_int(f"task.{key}", t[key], lo=least)
    require_number("task.g_lr", t.g_lr, gt=0, null="lr (the discriminator's)")
    if t.betas is not None:  # Adam's beta1, beta2 in [0, 1), as bench.optim checks optim.betas
        require_numbers("task.betas", t.betas, (2,), ge=0, lt=1)


def check(cfg: DictConfig) -> None:
    # One D step and one G step per batch, at fixed learning rates (the GAN post's setup).
    if cfg.accum_steps != 1:
        raise UserError(f"accum_steps={cfg.accum_steps} is not supported by task gan (allowed: 1)")
    if cfg.sched.name != "constant":
        raise UserError(f"sched '{cfg.sched.name}' is not supported by task gan (allowed: constant)")
    _check_task(cfg.task)
    channels, size, classes = data_shape(cfg)

    def forward():  # meta tensors: shapes only, no compute
        gan = meta_safe(gan_from_config(cfg, channels, size))
        fake = gan.generator(gan.generator.noise(2))
        if tuple(fake.shape) != (2, channels, size, size):
            raise ValueError(f"the generator makes {tuple(fake.shape[1:])} images")
        gan(fake)
        return gan

    gan = check_forward(cfg, size, forward, f" and task.gen_norm '{cfg.task.gen_norm}'")
    optimizers(cfg, gan)
    check_features(cfg, channels, size, classes)


def prepare(cfg: DictConfig, data, device: torch.device) -> None:
    """Train (or find) the metrics' classifier before the run's row is written (once per sweep:
    each job then finds it cached)."""
    feature_classifier(cfg, data, device)


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (a test calling run directly)
        return Path.cwd()


def d_logits(D, real: torch.Tensor, fake: torch.Tensor, mixed: bool):
    """D's (real, fake) logits: one forward pass over both (mixed) or one each (separate)."""
    if mixed:
        out = D(torch.cat((real, fake)))
        return out[:len(real)], out[len(real):]
    return D(real), D(fake)


def run(cfg: DictConfig, data, device: torch.device, log_epoch,
        checkpoint: Checkpoint | None = None) -> None:
    # Imported here: torchmetrics takes ~3 s to import, which every other job would pay.
    from bench.metrics.classifier_scores import ClassifierScores

    t = cfg.task
    gan = gan_from_config(cfg, data.channels, data.image_size).to(device)
    if channels_last(cfg):
        gan = gan.to(memory_format=torch.channels_last)
    G, D, mixed = gan.generator, gan.discriminator, t.d_batches == "mixed"
    opt_d, opt_g = optimizers(cfg, gan)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    # Everything the metrics draw comes from a stream of their own: the training's numbers do
    # not depend on the metric settings.
    ev = torch.Generator(device=device).manual_seed(cfg.seed + 2**32)
    train, test = batches_from_config(cfg, data, device, gen, signed=True)
    amp = autocast(device, cfg.amp)
    classifier, classifier_acc = feature_classifier(cfg, data, device)
    n_real = min(t.eval_samples, len(data.test_y))
    real = test.normalize(test.images[:n_real])
    scorer = ClassifierScores(classifier, real, n_fake=t.eval_samples, kid_subsets=t.kid_subsets,
                              kid_subset_size=t.kid_subset_size, batch_size=cfg.eval_bs)
    z_eval = G.noise(t.eval_samples, ev, device)
    grid_path = _output_dir() / "samples.png"
    # After everything drawn at setup (z_eval): a resumed run restores the states of the end of
    # its checkpoint's epoch over these fresh ones (`bench.checkpoint`).
    first = (checkpoint or Checkpoint.off()).attach(
        {"gan": gan, "opt_d": opt_d, "opt_g": opt_g}, {"data": gen, "eval": ev})
    if first == 1:  # a resumed run wrote epoch 0 in its first attempt
        log_epoch(0, {("test", "cis_real"): scorer.real_cis,
                      ("test", "classifier_acc"): classifier_acc})
    for epoch in range(first, cfg.epochs + 1):
        G.train()
        D.train()
        sums = torch.zeros(4, device=device)  # d_loss, g_loss, d_acc_real, d_acc_fake
        t0 = time.perf_counter()
        for x, _ in progress(train, cfg.progress, f"epoch {epoch}/{cfg.epochs}"):
            with amp:
                fake = G(G.noise(len(x), gen, device))
                real_logit, fake_logit = d_logits(D, x, fake.detach(), mixed)
            real_logit, fake_logit = real_logit.float(), fake_logit.float()
            d_loss = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            D.requires_grad_(False)  # G's step needs no gradient for D's weights
            with amp:
                g_logit = d_logits(D, x, fake, mixed)[1] if mixed else D(fake)
            g_loss = F.softplus(-g_logit.float()).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            D.requires_grad_(True)
            sums += torch.stack((d_loss.detach(), g_loss.detach(), (real_logit > 0).float().mean(),
                                 (fake_logit < 0).float().mean()))
        d_loss_mean, g_loss_mean, acc_real, acc_fake = (sums / len(train)).tolist()
        train_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics = {("train", "d_loss"): d_loss_mean, ("train", "g_loss"): g_loss_mean,
                   ("train", "d_acc_real"): acc_real, ("train", "d_acc_fake"): acc_fake,
                   ("train", "time_s"): train_time,
                   ("train", "images_per_s"): len(train) * train.batch_size / train_time}
        if not all(math.isfinite(v) for v in (d_loss_mean, g_loss_mean)):
            log_epoch(epoch, metrics)  # raises Diverged: no metrics of a broken model
        metrics.update({("train", k): v for k, v in uniformity(
            G, D, train, t.uniformity_batches, ev, amp).items()})
        fakes, found = fakes_and_d_accuracy(G, D, z_eval, real, cfg.eval_bs, amp)
        metrics.update({("test", k): v for k, v in found.items()})
        metrics.update({("test", k): v for k, v in scorer.scores(fakes, seed=cfg.seed + epoch).items()})
        splits = bn_splits(G, D, z_eval, real, train, amp, bs=cfg.bs, eval_bs=cfg.eval_bs,
                           precise_samples=cfg.bn_eval.precise_samples, seed=cfg.seed,
                           mixed=mixed, modes=cfg.bn_eval.modes)
        for split, (split_fakes, split_found) in splits.items():
            metrics.update({(split, k): v for k, v in split_found.items()})
            metrics.update({(split, k): v for k, v in
                            scorer.scores(split_fakes, seed=cfg.seed + epoch).items()})
        save_image(fakes[:t.grid] * 0.5 + 0.5, grid_path, nrow=math.ceil(math.sqrt(t.grid)))
        metrics[("test", "time_s")] = time.perf_counter() - t1
        log_epoch(epoch, metrics, artifacts={"samples": str(grid_path)})
