"""
vla_eval with OpenVLA-OFT: two cameras, ee_pose and joint_states, chunks, and the live node.

The bag is a recorded run of a LIBERO-style robot (``bag_helpers.robot_inputs``): a front and a
wrist camera at 10 Hz, ee_pose and joint_states at 20 Hz, control at 5 Hz, and on vla/action
and vla/action_chunk what a node running the miniature OFT checkpoint published. The expected
actions and chunks are computed here with ``OpenVLAOFTPolicy.predict`` on the frames and state of
each step and the chunk schedule written out by hand (``SCHEDULE``), so vla_eval must match them
exactly; the same bag replayed on /clock through the live vla_node must give them too.
"""

import json
import time

from bag_helpers import (FRONT, LIBERO_PROPRIO, libero_state, read_topic, robot_inputs,
                         rosbags_header, SimTimeReplay, T0_NS, WRIST, WRIST_SCENES, write_bag)
from conftest import REPO
from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray
from test_eval_errors import assert_error, run_eval

from vla_ros.control.action_layout import multiarray_to_chunk
from vla_ros.evaluation import cli, metrics
from vla_ros.evaluation.evaluate import EvalOptions, evaluate_bag
from vla_ros.policy import Action, Policy
from vla_ros.recordings.bags import Bag, JOINT_STATE, typestore
from vla_ros.recordings.steps import Instruction, StepReader
from vla_ros.sim.scenes import scene

UNNORM_KEY = 'synth_oft_libero'
INSTRUCTION = 'put the bowl on the plate'
MS = 1_000_000
STEP_NS = 200 * MS  # 5 Hz control
STEPS = 12
EXECUTE = 3
# open_loop, execute_steps 3, a model that takes no time (vla_eval's latency 0) and vla_node's
# max_image_age 0.5 s. The step that publishes a chunk's last executed row also predicts the next
# chunk, whose row 0 is then for the step after it (2 -> 3, 7 -> 8). But a chunk's rows expire
# 0.5 s after its image: the chunk of step 2 has no row for step 5 (0.6 s later), so step 5
# publishes nothing old and predicts, and its own chunk's row 0 is for step 5 (likewise 10).
# {step that predicts: step of its row 0}.
SCHEDULE = {0: 0, 2: 3, 5: 5, 7: 8, 10: 10}
CONFIG = REPO / 'config' / 'vla.yaml'
COMMANDS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
STATE_TOPICS = ['/ee_pose', '/joint_states']
OFT_ARGS = ['--policy', 'openvla_oft', '--platform', 'libero', '--unnorm-key', UNNORM_KEY,
            '--camera-topics', FRONT, WRIST, '--proprio', *LIBERO_PROPRIO, '--center-crop']


def step_ns(k):
    return T0_NS + k * STEP_NS


def source(k):
    """Return the step whose chunk step k publishes a row of."""
    return max(s for s in SCHEDULE if SCHEDULE[s] <= k)


@pytest.fixture(scope='module')
def oft_checkpoint(tmp_path_factory):
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    return str(write_tiny_oft_checkpoint(tmp_path_factory.mktemp('oft') / 'libero'))


@pytest.fixture(scope='module')
def policy(oft_checkpoint):
    from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
    return OpenVLAOFTPolicy.from_pretrained(oft_checkpoint, platform='libero', center_crop=True,
                                            device='cpu', dtype='float32')


@pytest.fixture(scope='module')
def run(policy, tmp_path_factory):
    """Return the recorded run: its bag, SCHEDULE's chunks (predict) and the published rows."""
    inputs = robot_inputs(STEPS)
    chunks = {}
    for k in SCHEDULE:  # the front frame of step k is 2k, logged exactly at t_k
        images = [scene(2 * k, 64, 48), scene(WRIST_SCENES + 2 * k, 64, 48)]
        chunks[k] = policy.predict(images, INSTRUCTION, proprio=libero_state(inputs, step_ns(k)),
                                   unnorm_key=UNNORM_KEY).values  # (8, 7)
    published = [chunks[source(k)][k - SCHEDULE[source(k)]] for k in range(STEPS)]
    bag = write_bag(
        tmp_path_factory.mktemp('oft_run') / 'run', 'mcap', **inputs,
        instructions=[(T0_NS - MS, INSTRUCTION)],
        actions=[(step_ns(k) + 30 * MS, row) for k, row in enumerate(published)],
        chunks=[(step_ns(k) + 30 * MS, rows) for k, rows in chunks.items()])
    return bag, chunks, np.array(published)


def chunk_metrics(run):
    """Return (compared, mae (L, 7)) per chunk step, written out from the definition."""
    _, chunks, published = run
    compared, mae = [], []
    for j in range(8):
        errors = [np.abs(rows[j] - published[SCHEDULE[k] + j]) for k, rows in chunks.items()
                  if SCHEDULE[k] + j < STEPS]
        compared.append(len(errors))
        mae.append(np.mean(errors, axis=0) if errors else np.full(7, np.nan))
    return compared, np.array(mae)


@pytest.fixture(scope='module')
def evaluated(run, policy):
    bag = run[0]
    options = EvalOptions(camera_topics=(FRONT, WRIST), proprio=LIBERO_PROPRIO,
                          execute_steps=EXECUTE)
    return evaluate_bag(bag, policy, UNNORM_KEY, options, progress=False)


def test_actions_and_chunks_equal_predict_on_each_steps_frames_and_state(run, evaluated):
    _, chunks, published = run
    result = evaluated
    assert result.status == ['ready' if k in SCHEDULE else 'queued' for k in range(STEPS)]
    assert result.valid.all()
    np.testing.assert_array_equal(result.predicted, published)
    assert list(result.chunk_step) == list(SCHEDULE)
    assert list(result.chunk_start) == list(SCHEDULE.values())
    np.testing.assert_array_equal(result.chunks, np.stack(list(chunks.values())))
    assert list(result.image_stamp_ns) == [step_ns(k) for k in range(STEPS)]
    assert list(result.action_stamp_ns) == [step_ns(source(k)) for k in range(STEPS)]
    assert np.isfinite(result.latency_s[list(SCHEDULE)]).all()
    assert np.isnan(np.delete(result.latency_s, list(SCHEDULE))).all()
    np.testing.assert_array_equal(result.reference, published)  # recorded at t_k + 30 ms

    # Per chunk step: chunk c's row j against the reference of step SCHEDULE[c] + j.
    compared, mae = chunk_metrics(run)
    assert compared == [5, 5, 4, 4, 3, 3, 3, 2]
    assert not mae[:2].any() and mae[2:].all()  # rows 0 and 1 are always the published ones
    m = metrics.chunk_steps(*result.chunk_inputs(), np.ones(7))
    assert m['chunk_step_compared'] == compared and m['chunks'] == len(SCHEDULE)
    for j in range(8):
        # Same values, same order; approx only for the order of numpy's pairwise summation.
        assert [m['chunk_step_mae'][j][n] for n in metrics.ACTION_NAMES] == pytest.approx(
            mae[j], rel=1e-12, abs=0)


def test_command_line_metrics_and_predictions_bag(run, oft_checkpoint, tmp_path, capsys):
    bag, chunks, published = run
    out = tmp_path / 'out'
    status = cli.main([str(bag), '--model', oft_checkpoint, *OFT_ARGS, '--execute-steps',
                       str(EXECUTE), '--rate', '5', '--out', str(out), '--write-bag'])
    assert status == 0, capsys.readouterr().err
    data = json.loads((out / 'metrics.json').read_text())
    counts, m = data['overall']['counts'], data['overall']['metrics']
    assert (counts['steps'], counts['predicted'], counts['chunks'], counts['queued']) == (
        STEPS, STEPS, len(SCHEDULE), STEPS - len(SCHEDULE))
    assert m['steps_compared'] == STEPS and all(v == 0.0 for v in m['mae'].values())
    compared, mae = chunk_metrics(run)
    action_range = np.array(data['config']['action_range'])
    assert m['chunk_step_compared'] == compared and m['chunk_len'] == 8
    for j in range(8):
        assert [m['chunk_step_mae'][j][n] for n in metrics.ACTION_NAMES] == pytest.approx(
            mae[j], rel=1e-12, abs=0)
        assert m['chunk_step_mae_normalized_mean'][j] == pytest.approx(
            np.mean(mae[j] / action_range), rel=1e-12, abs=1e-300)
    config = data['config']
    assert config['camera_topics'] == [FRONT, WRIST] and config['policy'] == 'openvla_oft'
    assert config['proprio'] == list(LIBERO_PROPRIO) and config['execute_steps'] == EXECUTE
    summary = (out / 'summary.md').read_text()
    assert '## Error per chunk step' in summary and f'`{WRIST}`' in summary

    # --write-bag: every committed chunk and every action, at its step's log time.
    predictions = out / 'predictions_run'
    written = read_topic(predictions, '/vla/action_chunk')
    assert [log_ns for log_ns, _ in written] == [step_ns(k) for k in SCHEDULE]
    for (_, msg), rows in zip(written, chunks.values()):
        np.testing.assert_array_equal(multiarray_to_chunk(msg), rows)
    actions = read_topic(predictions, '/vla/action')
    assert [log_ns for log_ns, _ in actions] == [step_ns(k) for k in range(STEPS)]
    np.testing.assert_array_equal([msg.data for _, msg in actions], published)
    deltas = read_topic(predictions, '/vla/ee_delta')
    assert [d.header.stamp.sec * 10**9 + d.header.stamp.nanosec for _, d in deltas] == [
        step_ns(source(k)) for k in range(STEPS)]  # the front frame its chunk came from


@pytest.mark.dds
def test_sim_time_replay_through_vla_node_equals_vla_eval(ros, launch, oft_checkpoint, run,
                                                          evaluated):
    """The live node on /clock, fed the bag's cameras, state and instruction, tick by tick."""
    bag = run[0]
    result = evaluated
    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', COMMANDS)
    actions = ros.subscribe(Float64MultiArray, 'vla/action', COMMANDS)
    chunks = ros.subscribe(Float64MultiArray, 'vla/action_chunk', COMMANDS)
    replay = SimTimeReplay(ros.node, bag, topics=[FRONT, WRIST, *STATE_TOPICS,
                                                  '/vla/instruction'])
    node = launch('vla_node', '--ros-args', '--params-file', CONFIG,
                  '-p', f'model_path:={oft_checkpoint}', '-p', f'unnorm_key:={UNNORM_KEY}',
                  '-p', 'use_sim_time:=true', '-p', 'control_rate_hz:=5.0',
                  '-p', 'device:=cpu', '-p', 'dtype:=float32', '-p', 'policy:=openvla_oft',
                  '-p', 'platform:=libero', '-p', f'camera_topics:=[{FRONT}, {WRIST}]',
                  '-p', "proprio:=[ee_position, ee_axis_angle, 'joint:finger_left', "
                  "'joint:finger_right']", '-p', 'chunk_mode:=open_loop',
                  '-p', f'execute_steps:={EXECUTE}', '-p', 'max_camera_skew:=0.05',
                  '-p', 'max_proprio_age:=0.2', '-p', 'center_crop:=true')
    node.wait_for_output('active', timeout=120.0)
    for pub in [*replay.publishers.values(), replay.clock_pub]:
        ros.wait_for_subscribers(pub, timeout=30.0)
    replay.publish_clock(T0_NS - 10**9)  # on the 0.2 s grid, like the timer's start time
    time.sleep(0.3)
    for k, t_ns in enumerate(result.time_ns):
        replay.tick(int(t_ns))
        # Latency 0, as vla_eval: the clock moves on only once the step's outputs are out.
        chunks.wait_for(int(np.sum(result.chunk_step <= k)), timeout=60.0)
        actions.wait_for(int(result.valid[:k + 1].sum()), timeout=60.0)
    time.sleep(0.5)  # nothing else may arrive

    received = actions.messages
    assert len(received) == int(result.valid.sum())
    np.testing.assert_array_equal([np.asarray(a.data) for a in received],
                                  result.predicted[result.valid])
    assert [d.header.stamp.sec * 10**9 + d.header.stamp.nanosec for d in deltas.messages] == \
        list(result.action_stamp_ns[result.valid])
    assert len(chunks.messages) == len(result.chunk_step)
    for msg, rows in zip(chunks.messages, result.chunks):
        np.testing.assert_array_equal(multiarray_to_chunk(msg), rows)


# ---------------------------------------------------------------- cameras and state, stub policy
class StubChunkPolicy(Policy):
    """A two-camera, 8-D state policy returning 4-row chunks; records what each call got."""

    num_images, proprio_dim, action_dim, chunk_len = 2, 8, 7, 4
    unnorm_keys = ('k',)

    def __init__(self):
        self.calls = []
        self._scenes = {i: scene(i, 64, 48) for i in [*range(20), *range(100, 120)]}

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        indices = tuple(next(i for i, s in self._scenes.items() if np.array_equal(s, image))
                        for image in images)
        self.calls.append((indices, np.array(proprio)))
        rows = len(self.calls) * 10.0 + np.arange(28, dtype=np.float64).reshape(4, 7) * 1e-3
        return Action(values=rows, valid=True, token_ids=np.zeros(0, np.int64), normalized=rows)


def stub_bag(path):
    """Six steps: no wrist frame, no pose, an old joint state, skewed cameras, then all good."""
    front = [(step_ns(k), k, step_ns(k)) for k in range(6)]
    wrist = [(step_ns(k) - 10 * MS, 100 + k, step_ns(k) - (90 if k == 3 else 10) * MS)
             for k in range(1, 6)]
    wrist.append((step_ns(2) + 50 * MS, 119, step_ns(2) + 50 * MS))  # superseded: never used
    poses = [(step_ns(k) - 5 * MS, (0.1 * k, 0.0, 0.5), (0.0, 0.2, 0.0)) for k in range(2, 6)]
    joints = [(step_ns(k) - 5 * MS, step_ns(k) - 5 * MS, {'finger_left': 0.01 * k,
                                                          'finger_right': -0.01 * k})
              for k in (-1, 4)]
    inputs = {'cameras': {FRONT: front, WRIST: wrist}, 'poses': poses, 'joint_states': joints}
    return write_bag(path, 'sqlite3', **inputs, instructions=[(T0_NS - MS, INSTRUCTION)]), inputs


def test_each_step_sees_every_cameras_newest_frame_and_state_as_the_core_judges(
        tmp_path, monkeypatch):
    from vla_ros.control import images
    decoded = []
    original = images.image_to_rgb
    monkeypatch.setattr(images, 'image_to_rgb', lambda msg: decoded.append(1) or original(msg))
    bag, inputs = stub_bag(tmp_path / 'bag')
    policy = StubChunkPolicy()
    options = EvalOptions(camera_topics=(FRONT, WRIST), proprio=LIBERO_PROPRIO,
                          reference='none')
    result = evaluate_bag(bag, policy, 'k', options, progress=False)
    assert result.status == ['stale', 'bad_state', 'stale', 'skewed', 'ready', 'queued']
    assert result.reasons == {
        'stale': f'no image received on {WRIST} yet',
        'bad_state': 'no pose received on /ee_pose yet',
        'skewed': f'cameras stamped 0.090 s apart (max_camera_skew 0.05 s); {WRIST} lags'}
    assert len(decoded) == 6 + 5  # each frame a step uses, once; the superseded one never
    assert [c[0] for c in policy.calls] == [(4, 104)]
    np.testing.assert_array_equal(policy.calls[0][1], libero_state(inputs, step_ns(4)))
    np.testing.assert_array_equal(result.predicted[4:], policy_rows(1)[:2])

    # The core's limits are the options: no skew limit, no state age limit.
    loose = evaluate_bag(bag, StubChunkPolicy(), 'k', EvalOptions(
        camera_topics=(FRONT, WRIST), proprio=LIBERO_PROPRIO, reference='none',
        max_camera_skew=float('inf'), max_proprio_age=0), progress=False)
    # Step 5 predicts again: the chunk of step 2 expired 0.5 s (max_image_age) after its image.
    assert loose.status == ['stale', 'bad_state', 'ready', 'queued', 'queued', 'ready']


def test_a_wrist_frame_logged_after_the_step_pairs_with_the_front_frame_of_its_stamp(tmp_path):
    """Cameras sharing a trigger: the step uses the newest pair with one stamp, as the node."""
    stamp = [step_ns(k) - 20 * MS for k in range(4)]
    front = [(stamp[k], k, stamp[k]) for k in range(4)]
    wrist = [(step_ns(k) + 5 * MS, 100 + k, stamp[k]) for k in range(4)]  # after step k
    poses = [(step_ns(k) - 30 * MS, (0.1 * k, 0.0, 0.5), (0.0, 0.2, 0.0)) for k in range(4)]
    joints = [(step_ns(k) - 30 * MS, step_ns(k) - 30 * MS,
               {'finger_left': 0.01, 'finger_right': -0.01}) for k in range(4)]
    bag = write_bag(tmp_path / 'bag', 'mcap', cameras={FRONT: front, WRIST: wrist}, poses=poses,
                    joint_states=joints, instructions=[(T0_NS - 50 * MS, INSTRUCTION)])
    options = {'camera_topics': (FRONT, WRIST), 'proprio': LIBERO_PROPRIO, 'reference': 'none',
               'execute_steps': 1}
    policy = StubChunkPolicy()
    result = evaluate_bag(bag, policy, 'k', EvalOptions(**options), progress=False)
    assert result.status == ['stale', 'ready', 'ready', 'ready']
    assert [c[0] for c in policy.calls] == [(0, 100), (1, 101), (2, 102)]
    # Unpaired (no skew limit), each step took the front frame next to the previous wrist frame.
    policy = StubChunkPolicy()
    evaluate_bag(bag, policy, 'k', EvalOptions(**options, max_camera_skew=float('inf')),
                 progress=False)
    assert [c[0] for c in policy.calls] == [(1, 100), (2, 101), (3, 102)]


def policy_rows(call):
    return call * 10.0 + np.arange(28, dtype=np.float64).reshape(4, 7) * 1e-3


def test_receding_chunks_start_at_the_step_after_one_that_published(tmp_path):
    """A row 0 is for the next step when the predicting step already published a row."""
    inputs = robot_inputs(5)
    bag = write_bag(tmp_path / 'bag', 'mcap', **inputs,
                    instructions=[(T0_NS - MS, INSTRUCTION)])
    result = evaluate_bag(bag, StubChunkPolicy(), 'k', EvalOptions(
        camera_topics=(FRONT, WRIST), proprio=LIBERO_PROPRIO, reference='none',
        chunk_mode='receding'), progress=False)
    assert result.status == ['ready'] * 5
    assert list(result.chunk_start) == [0, 2, 3, 4, 5]
    # Step 0 publishes row 0 of its own chunk, step 1 row 1 of it, step k >= 2 row 0 of the
    # chunk predicted at step k - 1.
    np.testing.assert_array_equal(result.predicted, [policy_rows(1)[0], policy_rows(1)[1],
                                                     policy_rows(2)[0], policy_rows(3)[0],
                                                     policy_rows(4)[0]])


def malformed_state_bag(path):
    """
    Four steps; the state of steps 0 to 2 is one vla_node refuses, step 3's is good.

    Step 0: a JointState with 3 names and 2 positions (zipped, the fingers would fit); step 1:
    finger_left named twice; step 2: the ee_pose in frame 'world'.
    """
    ts = typestore()
    front = [(step_ns(k), k, step_ns(k)) for k in range(4)]
    wrist = [(step_ns(k) - 10 * MS, 100 + k, step_ns(k) - 10 * MS) for k in range(4)]
    joints = [(['finger_left', 'finger_right', 'shoulder'], [0.01, -0.01]),
              (['finger_left', 'finger_right', 'finger_left'], [0.01, -0.01, 0.03]),
              (['finger_left', 'finger_right'], [0.02, -0.02]),
              (['finger_left', 'finger_right'], [0.03, -0.03])]
    raw = []
    for k, (names, positions) in enumerate(joints):
        log = step_ns(k) - 5 * MS
        pose = ts.types['geometry_msgs/msg/Pose'](
            position=ts.types['geometry_msgs/msg/Point'](x=0.1 * k, y=0.0, z=0.5),
            orientation=ts.types['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0))
        raw.append(('/ee_pose', log, ts.types['geometry_msgs/msg/PoseStamped'](
            header=rosbags_header(log, 'world' if k == 2 else 'base_link'), pose=pose)))
        raw.append(('/joint_states', log, ts.types['sensor_msgs/msg/JointState'](
            header=rosbags_header(log, ''), name=names, position=np.array(positions),
            velocity=np.zeros(0), effort=np.zeros(0))))
    return write_bag(path, 'mcap', cameras={FRONT: front, WRIST: wrist}, raw_messages=raw,
                     instructions=[(T0_NS - MS, INSTRUCTION)])


def test_a_state_the_node_refuses_is_a_bad_state_offline_too(tmp_path):
    """Malformed joint states and a pose in another frame, read by the node's own readers."""
    bag = malformed_state_bag(tmp_path / 'bag')
    options = EvalOptions(camera_topics=(FRONT, WRIST), proprio=LIBERO_PROPRIO,
                          reference='none')
    policy = StubChunkPolicy()
    result = evaluate_bag(bag, policy, 'k', options, progress=False)
    assert result.status == ['bad_state', 'bad_state', 'bad_state', 'ready']
    assert result.reasons['bad_state'].startswith('/joint_states has 3 names but 2 positions')
    assert [c[0] for c in policy.calls] == [(3, 103)]
    with Bag(bag) as opened:
        steps = [e for e in StepReader(opened, options.cameras(), options.topics(), 5.0,
                                       layout=options.layout()) if not isinstance(e, Instruction)]
    assert [s.state.problem for s in steps] == [
        '/joint_states has 3 names but 2 positions; publish one position per joint name',
        "/joint_states names joint 'finger_left' more than once; publish each joint once",
        "/ee_pose is in frame 'world', expected 'base_link' (--action-frame, the base frame of "
        "the deltas); publish /ee_pose in 'base_link' or set --action-frame to the frame it is "
        'in', '']
    # --action-frame names the frame the recording's poses are in.
    world = evaluate_bag(bag, StubChunkPolicy(), 'k', EvalOptions(
        camera_topics=(FRONT, WRIST), proprio=LIBERO_PROPRIO, reference='none',
        action_frame='world'), progress=False)
    assert world.status == ['bad_state', 'bad_state', 'ready', 'queued']


# ---------------------------------------------------------------- bad input
def robot_bag(path, **overrides):
    inputs = robot_inputs(3)
    inputs.update(overrides)
    return write_bag(path, 'sqlite3', **inputs, instructions=[(T0_NS - MS, INSTRUCTION)])


def test_cameras_state_and_policy_that_do_not_fit(capsys, tmp_path, oft_checkpoint):
    bag = robot_bag(tmp_path / 'bag')
    out = tmp_path / 'out'
    status, err = run_eval(capsys, bag, '--reference', 'none', *OFT_ARGS[:6], '--image-topic',
                           FRONT, '--proprio', *LIBERO_PROPRIO, model=oft_checkpoint, out=out)
    assert_error(status, err, f'1 camera topic(s) {FRONT}, but the policy (OpenVLA-OFT, '
                 'platform libero) takes 2 image(s)', 'list one topic per image with '
                 '--camera-topics, the primary camera first')
    status, err = run_eval(capsys, bag, '--reference', 'none', *OFT_ARGS[:9], '--proprio',
                           'ee_position', model=oft_checkpoint, out=out)
    assert_error(status, err, '--proprio ee_position gives 3 state values, but the policy',
                 'needs 8 state values', '--proprio ee_position ee_axis_angle joint:<left')
    status, err = run_eval(capsys, bag, '--reference', 'none', *OFT_ARGS[:9],
                           model=oft_checkpoint, out=out)
    assert_error(status, err, 'no --proprio gives 0 state values', 'needs 8 state values')


def test_one_image_policy_with_two_cameras(capsys, tmp_path, tiny_checkpoint):
    bag = robot_bag(tmp_path / 'bag')
    status, err = run_eval(capsys, bag, '--reference', 'none', '--unnorm-key', 'synth_bridge',
                           '--camera-topics', FRONT, WRIST, model=tiny_checkpoint,
                           out=tmp_path / 'out')
    assert_error(status, err, f'2 camera topic(s) {FRONT}, {WRIST}, but the policy '
                 '(OpenVLAPolicy) takes 1 image(s)', 'pass one --image-topic')


def test_bad_state_options_fail_before_the_model_loads(capsys, tmp_path):
    """No model is loaded ('unused-model-dir'): the bag and options are checked first."""
    out = tmp_path / 'out'
    bag = robot_bag(tmp_path / 'bag')
    cameras = ['--reference', 'none', '--camera-topics', FRONT, WRIST]
    status, err = run_eval(capsys, bag, *cameras, '--proprio', 'ee_position', 'gripper',
                           out=out)
    assert_error(status, err, "--proprio: unknown proprio entries ['gripper']",
                 'ee_quaternion, joint:NAME, gripper:NAME and the preset aloha',
                 'e.g. --proprio ee_position ee_axis_angle')
    no_joints = robot_bag(tmp_path / 'no_joints', joint_states=())
    status, err = run_eval(capsys, no_joints, *cameras, '--proprio', *LIBERO_PROPRIO, out=out)
    assert_error(status, err, 'joint states (the state of --proprio joint:finger_left '
                 'joint:finger_right) topic /joint_states is not in bag', '--joint-states-topic T',
                 f'{FRONT} (sensor_msgs/msg/Image, 5 msgs)')
    no_pose = robot_bag(tmp_path / 'no_pose', poses=())
    status, err = run_eval(capsys, no_pose, *cameras, '--proprio', *LIBERO_PROPRIO, out=out)
    assert_error(status, err, 'ee_pose (the state of --proprio ee_position ee_axis_angle) topic '
                 '/ee_pose is not in bag', '--ee-pose-topic T')
    status, err = run_eval(capsys, bag, *cameras, '--proprio', 'ee_position', 'joint:thumb',
                           out=out)
    assert_error(status, err, 'the joint states on /joint_states in bag', 'have no position of '
                 'joint thumb (--proprio joint:thumb)', 'names: finger_left, wrist_joint, '
                 'finger_right', '--joint-states-topic')
    status, err = run_eval(capsys, bag, *cameras, '--proprio', *LIBERO_PROPRIO,
                           '--joint-states-topic', '/ee_pose', out=out)
    assert_error(status, err, f'topic /ee_pose in bag {str(bag)!r} has type '
                 f'geometry_msgs/msg/PoseStamped, expected {JOINT_STATE}')
    status, err = run_eval(capsys, bag, '--camera-topics', FRONT, FRONT[1:], out=out)
    assert_error(status, err, f'--camera-topics lists {FRONT} more than once')
    status, err = run_eval(capsys, bag, '--camera-topics', FRONT, '/cam_side/image_raw',
                           out=out)
    assert_error(status, err, 'image topic /cam_side/image_raw is not in bag',
                 '--camera-topics T1 T2')
    status, err = run_eval(capsys, bag, *cameras, '--execute-steps', '-1', out=out)
    assert_error(status, err, '--execute-steps -1 must be >= 0')


def test_camera_topics_are_named_as_vla_nodes_parameter():
    options = EvalOptions(camera_topics=('cam_front/image_raw', '/cam_wrist/image_raw/compressed'),
                          compressed=True)
    assert options.cameras() == ('/cam_front/image_raw/compressed',
                                 '/cam_wrist/image_raw/compressed')
    assert EvalOptions(image_topic='/front/jpeg', compressed=True).cameras() == ('/front/jpeg',)
    assert EvalOptions(compressed=True).cameras() == ('/camera/image_raw/compressed',)
