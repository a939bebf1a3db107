"""vla_record_demos end to end: the expert through arm_bridge and sim_arm; vla_eval reads it."""

import json

import numpy as np
import pytest

from vla_ros.closed_loop import record_demos
from vla_ros.recordings.bags import Bag
from vla_ros.sim import tasks
from vla_ros.sim.arm import HOME_POSITION

TOPICS = ('/camera/image_raw', '/wrist_camera/image_raw', '/ee_pose', '/joint_states',
          '/vla/instruction', '/vla/action', '/vla/ee_delta', '/vla/gripper', '/sim/task')


def stamp_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.mark.dds
def test_records_two_successful_expert_episodes_that_vla_eval_replays(launch, tmp_path):
    out = tmp_path / 'demos'
    rec = launch('vla_record_demos', '--episodes', '2', '--seconds', '10', '--seed', '3',
                 '--start-spread', '0.06', '--out', out)
    assert rec.wait_exit(timeout=120.0) == 0, rec.output()
    assert '2/2 episodes succeeded' in rec.output()
    listed = json.loads((out / 'episodes.json').read_text())
    assert [e['seed'] for e in listed] == [3, 4] and all(e['success'] for e in listed)
    for entry in listed:
        episode = tasks.episode(entry['seed'], 'reach')
        bag_path = out / f'episode_{entry["episode"]:04d}'
        assert entry['bag'] == str(bag_path) and entry['object'] == episode.object
        with Bag(bag_path) as bag:
            assert bag.storage == 'mcap'
            missing = [t for t in TOPICS if bag.topics.get(t, (None, 0))[1] == 0]
            assert not missing, bag.describe_topics()
            messages = {t: [m for _, _, m in bag.messages([t])] for t in TOPICS}
            first_topic = next(bag.messages(TOPICS))[0]
        assert [m.data for m in messages['/vla/instruction']] == [episode.instruction]
        assert first_topic == '/vla/instruction', 'the instruction is logged first'
        # Every command acted on a recorded image and carries its stamp, as vla_node's do.
        images = {stamp_ns(m) for m in messages['/camera/image_raw']}
        deltas = messages['/vla/ee_delta']
        assert all(stamp_ns(d) in images for d in deltas)
        assert all(d.header.frame_id == 'base_link' for d in deltas)
        actions = np.array([np.asarray(m.data) for m in messages['/vla/action']])
        assert actions.shape == (len(deltas), 7)
        assert np.abs(actions[:, :3]).max() <= 0.05 and np.abs(actions[:, 3:6]).max() <= 0.25
        assert np.all(actions[:, 6] == 1.0)
        assert [d.pose.position.x for d in deltas] == pytest.approx(actions[:, 0])
        # Nothing from before the reset: the first pose is the seed's start (home moved by
        # start_spread), the last task state a success.
        first = messages['/ee_pose'][0].pose.position
        start = HOME_POSITION + tasks.start_offset(entry['seed'], 0.06)
        assert np.allclose([first.x, first.y, first.z], start, atol=0.005)
        assert np.linalg.norm(start - HOME_POSITION) > 0.02
        statuses = [json.loads(m.data) for m in messages['/sim/task']]
        assert {s['seed'] for s in statuses} == {entry['seed']}
        assert statuses[-1]['success'] and statuses[-1]['object'] == episode.object
    # The expert's bags replay through vla_eval, with the recorded actions as the reference.
    model = tmp_path / 'tiny'
    assert launch('vla_tiny_model', model).wait_exit(timeout=120.0) == 0
    evaluation = launch('vla_eval', out / 'episode_0000', '--model', model, '--unnorm-key',
                        'synth_bridge', '--camera-topics', 'camera/image_raw', '--reference',
                        'action', '--out', tmp_path / 'eval')
    assert evaluation.wait_exit(timeout=180.0) == 0, evaluation.output()
    counts = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())[
        'bags']['episode_0000']['counts']
    assert counts['predicted'] >= 5 and counts['no_reference'] < counts['steps'], counts


def test_bad_options_are_refused_before_anything_starts(tmp_path, capsys):
    (tmp_path / 'episode_0000').mkdir()
    for argv, words in ((['--out', str(tmp_path)], 'already holds episodes'),
                        (['--episodes', '0'], '--episodes must be >= 1'),
                        (['--start-spread', '0.5'], '--start-spread must be in [0, 0.1]'),
                        (['--task', 'push'], "invalid choice: 'push'"),
                        (['--sim-param', 'camera_width=64'], 'NAME:=VALUE')):
        with pytest.raises(SystemExit) as exc:
            record_demos.parse_args(argv)
        assert exc.value.code == 2
        assert words in capsys.readouterr().err
