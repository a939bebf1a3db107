"""Shared helpers of the policy tests: golden data location, checkpoint surgery, test images."""

import contextlib
import json
import os
from pathlib import Path
import shutil

import pytest

REPO = Path(__file__).resolve().parents[1]


def conformance_dir():
    """Return the conformance folder: $VLA_CONFORMANCE_DIR, else <repo>/../shared/conformance."""
    if os.environ.get('VLA_CONFORMANCE_DIR'):
        return Path(os.environ['VLA_CONFORMANCE_DIR'])
    shared = Path(os.environ.get('VLA_SHARED_DIR', REPO.parent / 'shared'))
    return shared / 'conformance'


def require_conformance():
    """Return ``conformance_dir() / 'openvla_tiny'``, or skip the test when it is absent."""
    root = conformance_dir() / 'openvla_tiny'
    if not (root / 'checkpoints' / 'tiny' / 'model.safetensors').is_file():
        pytest.skip(f'golden vectors not found at {root}; set VLA_CONFORMANCE_DIR to the folder '
                    'holding openvla_tiny/ and openvla7b_param_shapes.json')
    return root


@contextlib.contextmanager
def one_thread():
    """
    Run torch on one CPU thread inside the block.

    The miniature models gain nothing from more threads, and on a machine shared with other test
    runs, spinning OpenMP threads make them many times slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_json(path):
    """Parse one JSON file."""
    return json.loads(Path(path).read_text(encoding='utf-8'))


def clone_checkpoint(src, dst, state=None, skip=()):
    """
    Copy checkpoint ``src`` to ``dst`` (files writable).

    With ``state`` (a dict of tensors), ``model.safetensors`` is written from it instead of
    copied. Files named in ``skip`` are left out.
    """
    from safetensors.torch import save_file

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for file in Path(src).iterdir():
        if file.name in skip or (state is not None and file.name == 'model.safetensors'):
            continue
        shutil.copyfile(file, dst / file.name)
    if state is not None:
        save_file({k: v.contiguous() for k, v in state.items()}, str(dst / 'model.safetensors'),
                  metadata={'format': 'pt'})
    return dst


def scene(seed, height=224, width=224):
    """Return a reproducible synthetic uint8 RGB scene."""
    from vla_ros.sim.scenes import scene as synthetic
    return synthetic(seed, width, height, noise=8)
