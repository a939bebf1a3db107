"""
vla_finetune's memory while it reads the bags: the frames it keeps against what the process grows.

    python -m vla_ros.bench.finetune_memory BAG ... --base PATH [vla_finetune's data flags]

Each of two child processes reads the training bags as ``vla_finetune`` does (its parser, its
checks, ``finetune.read_data``), one with glibc's mmap threshold as glibc leaves it and one
fixed as ``vla_finetune`` fixes it while reading (``training.memory``), and prints the bytes
of the frames kept for training and how much the resident size grew while reading. ``--out``
is not written; any path will do.
"""

import subprocess
import sys
import time

CHILD = '--child-fixed'
MODULE = 'vla_ros.bench.finetune_memory'


def resident_bytes():
    """Return this process's resident size in bytes (Linux ``/proc/self/statm``)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096


def read_once(argv, fixed):
    """Read the training bags of ``argv`` (vla_finetune's flags); print kept and grown bytes."""
    from vla_ros.policy.backbone.processing import ImageProcessor, PromptTokenizer
    from vla_ros.policy.oft.configuration import OFTConstants
    from vla_ros.training import cli, finetune, memory
    from vla_ros.training.dataset import Preprocessor

    if fixed:
        memory.mallopt(memory.M_MMAP_THRESHOLD, memory.READING_THRESHOLD)
    config, options = cli.config_from_args(cli.build_parser().parse_args(argv))
    preprocessor = Preprocessor(ImageProcessor.from_pretrained(config.base),
                                PromptTokenizer.from_pretrained(config.base),
                                OFTConstants.for_platform(config.platform), config.center_crop)
    before, start = resident_bytes(), time.perf_counter()
    train, _ = finetune.read_data(config, options, preprocessor)
    grown = resident_bytes() - before
    kept = sum(frame.nbytes for episode in train for frame in episode.frames.values())
    samples = sum(len(episode.samples) for episode in train)
    print(f"{'fixed' if fixed else 'glibc '} threshold: {len(train)} bags, {samples} samples, "
          f'frames kept {kept / 1e9:.2f} GB, resident size grew {grown / 1e9:.2f} GB '
          f'({grown / max(kept, 1):.2f}x), {time.perf_counter() - start:.0f} s', flush=True)


def main(argv=None):
    """Run both children one after the other; return the first non-zero exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == CHILD:
        read_once(argv[2:], argv[1] == '1')
        return 0
    for fixed in ('0', '1'):
        rc = subprocess.run([sys.executable, '-m', MODULE, CHILD, fixed, *argv]).returncode
        if rc:
            return rc
    return 0


if __name__ == '__main__':
    sys.exit(main())
