"""
glibc's malloc while the bags are read: compact, then back to its own sizes for training.

glibc raises its mmap threshold after each large free (up to 32 MB), so once the first decoded
camera frame (640 x 480, 0.9 MB) is freed, the next ones come from the heap, between the 150 kB
frames that training keeps, and the heap cannot give that memory back: reading 40 correction
bags (0.46 GB of kept frames) grew the process by 1.54 GB, and issue 21's round 3 (1008 bags)
passed the machine's 24 GB before it had read them all. ``compact_reading`` fixes the threshold
at 256 kB while the bags are read (0.57 GB for the same 40 bags; ``bench.finetune_memory``
measures it). A fixed small threshold makes every larger tensor of a training step a fresh
``mmap`` whose pages fault in again (a training step took 0.76 s instead of 0.43 s), so after
reading the threshold goes to glibc's own ceiling and the trim threshold to twice that, where
the dynamic rule would have taken them.
"""

import contextlib
import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
READING_THRESHOLD = 256 * 1024
TRAINING_THRESHOLD = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def mallopt(parameter, value):
    """Call glibc's ``mallopt``; return whether it took (False off glibc)."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    return bool(libc.mallopt(parameter, int(value)))


@contextlib.contextmanager
def compact_reading():
    """Read the bags with a fixed 256 kB mmap threshold; then leave training roomy ones."""
    mallopt(M_MMAP_THRESHOLD, READING_THRESHOLD)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, TRAINING_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, 2 * TRAINING_THRESHOLD)
