"""The GAN pair `dcgan_vgg`: a DCGAN generator and the GAN post's VGG-style discriminator.

Both are scaled to the image size by the number of stride-2 stages, `gan_stages`: the size is
halved while it stays even and at least 4, at most 5 times (the GAN post's 128 px discriminator has
five), and what is left must be at most 8 px: 28 -> 2 stages to 7 px, 32 -> 3 to 4, 64 -> 4 to
4, 96 -> 4 to 6, 128 -> 5 to 4. Other sizes (30, 33, 512, ...) are a ValueError.

Discriminator (`Discriminator_VGG_128` of the post author's code, BasicSR/ESRGAN): a 3x3 conv without
norm, then per stage a pair (3x3 stride-1 conv, 4x4 stride-2 conv), each followed by norm and
LeakyReLU(0.2) (stage 0 has only the 4x4 conv after the first one), channels nf, 2nf, 4nf, 8nf,
8nf; head Flatten -> Linear(c*s*s, 100) -> LeakyReLU(0.2) -> Linear(100, 1). PyTorch's default
init, as in that code.

Generator (Radford et al. 2016, DCGAN): z (B, latent_dim) -> ConvTranspose2d(k=s) to s x s, then
stride-2 ConvTranspose2d(k=4, p=1) stages halving the channels down to ngf, each followed by
norm and ReLU, and a last stride-2 ConvTranspose2d to the image channels with tanh (pixels in
[-1, 1]). At 64 px this is DCGAN's 100 -> 512x4x4 -> 256x8x8 -> 128x16x16 -> 64x32x32 -> 3x64x64.
DCGAN's init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0.

In both, a conv has a bias only where no norm follows it (a norm's mean subtraction removes a
bias; the post author's code uses bias=False there).
"""

import torch
from torch import nn

MAX_STAGES = 5
MAX_LEFT = 8


def gan_stages(image_size: int) -> tuple[int, int]:
    """(stride-2 stages, size left after them) for square images of `image_size` px."""
    n, s = 0, image_size
    while n < MAX_STAGES and s % 2 == 0 and s // 2 >= 4:
        n, s = n + 1, s // 2
    if n == 0 or s > MAX_LEFT:
        raise ValueError(
            f"the GAN's stride-2 stages cannot bring {image_size} px down to {MAX_LEFT} px or less "
            f"(sizes s*2^n with 4 <= s <= {MAX_LEFT} and 1 <= n <= {MAX_STAGES} work: 28, 32, "
            f"64, 96, 128, ...)")
    return n, s


def stage_channels(base: int, stages: int) -> list[int]:
    """base, 2 base, 4 base, 8 base, 8 base, ...: the GAN post's channels, one entry per stage."""
    return [base * min(2**i, 8) for i in range(stages)]


def _conv(c_in, c_out, k, s, p, norm_layer, transposed=False) -> list[nn.Module]:
    norm = norm_layer(c_out)
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = cls(c_in, c_out, k, stride=s, padding=p, bias=isinstance(norm, nn.Identity))
    act = nn.ReLU() if transposed else nn.LeakyReLU(0.2)
    return [conv, norm, act]


class Discriminator(nn.Module):
    """(B, C, S, S) images -> (B,) logits (real > 0)."""

    def __init__(self, in_channels: int, image_size: int, norm_layer, nf: int = 64):
        super().__init__()
        n, s = gan_stages(image_size)
        chans = stage_channels(nf, n)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, nf, 3, padding=1), nn.LeakyReLU(0.2)]
        c_prev = nf
        for i, c in enumerate(chans):
            if i > 0:
                layers += _conv(c_prev, c, 3, 1, 1, norm_layer)
            layers += _conv(c, c, 4, 2, 1, norm_layer)
            c_prev = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_prev * s * s, 100), nn.LeakyReLU(0.2),
                                  nn.Linear(100, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


class Generator(nn.Module):
    """(B, latent_dim) noise -> (B, C, S, S) images in [-1, 1]."""

    def __init__(self, out_channels: int, image_size: int, norm_layer, ngf: int = 64,
                 latent_dim: int = 100):
        super().__init__()
        self.latent_dim = latent_dim
        n, s = gan_stages(image_size)
        chans = stage_channels(ngf, n)[::-1]  # 32 px: 4ngf, 2ngf, ngf
        layers = _conv(latent_dim, chans[0], s, 1, 0, norm_layer, transposed=True)
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            layers += _conv(c_in, c_out, 4, 2, 1, norm_layer, transposed=True)
        layers += [nn.ConvTranspose2d(chans[-1], out_channels, 4, stride=2, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif getattr(m, "weight", None) is not None:  # affine norms
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])

    def noise(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(n, latent_dim) standard normal noise, drawn from `generator`."""
        return torch.randn(n, self.latent_dim, generator=generator, device=device)


class GAN(nn.Module):
    """The pair as one model of the registry: `generator` and `discriminator`.

    `forward(images)` is the discriminator's (B,) logits, so the pair can be checked like any
    model. `norm_layer` is the discriminator's norm (the `norm` axis); `gen_norm_layer` the
    generator's (None: the same as the discriminator's).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, norm_layer,
                 gen_norm_layer=None, nf: int = 64, ngf: int = 64, latent_dim: int = 100):
        super().__init__()  # num_classes: the registry's common signature; unused here
        self.generator = Generator(in_channels, image_size, gen_norm_layer or norm_layer, ngf,
                                   latent_dim)
        self.discriminator = Discriminator(in_channels, image_size, norm_layer, nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x)
