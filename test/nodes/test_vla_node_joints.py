"""
vla_node with a joint-space policy (``action_space: joint_position``): OpenVLA-OFT on ALOHA.

The pure tests check the configuration's start-up problems and the messages of one joint
action, with no graph. The DDS tests start the real vla_node with the miniature ALOHA checkpoint
(``vla_tiny_model --oft aloha``); the test is the robot: three small cameras and ALOHA's
joint_states, and every joint command is recomputed with ``OpenVLAOFTPolicy.predict`` here.
"""

import threading
import time
import types

from builtin_interfaces.msg import Time
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

from vla_ros.control.action_layout import joint_chunk_fields
from vla_ros.control.images import ConversionError
from vla_ros.control.joints import ALOHA_ARM, ALOHA_GRIPPER, PRESETS
from vla_ros.nodes import params
from vla_ros.nodes.messages import joint_action_to_messages, rgb_to_image
from vla_ros.nodes.vla_node_config import action_joints, PARAM, policy_problems
from vla_ros.policy import Policy
from vla_ros.sim.scenes import scene

ALOHA = PRESETS['aloha']
UNNORM_KEY = 'synth_oft_aloha'
INSTRUCTION = 'transfer the cube'
CAMERAS = ('cam_high/image_raw', 'cam_left_wrist/image_raw', 'cam_right_wrist/image_raw')
SIZE = 32  # camera images, pixels (OFT resizes each to 224)
FEED_HZ = 10.0
RATE_HZ = 2.0  # a period well above the miniature's inference: every chunk starts at row 0
# The feed's joint_states: the MJCF's joints, fingers mirrored; the state the node must read.
ARM = [0.05, -0.9, 1.1, 0.02, -0.3, 0.01]
FINGER = (0.03, 0.045)  # left_finger (m) of the left and right arm
STATE = np.array([*ARM, (FINGER[0] - ALOHA_GRIPPER[0]) / (ALOHA_GRIPPER[1] - ALOHA_GRIPPER[0]),
                  *ARM, (FINGER[1] - ALOHA_GRIPPER[0]) / (ALOHA_GRIPPER[1] - ALOHA_GRIPPER[0])])
NODE_PARAMS = ('policy:=openvla_oft', 'platform:=aloha', f'camera_topics:=[{", ".join(CAMERAS)}]',
               'proprio:=[aloha]', 'action_space:=joint_position', f'instruction:={INSTRUCTION}',
               f'unnorm_key:={UNNORM_KEY}', 'center_crop:=true')


def config(**values):
    """Return a vla_node configuration with these values over a joint-space OFT ALOHA one."""
    cfg = {'action_space': 'joint_position', 'action_joints': (), 'policy': 'openvla_oft',
           'platform': 'aloha', 'camera_topics': CAMERAS, 'proprio': ('aloha',)}
    return types.SimpleNamespace(**{**cfg, **values})


@pytest.mark.parametrize('values, words', [
    ({'platform': 'libero'}, "parameter 'action_joints' is empty and the platform 'libero' has "
     'no joint preset (presets: OpenVLA-OFT platform aloha); with action_space '
     "'joint_position' name the joint of each action dimension in order, e.g. action_joints:="),
    ({'policy': 'openvla'}, "the policy 'openvla' has no joint preset"),
    ({'action_joints': ('waist', ' gripper: ')}, "parameter 'action_joints': action_joints entry "
     "'gripper:' names no joint; write NAME, or gripper:NAME"),
    ({'action_joints': ('waist', 'gripper:waist')}, "names joint 'waist' twice"),
    ({'action_space': 'ee_delta', 'action_joints': ('waist',)}, "parameter 'action_joints' is "
     "set, but action_space is 'ee_delta'; set action_space:=joint_position, or clear"),
], ids=['no preset', 'no OFT', 'no name', 'twice', 'not joint space'])
def test_joint_lists_that_cannot_work_are_named_with_the_fix(values, words):
    entries, problem = action_joints(config(**values))
    assert entries == () and words in problem


def test_the_joint_list_and_the_action_space_resolve_or_are_refused():
    assert action_joints(config()) == (ALOHA, '')  # empty: the platform's preset
    assert action_joints(config(action_joints=(' a ', 'gripper:b'))) == (('a', 'gripper:b'), '')
    assert action_joints(config(action_space='ee_delta')) == ((), '')
    _, problem = params.check(PARAM['action_space'], 'joint_velocity')
    assert problem == ("parameter 'action_space' is 'joint_velocity'; allowed: 'ee_delta' or "
                       "'joint_position'")


class Aloha(Policy):
    """OFT ALOHA's sizes (three images, 14-D state and actions); never asked to predict."""

    num_images, proprio_dim, action_dim, unnorm_keys = 3, 14, 14, ('k',)

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        raise AssertionError('the check needs no prediction')


def test_an_action_size_other_than_the_joint_lists_fails_with_the_fix():
    assert policy_problems(config(action_joints=ALOHA), Aloha()) == []
    problems = policy_problems(config(action_joints=ALOHA[:7]), Aloha())
    assert problems == ['the policy (Aloha) predicts 14-D actions, but parameter '
                        f"'action_joints' names 7 joint(s) {list(ALOHA[:7])}; give one entry "
                        "per action dimension, in the policy's order (empty: the platform's "
                        'preset)']
    words = "with action_space 'ee_delta' vla_node publishes end-effector deltas"
    problem, = policy_problems(config(action_space='ee_delta'), Aloha())
    assert words in problem and 'set action_space:=joint_position' in problem


def test_a_joint_action_becomes_a_command_a_trajectory_and_the_raw_row():
    rows = np.arange(3 * 14, dtype=np.float64).reshape(3, 14) / 7.0
    stamp = Time(sec=12, nanosec=345)
    out = dict(joint_action_to_messages(ALOHA, rows[0], stamp, rows, 0.04))
    assert list(out) == ['joint_command', 'joint_chunk', 'action']
    command = out['joint_command']
    assert list(command.name) == list(ALOHA) and command.name[6] == ALOHA[6] == (
        'gripper:vx300s_left/left_finger')
    assert np.asarray(command.position).tolist() == rows[0].tolist()  # float64, exact
    assert len(command.velocity) == len(command.effort) == 0
    chunk = out['joint_chunk']
    assert list(chunk.joint_names) == list(ALOHA)
    assert [np.asarray(p.positions).tolist() for p in chunk.points] == rows.tolist()
    assert [(p.time_from_start.sec, p.time_from_start.nanosec) for p in chunk.points] == [
        (0, 0), (0, 40_000_000), (0, 80_000_000)]
    for msg in (command, chunk):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    assert out['action'].layout.dim[0].label == ' '.join(ALOHA)
    assert np.asarray(out['action'].data).tolist() == rows[0].tolist()
    assert [k for k, _ in joint_action_to_messages(ALOHA, rows[1], stamp)] == [
        'joint_command', 'action']  # no plan: not the first row of an open-loop chunk
    assert joint_chunk_fields(ALOHA, rows, 2.5)[1][2][1] == 5_000_000_000
    # timed from the header's stamp (the image's): row 0 leaves 0.3 s after it
    assert [t for _, t in joint_chunk_fields(ALOHA, rows, 0.04, 0.3)[1]] == [
        300_000_000, 340_000_000, 380_000_000]
    for bad in (rows[0, :7], np.full(14, np.nan)):
        with pytest.raises(ConversionError, match='14 finite values'):
            joint_action_to_messages(ALOHA, bad, stamp)


# ---------------------------------------------------------------- over DDS
def images_of(index):
    return [scene(1000 * camera + index, SIZE, SIZE) for camera in range(3)]


@pytest.fixture(scope='module')
def aloha_checkpoint(tmp_path_factory):
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    return str(write_tiny_oft_checkpoint(tmp_path_factory.mktemp('oft') / 'aloha', 'aloha'))


@pytest.fixture(scope='module')
def reference(aloha_checkpoint):
    """Return predict(frame index) -> the (25, 14) chunk the node must compute."""
    from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
    policy = OpenVLAOFTPolicy.from_pretrained(aloha_checkpoint, platform='aloha', device='cpu',
                                              dtype='float32')
    return lambda index: policy.predict(images_of(index), INSTRUCTION, proprio=STATE,
                                        unnorm_key=UNNORM_KEY).values


def joint_state():
    names, positions = [], []
    for side, finger in zip(('left', 'right'), FINGER):
        names += [f'vx300s_{side}/{joint}' for joint in ALOHA_ARM]
        names += [f'vx300s_{side}/left_finger', f'vx300s_{side}/right_finger']
        positions += [*ARM, finger, -finger]
    return JointState(name=names, position=positions)


class Feed:
    """The test's ALOHA: three cameras and joint_states at ``FEED_HZ`` from a thread."""

    def __init__(self, ros):
        self.ros = ros
        self.cameras = [ros.publisher(Image, topic, qos_profile_sensor_data) for topic in CAMERAS]
        self.joints = ros.publisher(JointState, 'joint_states', qos_profile_sensor_data)
        self.sent = {}  # stamp key -> frame index
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        for pub in (*self.cameras, self.joints):
            ros.wait_for_subscribers(pub, timeout=60.0)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(5.0)

    def _run(self):
        index = 0
        while not self._stop.wait(1.0 / FEED_HZ):
            stamp = self.ros.node.get_clock().now().to_msg()
            joints = joint_state()
            joints.header.stamp = stamp
            self.joints.publish(joints)
            self.sent[(stamp.sec, stamp.nanosec)] = index
            for pub, image in zip(self.cameras, images_of(index)):
                pub.publish(rgb_to_image(image, stamp=stamp))
            index += 1


@pytest.mark.dds
def test_joint_commands_and_the_chunk_are_the_policys_rows_stamped_with_the_image(
        ros, launch, aloha_checkpoint, reference):
    from test_vla_node import COMMANDS, stamp_key, start_node
    from trajectory_msgs.msg import JointTrajectory
    from geometry_msgs.msg import PoseStamped
    commands = ros.subscribe(JointState, 'vla/joint_command', COMMANDS)
    chunks = ros.subscribe(JointTrajectory, 'vla/joint_chunk', COMMANDS)
    actions = ros.subscribe(Float64MultiArray, 'vla/action', COMMANDS)
    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', COMMANDS)
    # open_loop executes all 25 rows (12.5 s at 2 Hz): their image may be that old.
    node = start_node(launch, aloha_checkpoint, *NODE_PARAMS, f'control_rate_hz:={RATE_HZ}',
                      'chunk_mode:=open_loop', 'max_image_age:=13.0')
    node.wait_for_output('active', timeout=120.0)
    feed = Feed(ros)
    try:
        commands.wait_for(3, timeout=30.0)
    finally:
        feed.stop()
    chunk, = chunks.wait_for(1)
    key = stamp_key(chunk.header)
    assert key in feed.sent, f'stamp {key} is not the stamp of a published frame triple'
    expected = reference(feed.sent[key])  # (25, 14)
    assert list(chunk.joint_names) == list(ALOHA) and len(chunk.points) == 25
    np.testing.assert_allclose([p.positions for p in chunk.points], expected, rtol=1e-5,
                               atol=1e-7)
    # JTC's meaning: point i is due at the header's stamp (the image's) plus its time: row 0
    # when the node sent it (the image's age then), then one period apart.
    period_ns = int(1e9 / RATE_HZ)
    times = [p.time_from_start.sec * 10**9 + p.time_from_start.nanosec for p in chunk.points]
    assert [t - times[0] for t in times] == pytest.approx(
        [i * period_ns for i in range(25)], abs=1)
    received = commands.stamped[0][0] + time.time() - time.monotonic()  # row 0 here, ROS time
    image = chunk.header.stamp.sec + chunk.header.stamp.nanosec * 1e-9
    assert 0.0 < times[0] * 1e-9 <= received - image + 1e-3, (times[0], received - image)
    assert received - image - times[0] * 1e-9 < 0.5  # delivery to the test, not more
    received = commands.messages[:3]
    for row, msg in enumerate(received):  # rows 0, 1, 2 of the chunk, one per tick
        assert list(msg.name) == list(ALOHA) and stamp_key(msg.header) == key
        assert len(msg.velocity) == len(msg.effort) == 0
        np.testing.assert_allclose(msg.position, expected[row], rtol=1e-5, atol=1e-7)
    ticks = [t for t, _ in commands.stamped[:3]]
    # one per tick at 2 Hz (by their arrival here, which a loaded machine delays one by one)
    assert 0.3 < (ticks[-1] - ticks[0]) / (len(ticks) - 1) < 0.7, ticks
    np.testing.assert_allclose([m.data for m in actions.messages[:3]], expected[:3], rtol=1e-5,
                               atol=1e-7)
    assert actions.messages[0].layout.dim[0].label == ' '.join(ALOHA)
    assert not deltas.messages and len(chunks.messages) == 1  # no deltas; one chunk so far
    # enable: false mid-chunk: the hold is a joint_chunk without points, stamped now, and no
    # row of the chunk follows it.
    from std_srvs.srv import SetBool
    before = ros.node.get_clock().now().nanoseconds
    assert ros.call(SetBool, '/vla_node/enable', SetBool.Request(data=False)).success
    hold = chunks.wait_for(2)[1]
    assert list(hold.joint_names) == list(ALOHA) and not hold.points
    assert hold.header.stamp.sec * 10**9 + hold.header.stamp.nanosec >= before
    count = len(commands.messages)
    time.sleep(1.2)  # more than two 2 Hz ticks
    assert len(commands.messages) == count and len(chunks.messages) == 2
    assert node.alive


@pytest.mark.dds
def test_a_joint_list_shorter_than_the_action_fails_at_start(launch, aloha_checkpoint):
    from test_vla_node import start_node
    node = start_node(launch, aloha_checkpoint, *NODE_PARAMS,
                      f'action_joints:=[{", ".join(repr(e) for e in ALOHA[:7])}]')
    assert node.wait_exit(timeout=120.0) == 1, node.output()
    words = ('the policy (OpenVLA-OFT, platform aloha) predicts 14-D actions, but parameter '
             "'action_joints' names 7 joint(s)")
    assert words in node.output()
    assert 'active' not in node.output().split(words)[-1]
