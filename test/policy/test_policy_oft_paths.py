"""
OpenVLA-OFT's paths on the miniature the package writes itself (no golden files needed).

Every tensor of the eager forward on the policy's device (checked on torch's ``meta`` device,
which the CPU has: a tensor left on the CPU raises there as it does on CUDA). Prompts past the
fast path's buckets give the plain path's chunks; past the model's positions, a named error.
"""

import numpy as np
import pytest
import torch

from vla_ros.policy import InputError
from vla_ros.policy.backbone.loading import Backbone
from vla_ros.policy.backbone.processing import build_prompt
from vla_ros.policy.backbone.timing import PhaseClock
from vla_ros.policy.oft.fast import OFTFastPath
from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
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


@pytest.fixture(scope='module')
def policy(checkpoint):
    return OpenVLAOFTPolicy.from_pretrained(checkpoint, device='cpu', fast=False)


def instruction_of(policy, ids):
    """Return an instruction of about ``ids`` prompt ids (the fast path's MAX_PROMPT: 96)."""
    words = ' '.join(['pick up the red cup and put it in the bowl'] * (ids // 11))
    length = len(policy.tokenizer.model_input_ids(build_prompt(words)))
    assert abs(length - ids) < 0.1 * ids, length
    return words


@pytest.mark.parametrize('ids', [130, 300])
def test_long_prompts_run_on_the_fast_paths_as_on_the_plain_one(policy, ids):
    instruction = instruction_of(policy, ids)
    plain = policy.predict(IMAGES, instruction, STATE, KEY)
    for fast in (OFTFastPath(policy), OFTFastPath(policy, static_shapes=True)):  # CPU, CUDA
        policy.fast = fast
        try:
            chunk = policy.predict(IMAGES, instruction, STATE, KEY)
        finally:
            policy.fast = None
        assert np.abs(chunk.normalized - plain.normalized).max() <= 1e-5


def test_a_prompt_past_the_models_positions_is_refused_by_name(policy):
    instruction = instruction_of(policy, 1500)  # 513 patches + 1510 ids + 57 > 2048 positions
    for fast in (None, OFTFastPath(policy)):
        policy.fast = fast
        try:
            with pytest.raises(InputError, match='at most 1478 .* shorten the instruction'):
                policy.predict(IMAGES, instruction, STATE, KEY)
        finally:
            policy.fast = None


def test_vla_tiny_model_writes_an_aloha_checkpoint_that_predicts_joint_chunks(tmp_path):
    """``vla_tiny_model --oft aloha``: min/max statistics of 14 joints, chunks of 25 rows."""
    from vla_ros.policy.tiny import main
    assert main([str(tmp_path / 'aloha'), '--oft', 'aloha']) == 0
    policy = OpenVLAOFTPolicy.from_pretrained(tmp_path / 'aloha', platform='aloha',
                                              device='cpu', dtype='float32')
    assert (policy.chunk_len, policy.action_dim, policy.proprio_dim, policy.num_images) == (
        25, 14, 14, 3)
    assert policy.unnorm_keys == ['synth_oft_aloha']
    stats = policy.config.norm_stats['synth_oft_aloha']
    low, high = np.array(stats['action']['min']), np.array(stats['action']['max'])
    assert low.shape == high.shape == (14,) and len(stats['proprio']['min']) == 14
    assert (low[[6, 13]] == 0).all() and (high[[6, 13]] == 1).all()  # grippers 0 closed..1 open
    images = [np.full((32, 32, 3), 60 * i, np.uint8) for i in range(1, 4)]
    home = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.5] * 2)  # ACT's start pose
    chunk = policy.predict(images, 'transfer the cube', proprio=home)
    assert chunk.values.shape == (25, 14) and chunk.valid
    assert np.abs(chunk.normalized).max() < 1.5  # a trained head's range, about
    assert ((chunk.values >= low - 0.5 * (high - low)) & (chunk.values <= high + 0.5 * (
        high - low))).all()
    moved = policy.predict(images, 'transfer the cube', proprio=home * 0.5)
    other = policy.predict(images[::-1], 'transfer the cube', proprio=home)
    assert np.abs(moved.values - chunk.values).max() > 1e-3  # the state matters
    assert np.abs(other.values - chunk.values).max() > 1e-3  # so do the cameras
