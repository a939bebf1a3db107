"""vla_record_demos --task transfer_cube through the nodes; vla_eval, vla_finetune on its bag."""

import json

import mujoco
import numpy as np
import pytest

from vla_ros.control.joints import PRESETS
from vla_ros.evaluation import cli as eval_cli
from vla_ros.recordings.bags import Bag
from vla_ros.sim import aloha, aloha_expert
from vla_ros.training import cli as finetune_cli

CAMERAS = tuple(f'{camera}/image_raw' for camera in aloha.CAMERAS)
TOPICS = (*(f'/{c}' for c in CAMERAS), '/joint_states', '/sim/task', '/vla/instruction',
          '/vla/action', '/vla/joint_command')
RATE = 25.0
OFT_ALOHA = ['--platform', 'aloha', '--camera-topics', *CAMERAS, '--proprio', 'aloha', '--rate',
             '25']


@pytest.fixture(scope='module')
def tiny_aloha(tmp_path_factory):
    """Write the miniature OpenVLA-OFT ALOHA checkpoint (``vla_tiny_model --oft aloha``)."""
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    return write_tiny_oft_checkpoint(tmp_path_factory.mktemp('oft') / 'aloha', 'aloha')


def stamp_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.mark.dds
def test_the_aloha_expert_is_recorded_through_the_nodes_and_its_bag_replays_and_trains(
        launch, tmp_path, tiny_aloha):
    out = tmp_path / 'demos'
    rec = launch('vla_record_demos', '--task', 'transfer_cube', '--episodes', '1', '--seed', '2',
                 '--seconds', '3', '--keep-failures', '--out', out,
                 '--sim-param', 'camera_width:=64', '--sim-param', 'camera_height:=48')
    assert rec.wait_exit(timeout=90.0) == 0, rec.output()
    entry = json.loads((out / 'episodes.json').read_text())[0]
    bag_path = out / 'episode_0000'
    with Bag(bag_path) as bag:
        missing = [t for t in TOPICS if bag.topics.get(t, (None, 0))[1] == 0]
        assert not missing, bag.describe_topics()
        logged = {t: [(log, m) for _, log, m in bag.messages([t])] for t in TOPICS}
    commands = [m for _, m in logged['/vla/joint_command']]
    assert [m.data for _, m in logged['/vla/instruction']] == [entry['instruction']]
    # Each tick's vla/action is the plan's targets one period after the tick, the plan
    # resampled by time (the first tick starts it), as the plan of what it was planned from.
    model = mujoco.MjModel.from_xml_path(str(aloha.scene_path()))
    inputs = entry['plan_inputs']
    plan = aloha_expert.plan_actions(model, np.asarray(inputs['cube_position']),
                                     inputs['arm_start'])
    times = np.array([log for log, _ in logged['/vla/action']])
    actions = np.array([m.data for _, m in logged['/vla/action']])
    assert actions.shape[1] == 14 and len(actions) >= 5  # 75 on an idle machine
    expected = [aloha_expert.plan_at(plan, (t - times[0]) * 1e-9 + 1.0 / RATE) for t in times]
    assert np.allclose(actions, expected, rtol=0, atol=1e-9)
    assert np.ptp(actions, axis=0).max() > 0.01, 'the arms move'
    # vla/joint_command: PRESETS['aloha']'s entries, the same values, stamped when sent (the
    # plan is the simulator's, not an image's: late frames skip no step of it).
    assert all(tuple(c.name) == PRESETS['aloha'] for c in commands)
    assert np.allclose([c.position for c in commands], actions, rtol=0, atol=0)
    assert all(stamp_ns(c) == log for log, c in logged['/vla/joint_command'])
    assert len(actions) >= 0.8 * 3 * RATE - 25, len(actions)  # every tick of the 3 s
    assert set(logged['/joint_states'][0][1].name) >= set(aloha.JOINTS)
    # vla_eval replays it with the tiny OFT ALOHA: 14 per-dimension errors against vla/action.
    evaluation = tmp_path / 'eval'
    assert eval_cli.main([str(bag_path), '--model', str(tiny_aloha), '--policy', 'openvla_oft',
                          *OFT_ALOHA, '--out', str(evaluation)]) == 0
    metrics = json.loads((evaluation / 'metrics.json').read_text())['overall']['metrics']
    assert metrics['steps_compared'] > 0
    assert list(metrics['mae']) == sorted(PRESETS['aloha'])  # JSON keys are sorted
    assert all(v is not None for v in metrics['mae'].values())
    assert metrics['gripper_agreement'] is None and 'not end-effector' in \
        metrics['ee_metrics_skipped']
    # vla_finetune trains a couple of steps on it; the result predicts (25, 14) chunks.
    tuned = tmp_path / 'tuned'
    assert finetune_cli.main([str(bag_path), '--base', str(tiny_aloha), '--out', str(tuned),
                              '--unnorm-key', 'aloha_demo', *OFT_ALOHA, '--steps', '2',
                              '--batch-size', '2']) == 0
    from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
    policy = OpenVLAOFTPolicy.from_pretrained(tuned, platform='aloha', device='cpu',
                                              dtype='float32')
    rgb = np.zeros((48, 64, 3), np.uint8)
    action = policy.predict([rgb] * 3, entry['instruction'], proprio=np.full(14, 0.5),
                            unnorm_key='aloha_demo')
    assert np.asarray(action.values).shape == (25, 14)
