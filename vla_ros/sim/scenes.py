"""
Seeded synthetic camera images: a colour gradient, a few boxes, optional sensor noise.

One generator for every synthetic image in the package: ``camera_stream`` publishes them,
``vla_tiny_model`` calibrates its miniature checkpoint on them, the benchmarks time them and the
tests rebuild them to know what a node received. numpy only (no MuJoCo).
"""

import numpy as np


def scene(index, width=640, height=480, seed=0, noise=0.0):
    """
    Return synthetic scene ``index`` of series ``seed`` as (height, width, 3) uint8 RGB.

    The same arguments always give the same image. ``noise`` is the standard deviation of the
    Gaussian pixel noise (camera-like texture), in intensity levels.
    """
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    mix = (xx / max(width - 1, 1) + yy / max(height - 1, 1))[..., None] / 2  # (H, W, 1)
    start, stop = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = (start * (1 - mix) + stop * mix).astype(np.float32)  # (H, W, 3)
    for _ in range(int(rng.integers(2, 6))):
        w = int(rng.integers(max(width // 8, 1), max(width // 2, 2)))
        h = int(rng.integers(max(height // 8, 1), max(height // 2, 2)))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        image[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
    if noise:
        image += rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
