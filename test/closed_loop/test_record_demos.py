"""vla_record_demos end to end: the expert through arm_bridge and sim_arm; vla_eval reads it."""

import bisect
import json
import signal

import numpy as np
import psutil
import pytest

from vla_ros.closed_loop import record_demos
from vla_ros.control.geometry import quaternion_to_rpy
from vla_ros.recordings.bags import Bag
from vla_ros.sim import tasks
from vla_ros.sim.arm import HOME_POSITION
from vla_ros.sim.expert import ScriptedExpert

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
                        (['--sim-param', 'camera_width=64'], 'NAME:=VALUE'),
                        (['--takeover', '0.3'], 'go with --policy-model'),
                        (['--policy', 'reach'], 'go with --policy-model'),
                        (['--policy-model', str(tmp_path), '--task', 'lift'],
                         'reach corrections only'),
                        (['--policy-model', str(tmp_path / 'nowhere')],
                         'no such checkpoint directory'),
                        (['--policy-model', str(tmp_path), '--takeover', '1.5'],
                         '--takeover must be in [0, 1]')):
        with pytest.raises(SystemExit) as exc:
            record_demos.parse_args(argv)
        assert exc.value.code == 2
        assert words in capsys.readouterr().err


def newest_before(logged, t):
    """Return the message of ``logged`` ((log time, msg), sorted) logged last at or before t."""
    times = [lt for lt, _ in logged]
    return logged[bisect.bisect_right(times, t) - 1][1]


@pytest.mark.dds
def test_corrections_label_the_policy_driven_steps_with_the_expert(launch, tmp_path):
    """Record corrections: the policy drives, each vla/action is the expert's label, trainable."""
    model, out = tmp_path / 'oft', tmp_path / 'corrections'
    assert launch('vla_tiny_model', '--oft', 'libero', model).wait_exit(timeout=120.0) == 0
    rec = launch('vla_record_demos', '--policy-model', model, '--policy', 'openvla_oft',
                 '--takeover', '0.5', '--episodes', '1', '--seconds', '5', '--seed', '7',
                 '--out', out)
    assert rec.wait_exit(timeout=240.0) == 0, rec.output()
    [entry] = json.loads((out / 'episodes.json').read_text())
    assert entry['bag'] == str(out / 'episode_0000'), 'kept, succeeded or not'
    with Bag(out / 'episode_0000') as bag:
        topics = TOPICS + ('/vla/policy_action',)
        logged = {t: [(lt, m) for _, lt, m in bag.messages([t])] for t in topics}
    labels, proposed = logged['/vla/action'], logged['/vla/policy_action']
    assert len(labels) == entry['actions'] >= 8, entry
    episode = tasks.episode(7, 'reach')
    expert = ScriptedExpert('reach', episode.object)
    for t, label in labels:  # the expert's action on the newest state the bag logged before it
        pose = newest_before(logged['/ee_pose'], t).pose
        status = json.loads(newest_before(logged['/sim/task'], t).data)
        q = pose.orientation
        expected = expert.act((pose.position.x, pose.position.y, pose.position.z),
                              status['object_position'], quaternion_to_rpy(q.x, q.y, q.z, q.w),
                              status['object_yaw'], None, status['object_top'])
        assert np.asarray(label.data) == pytest.approx(expected, abs=1e-12)
    # What arm_bridge got: the policy's action, or on a takeover step the expert's label.
    executed = [np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])
                for _, m in logged['/vla/ee_delta']]
    assert len(executed) == len(proposed)
    policy_rows = [np.asarray(m.data)[:3] for _, m in proposed]
    label_rows = {round(lt): np.asarray(m.data)[:3] for lt, m in labels}
    took = [not np.allclose(e, p) for e, p in zip(executed, policy_rows)]
    assert sum(took) == entry['takeovers'] and 0 < sum(took) < len(took), entry
    for (lt, _), e, over in zip(proposed, executed, took):
        if over:
            assert e == pytest.approx(label_rows[round(lt)])
    # vla_finetune trains on the labels as on expert demonstrations.
    stats = launch('vla_finetune', out / 'episode_0000', '--base', model, '--out',
                   tmp_path / 'trained', '--unnorm-key', 'corrections', '--camera-topics',
                   'camera/image_raw', 'wrist_camera/image_raw', '--proprio', 'ee_position',
                   'ee_axis_angle', 'joint:left_finger_joint', 'joint:right_finger_joint',
                   '--rate', '10', '--center-crop', '--stats-only')
    assert stats.wait_exit(timeout=180.0) == 0, stats.output()
    written = json.loads((tmp_path / 'trained' / 'dataset_statistics.json').read_text())
    assert written['corrections']['num_transitions'] >= 8


@pytest.mark.dds
def test_sigterm_stops_the_nodes_and_keeps_the_finished_episodes(launch, tmp_path):
    """Kill (a stopped make target) ends the run as Ctrl-C does: list written, nodes stopped."""
    out = tmp_path / 'demos'
    rec = launch('vla_record_demos', '--episodes', '50', '--seconds', '10', '--seed', '3',
                 '--out', out)
    rec.wait_for_output('episode 0: ', timeout=120.0)
    nodes = psutil.Process(rec.popen.pid).children(recursive=True)
    assert len(nodes) >= 2, 'sim_arm and arm_bridge'
    rec.popen.send_signal(signal.SIGTERM)
    assert rec.wait_exit(timeout=60.0) == 130, rec.output()
    listed = json.loads((out / 'episodes.json').read_text())
    assert listed and [e['episode'] for e in listed] == list(range(len(listed)))
    bags = sorted(p.name for p in out.glob('episode_*'))
    assert bags == [f'episode_{e["episode"]:04d}' for e in listed if e['bag']], \
        'the cut episode leaves no bag'
    gone, alive = psutil.wait_procs(nodes, timeout=5.0)
    assert not alive, [p.cmdline() for p in alive]
