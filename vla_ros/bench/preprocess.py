"""
OpenVLA-OFT's TF-exact image preprocessing: ms per frame on one CPU thread.

    python -m vla_ros.bench.preprocess [--n 50] [--width 640] [--height 480] [--device cpu]

Times ``tf_resize`` (JPEG round trip, then lanczos3 to 224 x 224) on noisy simulated frames,
broken down into the JPEG encode and decode and the resize. ``main`` returns the figures
(ms p50/p95 by part) so that other benchmarks can report them.
"""

import argparse
import time

import numpy as np
import torch

from vla_ros.policy.oft import processing as oft_processing
from vla_ros.sim.scenes import scene

PARTS = ('encode', 'decode', 'resize', 'total')


def measure(n=50, width=640, height=480, device=None):
    """Return {part: (p50, p95)} in ms per frame, one torch thread, the resize on ``device``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cuda = device is not None and torch.device(device).type == 'cuda'
    try:
        times = {part: [] for part in PARTS}
        for i in range(n + 3):  # the first 3 warm the caches
            frame = np.ascontiguousarray(scene(i, width, height, noise=8))
            t0 = time.perf_counter()
            data = oft_processing.jpeg_encode(frame)
            t1 = time.perf_counter()
            decoded = oft_processing.jpeg_decode(data)
            t2 = time.perf_counter()
            oft_processing.lanczos3_resize(decoded, device=device)  # ends with a copy to host
            if cuda:
                torch.cuda.synchronize(device)
            t3 = time.perf_counter()
            if i >= 3:
                for part, ms in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    times[part].append(ms * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {part: tuple(float(np.percentile(v, q)) for q in (50, 95))
            for part, v in times.items()}


def main(argv=None):
    """Print and return the preprocessing figures (ms per frame, p50/p95 by part)."""
    parser = argparse.ArgumentParser(prog='python -m vla_ros.bench.preprocess',
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n', type=int, default=50)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--device', default=None, help='where the resize runs (default: CPU)')
    args = parser.parse_args(argv)
    figures = measure(args.n, args.width, args.height, args.device)
    cells = ', '.join(f'{part} {p50:.2f}/{p95:.2f}' for part, (p50, p95) in figures.items())
    print(f'OFT preprocessing, {args.width}x{args.height} -> 224x224, one thread, resize on '
          f"{args.device or 'cpu'}, ms p50/p95 per frame: {cells}")
    return figures


if __name__ == '__main__':
    main()
