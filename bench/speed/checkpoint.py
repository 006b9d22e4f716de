"""What does a checkpoint cost, per epoch, next to the epoch's training?

For each model at its usual batch size (the presets' bs: 128 for the classifiers and the
autoencoder, 64 for the GAN), with BN and Adam as in the runs: ms per training step (measured
over a few steps, warm-up excluded), the epoch that makes (`--n` training images, CIFAR-10's
50,000 by default, at that batch size), and the checkpoint `bench.checkpoint.Checkpoint.save`
writes at the end of it (model, optimizer, every buffer, RNG states; fsync included): its size
on disk, its time, and that time as a share of the epoch.

    python -m bench.speed.checkpoint [--n 50000] [--steps 10] [--device cpu] [--dir /tmp]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.checkpoint import Checkpoint
from bench.models import build_model
from bench.norms import make_norm

# model -> (task, batch size, channels, image size): the presets' datasets and batch sizes.
MODELS = {"convnet": ("classify", 128, 3, 32), "cnn4": ("classify", 128, 3, 32),
          "resnet18": ("classify", 128, 3, 32), "keras_cnn": ("classify", 128, 1, 28),
          "conv_ae": ("autoencode", 128, 3, 32), "dcgan_vgg": ("gan", 64, 3, 32)}


def trainer(name: str, device):
    """(parts to checkpoint, one training step) of model `name` as its task trains it."""
    task, bs, c, size = MODELS[name]
    gen_norm = {"gen_norm_layer": make_norm("bn")} if task == "gan" else {}
    model = build_model(name, in_channels=c, num_classes=0 if task != "classify" else 10,
                        image_size=size, norm_layer=make_norm("bn"), **gen_norm).to(device)
    x = torch.randn(bs, c, size, size, device=device)
    y = torch.randint(0, 10, (bs,), device=device)
    if task == "gan":
        G, D = model.generator, model.discriminator
        opt_d, opt_g = torch.optim.Adam(D.parameters()), torch.optim.Adam(G.parameters())

        def step():
            fake = G(G.noise(bs, None, device))
            d_loss = F.softplus(-D(x)).mean() + F.softplus(D(fake.detach())).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = F.softplus(-D(fake)).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
        return {"gan": model, "opt_d": opt_d, "opt_g": opt_g}, step
    opt = torch.optim.Adam(model.parameters())

    def step():
        out = model(x)
        loss = F.cross_entropy(out, y) if task == "classify" else F.mse_loss(out, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"model": model, "optimizer": opt}, step


def seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000, help="training images per epoch")
    p.add_argument("--steps", type=int, default=10, help="training steps timed per model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temp dir)")
    p.add_argument("--models", default=",".join(MODELS))
    a = p.parse_args()
    dev = torch.device(a.device)
    print(f"checkpoint cost, {a.n} images per epoch, device {dev}, {torch.get_num_threads()} threads")
    print(f"{'model':10} {'bs':>4} {'step ms':>8} {'epoch s':>8} {'ckpt MB':>8} {'save ms':>8} {'share':>7}")
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for name in a.models.split(","):
            parts, step = trainer(name, dev)
            sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
            step_s = seconds(lambda: (step(), sync()), a.steps)  # noqa: B023 (called right here)
            epoch_s = step_s * (a.n // MODELS[name][1])
            ck = Checkpoint(Path(tmp) / name / "run.pt", "0" * 64)
            ck.attach(parts, {"data": torch.Generator().manual_seed(0)})
            save_s = seconds(lambda: ck.save(1), 5, warmup=1)  # noqa: B023 (called right here)
            mb = ck.path.stat().st_size / 2**20
            print(f"{name:10} {MODELS[name][1]:>4} {step_s * 1e3:8.1f} {epoch_s:8.1f} {mb:8.2f} "
                  f"{save_s * 1e3:8.1f} {save_s / epoch_s:7.3%}")


if __name__ == "__main__":
    main()
