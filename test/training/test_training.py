"""
vla_finetune: statistics, samples equal to the policy's inputs, training, resume, bad input.

Pure Python, no ROS graph: bags are written with ``bag_helpers`` (two 64 x 48 cameras, ee_pose,
finger joints, an instruction, one ``vla/action`` per 100 ms step), the base is the miniature
OpenVLA-OFT LIBERO checkpoint (two cameras, 8-D state, chunks of 8).
"""

import dataclasses
import json
import math
import os
from pathlib import Path
import shutil
import subprocess
import sys

from bag_helpers import (FRONT, LIBERO_PROPRIO, libero_state, MS_NS, robot_inputs, T0_NS,
                         WRIST, WRIST_SCENES, write_bag)
from conftest import REPO
import numpy as np
import pytest
import torch

from vla_ros.control.action_layout import ACTION_LABEL
from vla_ros.recordings.bags import RecordingError, typestore
from vla_ros.recordings.options import DataOptions
from vla_ros.sim.scenes import scene
from vla_ros.training import cli
from vla_ros.training.checkpoint import read_log
from vla_ros.training.dataset import (check_bags, ChunkDataset, collate, NON_FINITE_ACTION,
                                      NON_FINITE_STATE, object_standardisation, Preprocessor,
                                      read_episode, sample_arrays)
from vla_ros.training.finetune import statistics_of
from vla_ros.training.stats import normalize_actions

PERIOD_NS = 100 * MS_NS
RATE = '10'
KEY = 'my_reach'
INSTRUCTIONS = ('reach the red cube', 'pick up the green cylinder now')


def demo_actions(steps, seed):
    """Return (log_ns, 7 values) per step: small deltas that follow the step, gripper 1/0."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(steps):
        phase = 2 * np.pi * k / steps
        delta = [0.01 * np.cos(phase), 0.01 * np.sin(phase), -0.004 + 0.002 * seed,
                 0.02 * np.sin(phase), 0.0, rng.normal(0, 0.01)]
        rows.append((T0_NS + k * PERIOD_NS + 3 * MS_NS, np.array(delta + [float(k < steps // 2)])))
    return rows


def make_bag(path, steps=8, seed=0, instruction=INSTRUCTIONS[0], actions=None, **extra):
    """Write a two-camera demonstration bag of ``steps`` steps; return (path, inputs)."""
    inputs = robot_inputs(steps, period_ns=PERIOD_NS, camera_period_ns=PERIOD_NS)
    inputs.update(extra)
    write_bag(path, 'mcap', instructions=[(T0_NS - 50 * MS_NS, instruction)],
              actions=demo_actions(steps, seed) if actions is None else actions, **inputs)
    return path, inputs


def data_args(*bags):
    return [str(b) for b in bags] + ['--camera-topics', FRONT, WRIST, '--proprio',
                                     *LIBERO_PROPRIO, '--rate', RATE]


def options():
    return DataOptions(camera_topics=(FRONT, WRIST), proprio=LIBERO_PROPRIO, rate=10.0)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    return write_tiny_oft_checkpoint(tmp_path_factory.mktemp('base') / 'oft')


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bags')
    return [make_bag(folder / f'episode_{i}', seed=i, instruction=INSTRUCTIONS[i % 2])
            for i in range(3)]


def run(*args):
    return cli.main([str(a) for a in args])


# ---- statistics -------------------------------------------------------------------------------
def test_statistics_equal_numpy_on_the_bags_arrays(base, bags, tmp_path, capsys):
    paths = [path for path, _ in bags[:2]]
    actions, proprio = [], []
    for path, inputs in bags[:2]:
        seed = int(path.name[-1])
        actions += [values for _, values in demo_actions(8, seed)]
        proprio += [libero_state(inputs, T0_NS + k * PERIOD_NS) for k in range(8)]
    actions, proprio = np.array(actions), np.array(proprio)
    episodes = [read_episode(p, options()) for p in paths]
    read_actions, read_proprio = sample_arrays(episodes)
    np.testing.assert_array_equal(read_actions, actions)
    np.testing.assert_allclose(read_proprio, proprio, rtol=0, atol=1e-15)
    entry = statistics_of(episodes)
    for name, values in (('action', actions), ('proprio', proprio)):
        expected = {'mean': values.mean(0), 'std': values.std(0), 'min': values.min(0),
                    'max': values.max(0), 'q01': np.quantile(values, 0.01, axis=0),
                    'q99': np.quantile(values, 0.99, axis=0)}
        for field, value in expected.items():
            np.testing.assert_allclose(entry[name][field], value, rtol=1e-12, atol=1e-15,
                                       err_msg=f'{name}.{field}')
    assert entry['action']['mask'] == [True] * 6 + [False]
    assert 'mask' not in entry['proprio']
    assert (entry['num_transitions'], entry['num_trajectories']) == (16, 2)

    out = tmp_path / 'stats'
    assert run(*data_args(*paths), '--base', base, '--out', out, '--unnorm-key', KEY,
               '--stats-only') == 0
    assert sorted(p.name for p in out.iterdir()) == ['dataset_statistics.json']
    written = json.loads((out / 'dataset_statistics.json').read_text())
    assert list(written) == [KEY]
    assert written[KEY] == json.loads(json.dumps(entry))
    assert 'dataset_statistics.json' in capsys.readouterr().out


def test_steps_above_the_camera_rate_train_on_their_own_recorded_actions(tmp_path):
    """--rate 20 on 10 Hz cameras, a live run's actions 5 ms after each tick: one per step."""
    steps, period = 9, 50 * MS_NS
    inputs = robot_inputs(steps, period_ns=period, camera_period_ns=PERIOD_NS)
    recorded = np.arange(steps)[:, None] * 0.01 * np.ones(7)  # step k's action: 0.01 k
    write_bag(tmp_path / 'live', 'mcap', instructions=[(T0_NS - 50 * MS_NS, INSTRUCTIONS[0])],
              actions=[(T0_NS + k * period + 5 * MS_NS, a) for k, a in enumerate(recorded)],
              **inputs)
    episode = read_episode(tmp_path / 'live', DataOptions(
        camera_topics=(FRONT, WRIST), proprio=LIBERO_PROPRIO, rate=20.0))
    assert list(episode.samples) == list(range(steps))
    np.testing.assert_array_equal(episode.actions, recorded)  # not 0, 0, 2, 2, ...
    np.testing.assert_array_equal(episode.chunk(1, 4), recorded[1:5])
    np.testing.assert_array_equal(episode.chunk(7, 4), recorded[[7, 8, 8, 8]])


def test_normalised_targets_follow_oft_and_keep_the_raw_gripper():
    entry = {'action': {'q01': [-1.0, 0.0, 2.0], 'q99': [1.0, 4.0, 2.0], 'min': [-2.0, 0.0, 2.0],
                        'max': [2.0, 4.0, 2.0], 'mask': [True, True, False]}}
    values = normalize_actions(np.array([[0.5, 5.0, 1.0], [-3.0, 2.0, 0.0]]), entry)
    np.testing.assert_allclose(values, [[0.5, 1.0, 1.0], [-1.0, 0.0, 0.0]], atol=1e-7)
    entry['action']['mask'] = [True, True, True]  # a used-up (min == max) normalised dim -> 0
    assert normalize_actions(np.array([0.0, 2.0, 2.0]), entry)[2] == 0.0


def test_val_fraction_holds_out_a_seeded_share_of_the_bags():
    bags = [f'/data/episode_{i}' for i in range(10)]
    train, val = cli.split_bags(bags, [], 0.2, seed=5)
    assert len(val) == 2 and sorted(train + val) == bags and not set(train) & set(val)
    assert cli.split_bags(bags, [], 0.2, seed=5) == (train, val)
    assert cli.split_bags(bags[:2], [], 0.01, seed=0)[1]  # at least one
    assert cli.split_bags(bags, ['/v'], 0.0, seed=0) == (bags, ['/v'])


# ---- training equals inference -----------------------------------------------------------------
def test_samples_and_batched_forward_equal_the_policy(base, bags, tmp_path):
    from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
    from vla_ros.training.model import build_model
    from vla_ros.training.options import TrainConfig

    out = tmp_path / 'stats'
    assert run(*data_args(*(p for p, _ in bags)), '--base', base, '--out', out, '--unnorm-key',
               KEY, '--stats-only') == 0
    shutil.copytree(base, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns('dataset_*'))
    policy = OpenVLAOFTPolicy.from_pretrained(out, platform='libero', device='cpu',
                                              dtype='float32')
    entry = json.loads((out / 'dataset_statistics.json').read_text())[KEY]
    preprocessor = Preprocessor(policy.image_processor, policy.tokenizer, policy.constants,
                                center_crop=True)
    policy.center_crop = True
    episodes = [read_episode(p, options(), preprocessor) for p, _ in bags[:2]]
    dataset = ChunkDataset(episodes, preprocessor, entry,
                           lambda chunk, e: normalize_actions(chunk, e))
    picks = [(0, 2), (1, 5)]  # two bags, two instructions of different lengths
    samples = [dataset[e * 8 + k] for e, k in picks]
    expected = []
    for (e, k), sample in zip(picks, samples):
        inputs = bags[e][1]
        images = [scene(k, 64, 48), scene(WRIST_SCENES + k, 64, 48)]
        state = libero_state(inputs, T0_NS + k * PERIOD_NS)
        pixels, ids, keep, proprio = policy.inputs(images, INSTRUCTIONS[e], state, KEY)
        assert torch.equal(sample['pixel_values'], pixels[0])
        assert sample['prompt_ids'] + [1] * 56 + [2] == ids[0].tolist()
        assert torch.equal(sample['proprio'], proprio[0])
        expected.append(policy.predict(images, INSTRUCTIONS[e], proprio=state,
                                       unnorm_key=KEY).normalized)
    model, _ = build_model(TrainConfig(base=str(out), out='', unnorm_key=KEY, bags=(),
                                       mode='full'),
                           policy.constants, torch.device('cpu'), torch.float32,
                           *sorted(out.glob('*--0_checkpoint.pt')), with_projector=True)
    batch = collate(samples, policy.constants.num_action_slots)
    assert batch['ids'].shape[1] > min(batch['seq_len'])  # one sample is padded
    with torch.no_grad():
        predicted = model.eval()(**batch).numpy()
    np.testing.assert_allclose(predicted, np.stack(expected), atol=2e-5)
    target = episodes[0].chunk(2, 8)
    assert np.array_equal(target[0], episodes[0].actions[2])
    assert np.array_equal(episodes[0].chunk(6, 8)[2:], np.repeat(episodes[0].actions[7:8], 6, 0))


def test_image_aug_augments_training_draws_and_leaves_validation_the_policys(base, bags):
    """--image-aug: fresh, seeded crops and colours per draw; validation as OpenVLAOFTPolicy."""
    from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
    from vla_ros.training.finetune import datasets, read_data
    from vla_ros.training.options import TrainConfig

    policy = OpenVLAOFTPolicy.from_pretrained(base, platform='libero', device='cpu',
                                              dtype='float32', center_crop=True)
    preprocessor = Preprocessor(policy.image_processor, policy.tokenizer, policy.constants,
                                center_crop=True)
    config = TrainConfig(base=str(base), out='', unnorm_key=KEY, bags=(str(bags[0][0]),),
                         val_bags=(str(bags[1][0]),), center_crop=True, image_aug=True, seed=4)
    train_eps, val_eps = read_data(config, options(), preprocessor)
    entry = statistics_of(train_eps)
    train, val = datasets(config, train_eps, val_eps, preprocessor, entry, normalize_actions)
    for k in (0, 5):  # validation: bit for bit the policy's inputs of the same frames
        images = [scene(k, 64, 48), scene(WRIST_SCENES + k, 64, 48)]
        state = libero_state(bags[1][1], T0_NS + k * PERIOD_NS)
        pixels = policy.inputs(images, INSTRUCTIONS[1], state, 'synth_oft_libero')[0]
        assert torch.equal(val[k]['pixel_values'], pixels[0])

    values = policy.image_processor.table  # (6, 256): every normalised byte value
    draws = [train[3]['pixel_values']]
    train.set_epoch(1)
    draws.append(train[3]['pixel_values'])
    train.set_epoch(0)
    draws.append(train[3]['pixel_values'])
    same_seed = datasets(config, train_eps, val_eps, preprocessor, entry, normalize_actions)[0]
    other_seed = datasets(dataclasses.replace(config, seed=5), train_eps, val_eps, preprocessor,
                          entry, normalize_actions)[0]
    images = [scene(3, 64, 48), scene(WRIST_SCENES + 3, 64, 48)]
    state = libero_state(bags[0][1], T0_NS + 3 * PERIOD_NS)
    plain = policy.inputs(images, INSTRUCTIONS[0], state, 'synth_oft_libero')[0][0]
    for draw in draws:
        assert draw.shape == plain.shape == (12, 224, 224) and draw.dtype == torch.float32
        for channel in range(12):  # still normalised bytes
            assert torch.isin(draw[channel], values[channel % 6]).all()
        assert (draw - plain).abs().mean() > 0.02  # not the policy's center crop
    assert not torch.equal(draws[0], draws[1])  # each epoch draws anew
    assert torch.equal(draws[0], draws[2])  # the same (seed, epoch, sample): the same draw
    assert torch.equal(same_seed[3]['pixel_values'], draws[0])
    assert not torch.equal(other_seed[3]['pixel_values'], draws[0])
    assert not torch.equal(train[4]['pixel_values'][:6], train[3]['pixel_values'][:6])


def test_augment_keeps_uint8_frames_and_its_centred_neutral_draw_is_the_policys_crop():
    from PIL import Image

    from vla_ros.policy.backbone.processing import center_crop_and_resize
    from vla_ros.policy.oft.processing import prepare_image
    from vla_ros.training import augment

    frames = np.stack([np.asarray(prepare_image(scene(k, 64, 48), False)) for k in (1, 2)])

    class Neutral:  # centred box, no brightness, contrast, saturation or hue change
        def random(self, shape):
            return np.full(shape, 0.5)

    out = augment.augment(torch.from_numpy(frames), Neutral()).numpy()
    crops = np.stack([np.asarray(center_crop_and_resize(Image.fromarray(f))) for f in frames])
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert np.abs(out.astype(int) - crops).max() <= 1  # HSV round trip: one level at most
    first = augment.augment(torch.from_numpy(frames), augment.rng(0, 0, 0)).numpy()
    assert not np.array_equal(first[0], out[0]) and not np.array_equal(first[0], first[1])


def test_merged_lora_weights_give_the_adapted_model(base, bags):
    from vla_ros.policy.backbone.processing import ImageProcessor, PromptTokenizer
    from vla_ros.policy.oft.configuration import OFTConstants
    from vla_ros.training.checkpoint import weight_layout
    from vla_ros.training.model import build_model, merged_state_dict
    from vla_ros.training.options import TrainConfig

    constants = OFTConstants.for_platform('libero')
    preprocessor = Preprocessor(ImageProcessor.from_pretrained(base),
                                PromptTokenizer.from_pretrained(base), constants, False)
    episodes = [read_episode(bags[0][0], options(), preprocessor)]
    entry = statistics_of(episodes)
    dataset = ChunkDataset(episodes, preprocessor, entry, normalize_actions)
    batch = collate([dataset[0], dataset[5]], constants.num_action_slots)
    heads = sorted(base.glob('*--0_checkpoint.pt'))

    def model(mode, target='all'):
        config = TrainConfig(base=str(base), out='', unnorm_key=KEY, bags=(), mode=mode,
                             lora_rank=4, lora_target=target)
        return build_model(config, constants, torch.device('cpu'), torch.float32, *heads,
                           with_projector=True)[0].eval()

    adapted, merged = model('lora'), model('full')
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if 'lora_B' in name:
                param.normal_(0, 0.05)
        merged.vla.load_state_dict(merged_state_dict(adapted.vla, list(weight_layout(base))))
        np.testing.assert_allclose(merged(**batch).numpy(), adapted(**batch).numpy(), atol=2e-5)
        assert not np.allclose(model('full')(**batch).numpy(), adapted(**batch).numpy(),
                               atol=1e-3)


# ---- training, loading, resuming ---------------------------------------------------------------
TRAIN = ('--batch-size', '8', '--lr', '2e-3', '--val-every', '3', '--seed', '1')  # full batch


@pytest.mark.slow  # trains the miniature for 6 steps
def test_finetuning_lowers_the_loss_and_writes_a_loadable_checkpoint(base, bags, tmp_path):
    from vla_ros.policy.oft.policy import OpenVLAOFTPolicy

    out = tmp_path / 'run'
    train, val = bags[:1], bags[2]
    assert run(*data_args(*(p for p, _ in train)), '--val-bags', val[0], '--base', base,
               '--out', out, '--unnorm-key', KEY, '--steps', '6', '--save-every', '0',
               *TRAIN) == 0
    log = read_log(out)
    losses = [r['loss'] for r in log if 'loss' in r]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    assert [r['step'] for r in log if 'val_l1' in r] == [3, 6]
    assert sorted(p.name for p in out.glob('*.pt')) == ['action_head--6_checkpoint.pt',
                                                        'proprio_projector--6_checkpoint.pt']
    head = torch.load(out / 'action_head--6_checkpoint.pt', weights_only=True)
    assert all(k.startswith('module.') for k in head)
    assert list(json.loads((out / 'dataset_statistics.json').read_text())) == [KEY]
    policy = OpenVLAOFTPolicy.from_pretrained(out, platform='libero', device='cpu',
                                              dtype='float32')
    assert policy.unnorm_keys == [KEY] and policy.head_kind == 'l1'
    inputs = val[1]
    chunk = policy.predict([scene(3, 64, 48), scene(WRIST_SCENES + 3, 64, 48)], INSTRUCTIONS[0],
                           proprio=libero_state(inputs, T0_NS + 3 * PERIOD_NS), unnorm_key=KEY)
    assert chunk.values.shape == (8, 7) and np.all(np.isfinite(chunk.values))
    base_policy = OpenVLAOFTPolicy.from_pretrained(base, platform='libero', device='cpu',
                                                   dtype='float32')
    changed = [name for name, p in policy.model.state_dict().items()
               if not torch.equal(p, base_policy.model.state_dict()[name])]
    assert any('language_model.model.layers' in n for n in changed)  # LoRA merged in
    assert 'language_model.lm_head.weight' not in changed


@pytest.mark.slow  # trains the miniature: 12 steps in five runs
def test_resume_continues_the_step_count_and_equals_one_run(base, bags, tmp_path):
    from safetensors.torch import load_file

    common = (*data_args(bags[0][0]), '--base', base, '--unnorm-key', KEY, '--batch-size', '3',
              '--lora-rank', '4', '--lora-target', 'llm', '--seed', '3')
    assert run(*common, '--out', tmp_path / 'a', '--steps', '4', '--save-every', '0') == 0
    resumed = tmp_path / 'b'
    assert run(*common, '--out', resumed, '--steps', '2', '--save-every', '2') == 0
    assert run(*common, '--out', resumed, '--steps', '2', '--resume') == 2  # nothing left
    assert run(*common, '--out', resumed, '--steps', '4', '--resume', '--lr', '1e-3') == 2
    assert run(*common, '--out', resumed, '--steps', '4', '--resume') == 0
    assert [r['step'] for r in read_log(resumed) if 'loss' in r] == [1, 2, 3, 4]
    assert sorted(p.name for p in resumed.glob('*.pt')) == ['action_head--4_checkpoint.pt',
                                                            'proprio_projector--4_checkpoint.pt']
    one, two = load_file(tmp_path / 'a' / 'model.safetensors'), \
        load_file(resumed / 'model.safetensors')
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=0, atol=1e-6)


# ---- steps that are no sample are counted and reported -----------------------------------------
def action_message(values):
    """Return a vla/action Float64MultiArray as rosbags writes it (any values, NaN too)."""
    ts = typestore()
    dim = ts.types['std_msgs/msg/MultiArrayDimension'](label=ACTION_LABEL, size=7, stride=7)
    layout = ts.types['std_msgs/msg/MultiArrayLayout'](dim=[dim], data_offset=0)
    return ts.types['std_msgs/msg/Float64MultiArray'](layout=layout,
                                                      data=np.asarray(values, np.float64))


def test_nan_and_inf_steps_are_no_sample_and_are_reported(base, tmp_path, capsys):
    actions = demo_actions(8, seed=0)
    bad = {3: np.r_[math.nan, actions[3][1][1:]], 5: np.r_[actions[5][1][:6], math.inf]}
    inputs = robot_inputs(8, period_ns=PERIOD_NS, camera_period_ns=PERIOD_NS)
    joints = list(inputs['joint_states'])
    log_ns, stamp_ns, positions = joints[13]  # the newest joint states at step 6
    joints[13] = (log_ns, stamp_ns, dict(positions, finger_left=math.nan))
    bag, _ = make_bag(tmp_path / 'nan', actions=[a for k, a in enumerate(actions) if k not in bad],
                      raw_messages=[('/vla/action', actions[k][0], action_message(values))
                                    for k, values in bad.items()], joint_states=joints)
    episode = read_episode(bag, options())
    assert episode.skipped == {NON_FINITE_ACTION: 2, NON_FINITE_STATE: 1}
    assert list(episode.samples) == [0, 1, 2, 4, 7]
    assert np.isfinite(np.concatenate(sample_arrays([episode]), axis=1)).all()

    out = tmp_path / 'out'
    assert run(*data_args(bag), '--base', base, '--out', out, '--unnorm-key', KEY, '--steps', '1',
               '--save-every', '0', '--val-every', '0') == 0
    said = capsys.readouterr()
    assert '5 training samples from 1 bag(s) (3 steps are no sample)' in said.err
    assert 'vla_finetune: 3 steps of the training bags were no sample: 2 NaN or inf in the ' \
        'recorded action, 1 NaN or inf in the state' in said.out
    run_file = json.loads((out / 'training_state' / 'run.json').read_text())
    assert run_file['samples'] == 5
    assert run_file['skipped'] == {NON_FINITE_ACTION: 2, NON_FINITE_STATE: 1}


# ---- the auxiliary target: the named object's position (--aux-object) ------------------------
def task_message(position):
    status = {'task': 'reach', 'object': 'red_cube', 'success': False}
    if position is not None:
        status['object_position'] = position
    return typestore().types['std_msgs/msg/String'](data=json.dumps(status))


def task_statuses(times_ms_positions):
    return [('/sim/task', T0_NS + ms * MS_NS, task_message(p)) for ms, p in times_ms_positions]


def test_aux_object_targets_are_the_newest_sim_task_position_at_each_step(tmp_path):
    a, b, c = [0.4, 0.1, 0.02], [0.45, -0.05, 0.03], [0.5, 0.0, 0.025]
    bag, _ = make_bag(tmp_path / 'task', raw_messages=task_statuses(
        [(50, a), (300, b), (420, None), (500, c), (700, 'not a position')]))
    episode = read_episode(bag, options(), objects=True)
    # Steps every 100 ms from the first frame (T0); a status at the step's time is its own.
    expected = [math.nan, a, a, b, b, c, c, math.nan]
    for k, want in enumerate(expected):
        assert np.array_equal(episode.objects[k], np.full(3, math.nan) if want is math.nan
                              else np.array(want), equal_nan=True), (k, episode.objects[k])
    assert episode.objects.shape == (8, 3) and read_episode(bag, options()).objects is None
    mean, std = object_standardisation([episode])
    known = np.array([a, a, b, b, c, c])[[k - 1 for k in episode.samples if 0 < k < 7]]
    assert np.allclose(mean, known.mean(axis=0)) and np.allclose(std, known.std(axis=0))


@pytest.mark.slow  # trains the miniature for 6 steps
def test_aux_object_trains_its_head_beside_the_policys_and_the_checkpoint_loads(base, tmp_path):
    from safetensors.torch import load_file

    from vla_ros.policy.oft.policy import OpenVLAOFTPolicy

    bag, _ = make_bag(tmp_path / 'task', raw_messages=task_statuses(
        [(-20, [0.4, 0.1, 0.02]), (330, [0.45, -0.05, 0.03]), (610, [0.5, 0.0, 0.025])]))
    out = tmp_path / 'run'
    assert run(*data_args(bag), '--base', base, '--out', out, '--unnorm-key', KEY, '--steps', '6',
               '--save-every', '0', '--aux-object', '1', *TRAIN) == 0
    object_l1 = [r['object_l1'] for r in read_log(out) if 'loss' in r]
    assert len(object_l1) == 6 and object_l1[-1] < 0.8 * object_l1[0], object_l1
    trained = load_file(out / 'training_state' / 'trainable.safetensors')
    assert {'object_head.weight', 'object_head.bias'} <= set(trained)
    policy = OpenVLAOFTPolicy.from_pretrained(out, platform='libero', device='cpu',
                                              dtype='float32')  # no place for that head
    assert policy.unnorm_keys == [KEY]


def test_resuming_with_another_setting_names_it_as_saved_then_and_as_given_now(tmp_path):
    from vla_ros.training.options import FinetuneError, read_run, TrainConfig, write_run

    config = TrainConfig(base='base', out=str(tmp_path), unnorm_key=KEY, bags=('a',),
                         lr=1e-3)
    write_run(tmp_path, config, options(), 5, {})
    run_file = tmp_path / 'training_state' / 'run.json'
    saved = json.loads(run_file.read_text())
    del saved['config']['image_aug']  # a run saved before the flag existed
    run_file.write_text(json.dumps(saved))
    assert read_run(tmp_path, dataclasses.replace(config, steps=10), options())['step'] == 5
    changed = dataclasses.replace(config, steps=10, image_aug=True, lr=5e-4)
    with pytest.raises(FinetuneError, match='image_aug: was False, now True; lr: was 0.001, '
                       'now 0.0005'):
        read_run(tmp_path, changed, options())


# ---- bad input: one line, exit status 2, before any training -----------------------------------
def bad_action_bag(path):
    ts = typestore()
    layout = ts.types['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0)
    message = ts.types['std_msgs/msg/Float64MultiArray'](layout=layout, data=np.zeros(6))
    return make_bag(path, actions=[], raw_messages=[('/vla/action', T0_NS + 3 * MS_NS,
                                                     message)])[0]


@pytest.mark.parametrize('case', ['topics', 'key', 'out', 'lora_only', 'action_dim',
                                  'out_under_a_file', 'out_read_only', 'image_aug',
                                  'aux_object_without_sim_task', 'aux_object_negative',
                                  'read_workers_negative'])
def test_bad_input_is_one_clear_error_before_training(case, base, bags, tmp_path, capsys):
    bag, out, args = bags[0][0], tmp_path / 'out', []
    if case == 'out_under_a_file':
        (tmp_path / 'file').write_text('a regular file: nothing can be made under it')
        out = tmp_path / 'file' / 'out'
        expect = [f'{tmp_path / "file"} is a file, so no directory can be made under it', '--out']
    elif case == 'out_read_only':
        read_only = tmp_path / 'read_only'
        read_only.mkdir(mode=0o500)
        if os.geteuid() == 0:  # root writes anywhere a mode forbids: /proc refuses it too
            read_only = Path('/proc')
        out = read_only / 'run' / 'out'
        expect = [f'cannot write to {read_only}', 'pass --out with a directory you can write to']
    elif case == 'topics':
        args = ['--camera-topics', FRONT, '/cam_side/image_raw']
        expect = ['/cam_side/image_raw is not in bag', '/cam_wrist/image_raw (sensor_msgs']
    elif case == 'image_aug':
        args = ['--image-aug']
        expect = ['--image-aug trains on random 0.9-area crops', 'pass --center-crop too']
    elif case == 'aux_object_without_sim_task':  # a real robot's bag: no simulator status
        args = ['--aux-object', '0.5']
        expect = [f"--aux-object: bag '{bag}' has no /sim/task", 'or leave it out']
    elif case == 'aux_object_negative':
        args = ['--aux-object', '-1']
        expect = ['--aux-object -1.0 must be a weight >= 0']
    elif case == 'read_workers_negative':
        args = ['--read-workers', '-1']
        expect = ['--read-workers -1 must be >= 0']
    elif case == 'key':
        args = ['--unnorm-key', 'synth_oft_libero']
        expect = ["'synth_oft_libero' already exists in the base", 'pass a new key']
    elif case == 'out':
        out.mkdir()
        (out / 'notes.txt').write_text('mine')
        expect = ['is not empty (it holds notes.txt)', '--resume']
    elif case == 'lora_only':
        headless = tmp_path / 'headless'
        shutil.copytree(base, headless, ignore=shutil.ignore_patterns('*checkpoint.pt'))
        args = ['--base', headless, '--lora-only']
        expect = ['has no action_head--<step>_checkpoint.pt', 'drop --lora-only']
    else:
        bag = bad_action_bag(tmp_path / 'six')
        expect = ['records 6-D actions on /vla/action', 'predicts 7-D actions']
    argv = [*data_args(bag), '--base', base, '--out', out, '--unnorm-key', KEY, '--steps', '2',
            *args]
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('vla_finetune: error: '), err
    for text in expect:
        assert text in err[0]
    if case != 'out':
        assert not out.exists()


@pytest.mark.process
def test_reading_processes_give_the_episodes_this_process_reads(base, bags):
    """--read-workers 2: the same episodes, bit for bit and in order, as one process reads."""
    from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
    from vla_ros.training.finetune import read_data
    from vla_ros.training.options import TrainConfig

    policy = OpenVLAOFTPolicy.from_pretrained(base, platform='libero', device='cpu',
                                              dtype='float32', center_crop=True)
    preprocessor = Preprocessor(policy.image_processor, policy.tokenizer, policy.constants,
                                center_crop=True)
    paths = [str(path) for path, _ in bags]
    config = TrainConfig(base=str(base), out='', unnorm_key=KEY, bags=(paths[2], paths[0]),
                         val_bags=(paths[1],), center_crop=True, image_aug=True)
    read = {workers: read_data(dataclasses.replace(config, read_workers=workers), options(),
                               preprocessor) for workers in (1, 2)}
    for one, two in zip(sum(read[1], []), sum(read[2], [])):
        assert one.path == two.path and one.frames.keys() == two.frames.keys()
        for key, frame in one.frames.items():
            assert frame.dtype == two.frames[key].dtype and np.array_equal(frame, two.frames[key])
        for field in ('actions', 'proprio', 'usable'):
            assert np.array_equal(getattr(one, field), getattr(two, field), equal_nan=True)
        assert (one.instructions, one.frame_keys, one.skipped) == \
            (two.instructions, two.frame_keys, two.skipped)
    assert [e.path for e in sum(read[2], [])] == [paths[2], paths[0], paths[1]]
    assert next(iter(read[2][0][0].frames.values())).shape == (224, 224, 3)  # uncropped
    assert next(iter(read[2][1][0].frames.values())).shape[1:] == (224, 224, 3)  # crops


@pytest.mark.process
def test_training_reads_bags_without_evaluation(bags):
    """A bad bag is a RecordingError, and vla_finetune imports nothing of vla_ros.evaluation."""
    side = DataOptions(camera_topics=(FRONT, '/cam_side/image_raw'), proprio=LIBERO_PROPRIO,
                       rate=10.0)
    with pytest.raises(RecordingError, match='/cam_side/image_raw is not in bag'):
        check_bags([bags[0][0]], side, 7)
    probe = ('import sys, vla_ros.training.cli, vla_ros.training.finetune; '
             "print(sorted(m for m in sys.modules if m.startswith('vla_ros.evaluation')))")
    proc = subprocess.run([sys.executable, '-c', probe], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == '[]', proc.stdout + proc.stderr
