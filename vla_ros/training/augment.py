"""
OpenVLA-OFT's training-time image augmentation (``vla_finetune --image-aug``), in torch.

OFT trains on its RLDS pipeline's augmentation of the 224 x 224 resized frame (dlimp's
``augment_image`` with OFT's ``image_augment_kwargs``), in this order, each camera image on its
own, with fresh randomness every time a sample is drawn:

1. ``random_resized_crop``, scale [0.9, 0.9], ratio [1, 1]: a square of 0.9 of the area at a
   random position, resized back to 224 x 224 (TF ``crop_and_resize``: bilinear at
   ``y1 (H - 1) + i (y2 - y1) (H - 1) / (H - 1)``, as the inference crop
   ``center_crop_and_resize``, whose centred box is one of these);
2. ``random_brightness`` 0.2: ``x + d``, d uniform in [-0.2, 0.2];
3. ``random_contrast`` [0.8, 1.2]: ``(x - mean) f + mean``, the mean per channel over the image;
4. ``random_saturation`` [0.8, 1.2]: HSV saturation times f, clipped to [0, 1];
5. ``random_hue`` 0.05: HSV hue plus d in [-0.05, 0.05], wrapped.

On float32 in [0, 1], clipped to [0, 1] after each step, and back to uint8 at the end as TF's
``convert_image_dtype`` does (x 255.5, truncated), as dlimp does. Saturation and hue share one
HSV round trip (the same values, one conversion fewer). One difference from dlimp: its crop
draws the two offsets from one seed, so its crops slide along the diagonal; here the row and
column offsets are independent.

The randomness of a draw comes from ``(seed, epoch, index)`` alone (``rng``): a run is
reproducible, and a resumed run augments each sample as the uninterrupted run would.
"""

import math

import numpy as np
import torch

CROP_SCALE = 0.9  # area of the square crop, as the inference center crop
BRIGHTNESS = 0.2
CONTRAST = (0.8, 1.2)
SATURATION = (0.8, 1.2)
HUE = 0.05


def rng(seed, epoch, index):
    """Return the generator of sample ``index``'s draw in ``epoch`` of a run seeded ``seed``."""
    return np.random.default_rng((int(seed) % 2 ** 64, int(epoch), int(index)))


def crop_grid(offsets, size):
    """
    Return ``grid_sample``'s grid (N, size, size, 2) of square boxes of side sqrt(0.9).

    ``offsets`` (N, 2): the boxes' top and left in [0, 1 - side] of the normalised image. The
    points are TF ``crop_and_resize``'s, ``y1 (H - 1) + i (y2 - y1) (H - 1) / (H - 1)`` pixels,
    in ``align_corners=True`` units (-1 and 1 at the first and last pixel).
    """
    steps = torch.arange(size, dtype=torch.float32) * math.sqrt(CROP_SCALE)  # (size,)
    points = (offsets[:, :, None] * (size - 1) + steps) * (2 / (size - 1)) - 1  # (N, 2, size)
    rows, columns = points[:, 0, :, None], points[:, 1, None, :]
    return torch.stack(torch.broadcast_tensors(columns, rows), dim=-1)  # (x, y) per pixel


def rgb_to_hsv(r, g, b):
    """Return (h, s, v) of RGB planes in [0, 1]: hue in [0, 1), as TF's ``rgb_to_hsv``."""
    value = torch.maximum(torch.maximum(r, g), b)
    spread = value - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    hue = torch.where(value == r, (g - b) / safe,
                      torch.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(spread > 0, hue / 6, torch.zeros_like(hue)).remainder_(1.0)
    saturation = torch.where(value > 0, spread / torch.where(value > 0, value,
                                                             torch.ones_like(value)), value)
    return hue, saturation, value


def hsv_to_rgb(hue, saturation, value):
    """Return (N, 3, H, W) RGB from hue in [0, 1), saturation and value planes in [0, 1]."""
    sixths = hue * 6
    k = torch.stack([(5 + sixths) % 6, (3 + sixths) % 6, (1 + sixths) % 6], 1)  # (N, 3, H, W)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)  # each channel's share of the chroma
    return value[:, None] - (value * saturation)[:, None] * ramp


def augment(frames, generator):
    """
    Return ``frames`` (N, H, W, 3) uint8 augmented as OFT trains: uint8, the same shape.

    Each frame draws its own crop and colour factors from ``generator`` (see ``rng``).
    """
    count, size = frames.shape[:2]  # square frames: 224 x 224
    draws = torch.from_numpy(generator.random((count, 6))).float()  # (N, 6) in [0, 1)
    x = frames.permute(0, 3, 1, 2).float().div_(255)  # (N, 3, H, W)
    offsets = draws[:, :2] * (1 - math.sqrt(CROP_SCALE))
    x = torch.nn.functional.grid_sample(x, crop_grid(offsets, size), mode='bilinear',
                                        padding_mode='border', align_corners=True)
    brightness = (draws[:, 2] * 2 - 1) * BRIGHTNESS
    x = x.add_(brightness.view(-1, 1, 1, 1)).clamp_(0, 1)
    contrast = CONTRAST[0] + draws[:, 3] * (CONTRAST[1] - CONTRAST[0])
    mean = x.mean(dim=(2, 3), keepdim=True)  # (N, 3, 1, 1)
    x = x.sub_(mean).mul_(contrast.view(-1, 1, 1, 1)).add_(mean).clamp_(0, 1)
    hue, saturation, value = rgb_to_hsv(*x.unbind(1))
    factor = SATURATION[0] + draws[:, 4] * (SATURATION[1] - SATURATION[0])
    saturation = saturation.mul_(factor.view(-1, 1, 1)).clamp_(0, 1)
    hue = hue.add_(((draws[:, 5] * 2 - 1) * HUE).view(-1, 1, 1)).remainder_(1.0)
    x = hsv_to_rgb(hue, saturation, value).clamp_(0, 1)
    # convert_image_dtype's saturating cast: x 255.5, truncated
    return x.mul_(255.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # (N, H, W, 3)
