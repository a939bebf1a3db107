"""
Time the image conversions the policy node runs on every camera frame.

Run ``python -m vla_ros.bench.conversions``. Messages are built once; each conversion is then
timed ``--iterations`` times after ``--warmup`` untimed calls with ``time.perf_counter``, and its
p50 / p95 in milliseconds are printed. The goal for a raw Image -> RGB conversion is a p50 of at
most 0.3 ms.
"""

import argparse
import platform
import time

import cv2
import numpy as np

from vla_ros.control.images import compressed_to_rgb, image_to_rgb
from vla_ros.nodes.messages import rgb_to_compressed, rgb_to_image
from vla_ros.sim.scenes import scene

SIZES = ((640, 480), (1280, 720))
GOAL_MS = 0.3


def timed(fn, iterations, warmup):
    """Return (p50, p95) in milliseconds of ``fn()`` over ``iterations`` calls."""
    for _ in range(warmup):
        fn()
    samples = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - start
    p50, p95 = np.percentile(samples * 1e3, [50, 95])
    return p50, p95


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--iterations', type=int, default=300)
    parser.add_argument('--warmup', type=int, default=30)
    args = parser.parse_args(argv)

    print(f'vla_ros.bench.conversions: {platform.processor() or platform.machine()}, '
          f'OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), numpy {np.__version__}, '
          f'{args.iterations} iterations after {args.warmup} warm-up calls')
    print(f'{"operation":<44} {"size":>9} {"p50 ms":>8} {"p95 ms":>8}')
    rows, misses = [], []
    for width, height in SIZES:
        rgb = scene(0, width, height, noise=3)
        size = f'{width}x{height}'
        for encoding in ('rgb8', 'bgr8', 'rgba8', 'mono8'):
            source = rgb[..., 0] if encoding == 'mono8' else rgb
            msg = rgb_to_image(source, encoding)
            label = f'image_to_rgb {encoding}'
            if encoding == 'rgb8':
                label += ' (zero-copy view)'
            p50, p95 = timed(lambda m=msg: image_to_rgb(m), args.iterations, args.warmup)
            rows.append((label, size, p50, p95))
            if encoding in ('rgb8', 'bgr8') and p50 > GOAL_MS:
                misses.append(f'{label} {size}')
            if encoding == 'rgb8':
                p50, p95 = timed(lambda m=msg: image_to_rgb(m, copy=True), args.iterations,
                                 args.warmup)
                rows.append(('image_to_rgb rgb8 copy=True', size, p50, p95))
        for encoding in ('rgb8', 'bgr8'):
            p50, p95 = timed(lambda e=encoding: rgb_to_image(rgb, e), args.iterations, args.warmup)
            rows.append((f'rgb_to_image {encoding} (build the message)', size, p50, p95))
        jpeg = rgb_to_compressed(rgb, 'jpeg', quality=90)
        p50, p95 = timed(lambda m=jpeg: compressed_to_rgb(m), args.iterations, args.warmup)
        rows.append((f'compressed_to_rgb jpeg q90 ({len(jpeg.data) // 1024} KiB)', size, p50,
                     p95))
    for label, size, p50, p95 in rows:
        print(f'{label:<44} {size:>9} {p50:8.3f} {p95:8.3f}')
    if misses:
        print(f'goal p50 <= {GOAL_MS} ms for raw rgb8/bgr8 Image -> RGB: MISSED by '
              + ', '.join(misses))
    else:
        print(f'goal p50 <= {GOAL_MS} ms for raw rgb8/bgr8 Image -> RGB: met')


if __name__ == '__main__':
    main()
