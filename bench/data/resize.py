"""Resizing uint8 images once at load time: bilinear with antialias, computed in float.

Antialias matters when shrinking (Imagenette 160 px -> 96 px): without it bilinear samples only
a 2x2 neighbourhood and aliases fine texture.
"""

import torch
import torch.nn.functional as F

# Images per interpolate call: bounds the float32 copy (4096 x 3 x 96 x 96 x 4 B = 450 MB at most
# for the sizes the project uses) while keeping the per-call overhead negligible.
CHUNK = 4096


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8; returned as is when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty((*x.shape[:2], size, size), dtype=torch.uint8)
    for i in range(0, len(x), CHUNK):
        y = F.interpolate(x[i:i + CHUNK].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out[i:i + CHUNK] = _to_uint8(y)
    return out


def resize_and_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) uint8 of any shape -> (C, size, size) uint8.

    Resizes the shorter side to `size` (keeping the aspect ratio), then takes the central square:
    the usual ImageNet evaluation transform, so no image is stretched.
    """
    h, w = image.shape[-2:]
    # Rounding as torchvision's resize(int) and center_crop do, so they can serve as a reference.
    short, long = min(h, w), max(h, w)
    new_long = max(size, int(size * long / short))
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    if (new_h, new_w) != (h, w):
        y = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear",
                          antialias=True, align_corners=False)[0]
        image = _to_uint8(y)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return image[:, top:top + size, left:left + size]
