"""The autoencoder post's model ("When Batch Normalization Hurts Performance", `autoencoder.py`).

Encoder: four blocks `Conv2d(k=4, s=2, p=1) -> norm -> ReLU*sqrt(2)`, channels in-w-2w-4w-4w (w=64
gives the post's 64-128-256-256), then a conv whose kernel covers what is left of the image (2x2 at
32 px, as in the post) to an 8w x 1 x 1 latent, with no norm or activation. Decoder, the mirror
image with transposed convs: `ConvTranspose2d(8w, 8w, k=that size)` then 8w-4w-2w-w with k=4, s=2,
p=1, each followed by norm -> ReLU*sqrt(2), and a last `ConvTranspose2d(w, in, k=4, s=2, p=1)` with
no norm or activation (outputs are pixels in [-1, 1], unbounded). Weights randn / sqrt(fan_in),
zero biases, as the post's own layers. 6,037,635 parameters at w=64 for 3 channels without norm
(the post's "about 6.0 M"); BN adds 2 x 1,664 affine parameters.

Image sizes: the four stride-2 stages need a multiple of 16. Any other size is zero-padded (0 is
mid-grey in the [-1, 1] range) to the next multiple and the output cropped back, so MNIST's 28 px
runs through exactly the post's 32 px network and the loss only ever sees real pixels. 96 px
(Imagenette) ends the encoder at 6x6, so its latent conv is 6x6 (about 4.7 M more parameters
there and in the first decoder layer); the latent stays 8w x 1 x 1 at every size.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.convnet import ScaledReLU, randn_fan_in_init_

STAGES = 4  # stride-2 blocks in the encoder (and in the decoder)


def padded_size(image_size: int) -> int:
    """The size the network runs at: image_size rounded up to a multiple of 2**STAGES."""
    step = 2**STAGES
    return -(-image_size // step) * step


class ConvAE(nn.Module):
    """(B, C, S, S) images -> (B, C, S, S) reconstructions; `encode` gives the (B, 8w, 1, 1) latent."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, norm_layer,
                 width: int = 64):
        super().__init__()  # num_classes: the registry's common signature; unused here
        self.image_size = image_size
        size = padded_size(image_size)
        total = size - image_size
        self.pad = (total // 2, total - total // 2)
        head = size // 2**STAGES  # what is left after the encoder: 2 at 32 px, 6 at 96 px
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        latent = 8 * width
        enc: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            enc += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), norm_layer(c_out), ScaledReLU()]
        enc.append(nn.Conv2d(chans[-1], latent, head))
        # The post's decoder is 512-512-256-128-64-3: not an exact mirror, its first layer keeps
        # the latent's 8w channels where the encoder's last block has 4w.
        dec_chans = [latent, latent, 4 * width, 2 * width, width]
        dec: list[nn.Module] = [nn.ConvTranspose2d(latent, latent, head), norm_layer(latent), ScaledReLU()]
        for c_in, c_out in zip(dec_chans[1:], dec_chans[2:], strict=False):
            dec += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), norm_layer(c_out),
                    ScaledReLU()]
        dec.append(nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        randn_fan_in_init_(self)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"conv_ae was built for {self.image_size} px images, got "
                             f"{tuple(x.shape[-2:])}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        lo, hi = self.pad
        return self.encoder(F.pad(x, (lo, hi, lo, hi)) if hi else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encode(x))
        lo, hi = self.pad
        return out[..., lo:lo + self.image_size, lo:lo + self.image_size] if hi else out
