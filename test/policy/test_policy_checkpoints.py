"""
Loading checkpoints: good ones load and predict, bad ones fail with one clear error.

Also: images matter (openvla#346), bad images, ``vla_tiny_model`` and its console entry point.
"""

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
from PIL import Image
from policy_helpers import clone_checkpoint, one_thread, REPO, require_conformance, scene
import pytest
from safetensors.torch import load_file, save_file
import torch
from vla_ros.policy import CheckpointError, ConfigError, InputError, OpenVLAPolicy, PolicyError
from vla_ros.policy.backbone.quantization import import_bitsandbytes
from vla_ros.policy.tiny import main as tiny_main, write_tiny_checkpoint

KEY = 'synth_bridge'
INSTRUCTION = 'pick up the red cup'


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Write a vla_tiny_model checkpoint (seed 0); return it, its policy and its tensors."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp('tiny') / 'ckpt', seed=0)
    policy = OpenVLAPolicy.from_pretrained(path, device='cpu', dtype='float32')
    return path, policy, load_file(str(path / 'model.safetensors'))


def load(path, **kwargs):
    return OpenVLAPolicy.from_pretrained(path, device='cpu', dtype='float32', **kwargs)


def first_logits(policy, image):
    return policy.intermediates(image, 'In: What action should the robot take to '
                                       'pick up the red cup?\nOut:')['first_step_logits']


# ---- images matter ------------------------------------------------------------------------------
def test_images_matter_on_conformance_checkpoint():
    root = require_conformance()
    policy = load(root / 'checkpoints' / 'tiny')
    a = first_logits(policy, Image.open(root / 'cases' / 'c00' / 'input.png'))
    b = first_logits(policy, Image.open(root / 'cases' / 'c02' / 'input.png'))
    assert np.abs(a - b).max() > 1e-2


def test_images_matter_on_tiny_checkpoint(tiny):
    _, policy, _ = tiny
    a, b = first_logits(policy, scene(1)), first_logits(policy, scene(2))
    assert np.abs(a - b).max() > 1e-2


# ---- good checkpoints ---------------------------------------------------------------------------
def test_sharded_checkpoint_predicts_identically(tiny, tmp_path):
    path, policy, state = tiny
    sharded = clone_checkpoint(path, tmp_path / 'sharded', skip=('model.safetensors',))
    names = sorted(state)
    halves = {'model-00001-of-00002.safetensors': names[:len(names) // 2],
              'model-00002-of-00002.safetensors': names[len(names) // 2:]}
    weight_map = {}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(sharded / file), metadata={'format': 'pt'})
        weight_map.update({k: file for k in keys})
    (sharded / 'model.safetensors.index.json').write_text(json.dumps(
        {'metadata': {'total_size': 0}, 'weight_map': weight_map}))
    other = load(sharded)
    image = scene(3)
    a = policy.predict(image, INSTRUCTION, unnorm_key=KEY)
    b = other.predict(image, INSTRUCTION, unnorm_key=KEY)
    assert a.generated_ids == b.generated_ids
    assert np.array_equal(a.values, b.values)


def test_dataset_statistics_json_replaces_norm_stats(tiny, tmp_path):
    path, _, _ = tiny
    tuned = clone_checkpoint(path, tmp_path / 'tuned')
    stats = {'my_robot': {'action': {'q01': [-1.0] * 7, 'q99': [1.0] * 7,
                                     'mask': [True] * 6 + [False]}}}
    (tuned / 'dataset_statistics.json').write_text(json.dumps(stats))
    policy = load(tuned)
    assert policy.unnorm_keys == ['my_robot']
    assert policy.resolve_unnorm_key(None) == 'my_robot'
    action = policy.predict(scene(4), INSTRUCTION)  # one key: unnorm_key may be omitted
    assert action.unnorm_key == 'my_robot'
    assert np.allclose(action.values[:6], action.normalized[:6], rtol=0, atol=1e-15)
    assert action.values[6] == action.normalized[6]  # masked off


def test_bfloat16_on_cpu_gives_the_same_kind_of_action(tiny):
    path, policy, _ = tiny
    half = OpenVLAPolicy.from_pretrained(path, device='cpu', dtype='bfloat16')
    assert half.model.projector.fc1.weight.dtype == torch.bfloat16
    action = half.predict(scene(5), INSTRUCTION, unnorm_key=KEY)
    assert action.values.dtype == np.float64 and action.values.shape == (7,)


# ---- bad checkpoints ----------------------------------------------------------------------------
def expect_checkpoint_error(path, *fragments, **kwargs):
    with pytest.raises(CheckpointError) as info:
        load(path, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return str(info.value)


def test_missing_config(tiny, tmp_path):
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad', skip=('config.json',))
    expect_checkpoint_error(bad, 'config.json', 'vla_tiny_model')


def test_missing_weights(tiny, tmp_path):
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad', skip=('model.safetensors',))
    expect_checkpoint_error(bad, 'model.safetensors', 'no weights')


def test_pickle_weights_refused(tiny, tmp_path):
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad', skip=('model.safetensors',))
    (bad / 'pytorch_model.bin').write_bytes(b'not even loaded')
    expect_checkpoint_error(bad, 'pytorch_model.bin', 'refused', 'save_file')


def test_truncated_safetensors(tiny, tmp_path):
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad')
    data = (bad / 'model.safetensors').read_bytes()
    (bad / 'model.safetensors').write_bytes(data[:len(data) // 2])
    expect_checkpoint_error(bad, str(bad / 'model.safetensors'), 'corrupt')


def test_garbage_safetensors(tiny, tmp_path):
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad')
    (bad / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{not json}' * 8)
    expect_checkpoint_error(bad, 'model.safetensors', 'not a valid safetensors')


def test_shape_mismatch_names_the_tensor(tiny, tmp_path):
    state = dict(tiny[2])
    name = 'projector.fc1.weight'
    state[name] = state[name].reshape(state[name].shape[1], state[name].shape[0])
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad', state=state)
    expect_checkpoint_error(bad, name, '[160, 640]', '[640, 160]')


def test_missing_key_is_named(tiny, tmp_path):
    state = dict(tiny[2])
    del state['language_model.model.norm.weight']
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad', state=state)
    expect_checkpoint_error(bad, '1 missing', 'language_model.model.norm.weight')


def test_unexpected_key_is_named(tiny, tmp_path):
    state = dict(tiny[2])
    state['vision_backbone.featurizer.blocks.0.ls1.gamma'] = torch.zeros(64)
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad', state=state)
    expect_checkpoint_error(bad, '1 unexpected', 'vision_backbone.featurizer.blocks.0.ls1.gamma')


def test_missing_index_shard(tiny, tmp_path):
    bad = clone_checkpoint(tiny[0], tmp_path / 'bad', skip=('model.safetensors',))
    (bad / 'model.safetensors.index.json').write_text(json.dumps(
        {'weight_map': {'projector.fc1.weight': 'model-00001-of-00001.safetensors'}}))
    expect_checkpoint_error(bad, 'model-00001-of-00001.safetensors', 'missing')


# ---- bad arguments ------------------------------------------------------------------------------
def test_unknown_dtype(tiny):
    with pytest.raises(ConfigError, match="dtype='float8'.*'float32', 'bfloat16', 'float16'"):
        OpenVLAPolicy.from_pretrained(tiny[0], device='cpu', dtype='float8')


def test_unknown_device(tiny):
    with pytest.raises(ConfigError, match="device='tpu'.*'auto', 'cpu', 'cuda'"):
        OpenVLAPolicy.from_pretrained(tiny[0], device='tpu')


def test_quantization_needs_cuda_and_bitsandbytes(tiny):
    with pytest.raises(ConfigError, match='CUDA'):
        OpenVLAPolicy.from_pretrained(tiny[0], device='cpu', quantization='8bit')
    with pytest.raises(ConfigError, match="'8bit' or '4bit'"):
        OpenVLAPolicy.from_pretrained(tiny[0], device='cpu', quantization='2bit')
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match='pip install bitsandbytes'):
            import_bitsandbytes('4bit')


def test_wrong_unnorm_key_lists_valid_ones(tiny):
    policy = tiny[1]
    with pytest.raises(ConfigError, match='bridge_orig') as info:
        policy.predict(scene(7), INSTRUCTION, unnorm_key='bridge_orig')
    assert 'synth_bridge, synth_kitchen, synth_nomask' in str(info.value)
    with pytest.raises(ConfigError):
        policy.resolve_unnorm_key('nope')


def test_missing_unnorm_key_with_several_lists_them(tiny):
    policy = tiny[1]
    for key in (None, ''):
        with pytest.raises(ConfigError, match='synth_bridge, synth_kitchen, synth_nomask'):
            policy.resolve_unnorm_key(key)
    with pytest.raises(ConfigError, match='unnorm_key is required'):
        policy.predict(scene(7), INSTRUCTION)


# ---- bad and odd images -------------------------------------------------------------------------
@pytest.mark.parametrize('image', [
    np.zeros((224, 224, 3), np.float32),
    np.zeros((224, 224, 5), np.uint8),
    np.zeros((224, 224, 2), np.uint8),
    np.zeros((2, 224, 224, 3), np.uint8),
    np.zeros((0, 10, 3), np.uint8),
    [[0, 1], [2, 3]],
    'image.png',
])
def test_bad_images_raise_input_error(tiny, image):
    with pytest.raises(InputError):
        tiny[1].predict(image, INSTRUCTION, unnorm_key=KEY)


def test_bad_instruction(tiny):
    for instruction in ('', '   ', None, 3):
        with pytest.raises(InputError):
            tiny[1].predict(scene(8), instruction, unnorm_key=KEY)


def test_image_kinds_agree(tiny):
    policy = tiny[1]
    rgb = scene(9, 120, 160)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=2)
    reference = policy.image_processor(rgb)
    assert torch.equal(policy.image_processor(rgba), reference)  # alpha dropped
    assert torch.equal(policy.image_processor(Image.fromarray(rgb)), reference)
    gray = rgb[:, :, 0]
    assert torch.equal(policy.image_processor(gray),
                       policy.image_processor(np.repeat(gray[:, :, None], 3, axis=2)))
    for action in (policy.predict(rgba, INSTRUCTION, unnorm_key=KEY),
                   policy.predict(Image.fromarray(gray).convert('P'), INSTRUCTION,
                                  unnorm_key=KEY)):
        assert action.values.shape == (7,)


def test_closed_policy_refuses(tiny):
    policy = OpenVLAPolicy.from_pretrained(tiny[0], device='cpu')
    policy.close()
    with pytest.raises(PolicyError, match='closed'):
        policy.predict(scene(10), INSTRUCTION, unnorm_key=KEY)


# ---- vla_tiny_model -----------------------------------------------------------------------------
def check_tiny(path, seed):
    policy = load(path)
    assert policy.unnorm_keys == ['synth_bridge', 'synth_kitchen', 'synth_nomask']
    rng = np.random.default_rng(seed)
    images = [scene(100 + i, int(rng.integers(120, 480)), int(rng.integers(120, 640)))
              for i in range(10)]
    actions = [policy.predict(image, INSTRUCTION, unnorm_key=KEY) for image in images]
    assert np.mean([a.valid for a in actions]) >= 0.95
    assert len({a.token_ids.tobytes() for a in actions}) > 1  # image-dependent


def test_vla_tiny_model_main(tmp_path, capsys):
    out = tmp_path / 'ckpt'
    assert tiny_main([str(out), '--seed', '3']) == 0
    check_tiny(out, 3)
    assert tiny_main([str(out)]) == 1  # not empty, no --force
    assert 'not empty' in capsys.readouterr().err
    assert tiny_main([str(out / 'config.json')]) == 1  # a file, not a directory


@pytest.mark.process
def test_vla_tiny_model_subprocess(tmp_path):
    out = tmp_path / 'ckpt'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'vla_ros.policy.tiny', str(out), '--seed', '1'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in Path(out).iterdir()} == {
        'config.json', 'generation_config.json', 'preprocessor_config.json', 'tokenizer.json',
        'tokenizer_config.json', 'special_tokens_map.json', 'model.safetensors'}
    check_tiny(out, 1)
