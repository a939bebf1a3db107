"""
OpenVLA-OFT's paths on the miniature the package writes itself (no golden files needed).

Every tensor of the eager forward on the policy's device (checked on torch's ``meta`` device,
which the CPU has: a tensor left on the CPU raises there as it does on CUDA).
"""

import numpy as np
import pytest
import torch

from vla_ros.policy.oft import OpenVLAOFTPolicy
from vla_ros.policy.oft_fast import OFTFastPath
from vla_ros.policy.policy import Backbone, PhaseClock
from vla_ros.policy.tiny import write_tiny_oft_checkpoint

pytestmark = pytest.mark.usefixtures('torch_one_thread')
IMAGES = [np.full((224, 224, 3), 100, np.uint8), np.full((224, 224, 3), 200, np.uint8)]
STATE = np.zeros(8)
KEY = 'synth_oft_libero'


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return write_tiny_oft_checkpoint(tmp_path_factory.mktemp('oft') / 'libero')


def on_meta(checkpoint):
    """Load the miniature on the CPU, then move every module to ``meta`` and build it there."""
    cpu = OpenVLAOFTPolicy.from_pretrained(checkpoint, device='cpu', fast=False)
    meta = torch.device('meta')
    backbone = Backbone(model=cpu.model.to(meta), config=cpu.config,
                        image_processor=cpu.image_processor, tokenizer=cpu.tokenizer,
                        device=meta, dtype=cpu.dtype, quantization=None, weight_bytes=0,
                        eos_token_id=2)
    return OpenVLAOFTPolicy(backbone, cpu.constants, cpu.forward.action_head.to(meta),
                            cpu.forward.proprio_projector.to(meta))


def test_every_path_runs_on_the_policys_device(checkpoint):
    """The normalisation table follows the policy: no CPU tensor meets a device one."""
    policy = on_meta(checkpoint)
    with torch.inference_mode():
        inputs = policy.inputs(IMAGES, 'pick up the bowl', STATE, KEY)
        assert {tensor.device.type for tensor in inputs} == {'meta'}
        plain = policy._run_plain(*inputs, PhaseClock(policy.device, exact=False))
        fast = OFTFastPath(policy).run(*inputs)
    assert plain.device.type == fast.device.type == 'meta'
    assert plain.shape == fast.shape == (1, 8, 7)
