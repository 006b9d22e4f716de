"""Batches from a dataset that lives on the training device, as in airbench.

The whole split is a uint8 (N, C, H, W) tensor on the device; an epoch is one device `randperm`,
and each batch is an index, a few batched tensor ops for augmentation, and one conversion to
float. No DataLoader, no per-sample Python. Keeping uint8 until the last step costs 1/4 of the
memory of float32 and makes the augmentation copies 4x smaller.
"""

import copy

import torch


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None):
    """Translate each image of (B, C, H, W) by its own integer (dy, dx) in [-max_shift, max_shift].

    Pixels that come in from outside are 0 (black before normalisation), as with torchvision's
    RandomAffine(translate=...) in the autoencoder post's code. Done as one gather from a zero-padded copy.
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    dy, dx = torch.randint(0, 2 * s + 1, (2, b), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device)[None, :] + dy[:, None]  # (B, H) rows to read
    cols = torch.arange(w, device=x.device)[None, :] + dx[:, None]  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dims first: (B, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


# random: a fresh permutation each epoch. homogeneous: the permutation sorted by class (stable, so
# random within a class), rotated by a random offset, cut into batches, and the batches shuffled:
# each batch holds one class, or two where it straddles a class boundary (Wu & Johnson 2021 §4).
COMPOSITIONS = ("random", "homogeneous")


def filled_batches(order: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, int]]:
    """`order` (indices) cut into batches of exactly `batch_size`, each as (indices, k): the
    first k indices are new, and a short last batch is filled up with indices from the start of
    `order`, which are not new. Every index is new in exactly one batch.

    For evaluation with batch statistics: every batch has the size BN saw in training (a last
    batch of 1 image would have no statistics at all), and every sample is scored once.
    With batch_size >= len(order) there is one batch: all of `order`.
    """
    n = len(order)
    if batch_size >= n:
        return [(order, n)]
    out = []
    for lo in range(0, n, batch_size):
        idx = order[lo:lo + batch_size]
        k = len(idx)
        if k < batch_size:
            idx = torch.cat((idx, order[:batch_size - k]))
        out.append((idx, k))
    return out


class DeviceBatches:
    """Iterate (images, labels) batches over uint8 images held on the device.

    images: uint8 (N, C, H, W); labels: int64 (N,), both on the same device.
    Yields float32 images (B, C, H, W) normalised as (x/255 - mean) / std and labels (B,).
    `shuffle` draws a new permutation each epoch from `generator`; `drop_last` drops the final
    short batch (for training: a batch of 1 would break BN, and every step then sees `bs` samples).
    `order` (indices, no shuffle) fixes the order of the samples; `fill_last` fills a short last
    batch up to `batch_size` from the start of the order (`filled_batches`): then a batch may hold
    more images than labels, len(x) >= len(y), and only the first len(y) images are new. The
    others are there for the batch statistics only, and evaluations score `model(x)[:len(y)]`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 mean, std, shuffle: bool = False, drop_last: bool = False, flip: bool = False,
                 shift: int = 0, generator: torch.Generator | None = None,
                 channels_last: bool = False, composition: str = "random",
                 order: torch.Tensor | None = None, fill_last: bool = False):
        if batch_size > len(images):
            raise ValueError(f"batch size {batch_size} > {len(images)} samples")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.drop_last, self.flip, self.shift = shuffle, drop_last, flip, shift
        self.generator, self.channels_last = generator, channels_last
        if composition not in COMPOSITIONS:
            raise ValueError(f"unknown batch composition {composition!r} (allowed: {COMPOSITIONS})")
        self.composition, self.order, self.fill_last = composition, order, fill_last
        c = images.shape[1]
        shape = (1, c, 1, 1)
        mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).expand(c)
        std = torch.as_tensor(std, dtype=torch.float32, device=images.device).expand(c)
        # (x/255 - mean) / std == x * scale + bias: one fused multiply-add per batch (`normalize`).
        self.scale = (1.0 / (255.0 * std)).reshape(shape)
        self.bias = (-mean / std).reshape(shape)

    def replace(self, **changes) -> "DeviceBatches":
        """A copy over the same device tensors with some settings changed (e.g. batch_size,
        generator, drop_last)."""
        new = copy.copy(self)
        for key, value in changes.items():
            if not hasattr(new, key):
                raise AttributeError(f"DeviceBatches has no setting {key!r}")
            setattr(new, key, value)
        if new.batch_size > len(new.images):
            raise ValueError(f"batch size {new.batch_size} > {len(new.images)} samples")
        return new

    def __len__(self) -> int:
        n, bs = len(self.images), self.batch_size
        return n // bs if self.drop_last and not self.fill_last else -(-n // bs)

    def __iter__(self):
        n = len(self.images)
        if self.fill_last:
            order = self.order if self.order is not None else torch.arange(n, device=self.images.device)
            for idx, k in filled_batches(order, self.batch_size):
                yield self._prepare(self.images[idx]), self.labels[idx[:k]]
            return
        batch_order = range(len(self))
        if self.shuffle:
            dev = self.images.device
            order = torch.randperm(n, device=dev, generator=self.generator)
            if self.composition == "homogeneous":
                order = order[torch.argsort(self.labels[order], stable=True)]
                shift = int(torch.randint(n, (1,), device=dev, generator=self.generator))
                order = order.roll(shift)
                batch_order = torch.randperm(len(self), device=dev, generator=self.generator).tolist()
        else:
            order = self.order
        for i in batch_order:
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = self.images[idx], self.labels[idx]
            yield self._prepare(x), y

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) on the device -> float32 (x/255 - mean) / std, no
        augmentation, in x's memory layout."""
        return torch.addcmul(self.bias, x.float(), self.scale)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n distinct images drawn at random (one `randperm` from `generator`), normalised, not
        augmented: (n, C, H, W) float32."""
        idx = torch.randperm(len(self.images), device=self.images.device, generator=generator)[:n]
        return self.normalize(self.images[idx])

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> augmented, normalised float32 in the configured memory layout."""
        if self.flip:
            x = random_flip(x, self.generator)
        if self.shift:
            x = random_shift(x, self.shift, self.generator)
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
