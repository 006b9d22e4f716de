"""How fast is the device-side data path, and when does channels_last pay?

Prints images/s of one epoch of batches with flip + 3 px shift (the autoencoder post's augmentation) from
  - baseline: torch DataLoader over the same uint8 images with per-sample torchvision v2
    transforms (what a script usually does), num_workers=0 and 2;
  - ours: `DeviceBatches` (one gather per batch on the device);
then ms per training step of a model (--model, default the autoencoder post's convnet) in NCHW vs
channels_last at several batch sizes,
which is what `channels_last: auto` (on for bs >= 32) rests on.

    python -m bench.speed.data_path [--n 10000] [--device cpu]
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from bench.data.loader import DeviceBatches
from bench.models import build_model
from bench.norms import make_norm


def images_per_s(batches, n) -> float:
    t0 = time.perf_counter()
    for x, _ in batches:
        x.sum().item()  # make sure the batch is really produced
    return n / (time.perf_counter() - t0)


def loader_baseline(x, y, bs, workers):
    tf = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(0, translate=(3 / 32, 3 / 32)),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)])

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return tf(x[i]), y[i]

    return torch.utils.data.DataLoader(DS(), batch_size=bs, shuffle=True, num_workers=workers,
                                       drop_last=True)


def step_ms(bs, channels_last, device, model_name="convnet", steps=20) -> float:
    model = build_model(model_name, in_channels=3, num_classes=10, image_size=32,
                        norm_layer=make_norm("bn")).to(device)
    x = torch.randn(bs, 3, 32, 32, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    y = torch.randint(0, 10, (bs,), device=device)
    opt = torch.optim.Adam(model.parameters())
    for i in range(steps + 3):
        if i == 3:  # warm-up steps excluded
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss.item()
    return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="images (CIFAR-sized, 3x32x32)")
    p.add_argument("--bs", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="convnet", help="model for the channels_last comparison")
    a = p.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (a.n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (a.n,), generator=g)
    print(f"data path, {a.n} images, bs {a.bs}, flip + 3 px shift, device {dev}, "
          f"{torch.get_num_threads()} threads")
    base = {w: images_per_s(loader_baseline(x, y, a.bs, w), a.n) for w in (0, 2)}
    ours = images_per_s(DeviceBatches(x.to(dev), y.to(dev), a.bs, mean=[0.5], std=[0.5],
                                      shuffle=True, drop_last=True, flip=True, shift=3), a.n)
    for w, v in base.items():
        print(f"  DataLoader + per-sample v2 transforms, {w} workers: {v:10.0f} images/s")
    print(f"  DeviceBatches:                                      {ours:10.0f} images/s "
          f"({ours / max(base.values()):.1f}x the best baseline)")
    print(f"training step of {a.model} (BN), ms: NCHW / channels_last")
    for bs in (2, 8, 32, 128, 512):
        a_ms, b_ms = step_ms(bs, False, dev, a.model), step_ms(bs, True, dev, a.model)
        print(f"  bs {bs:4d}: {a_ms:8.2f} / {b_ms:8.2f}  (channels_last {a_ms / b_ms:.2f}x)")


if __name__ == "__main__":
    main()
