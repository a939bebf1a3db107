"""
Pure tests of control.readers: every field read alike from rclpy and rosbags messages, no graph.

The live node gets rclpy messages, vla_eval and vla_finetune get rosbags messages of the same
recording: each reader must give the same value, or refuse with the same words, for both.
"""

import math

from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from vla_ros.control.images import ConversionError
from vla_ros.control.joints import ALOHA_ARM, ALOHA_GRIPPER, GripperRange
from vla_ros.control.readers import (header_stamp_ns_from_cdr, ns_to_seconds, read_joints,
                                     read_pose, stamp_ns, stamp_seconds, string_from_cdr)
from vla_ros.control.state import StateLayout
from vla_ros.recordings.bags import to_rosbags, typestore

LAYOUT = ('ee_position', 'ee_quaternion', 'joint:finger_left')


def pose_message(frame='base_link', sec=1_700_000_123, nanosec=456_789_012):
    msg = PoseStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = 0.4, -0.1, 0.3
    msg.pose.orientation.z, msg.pose.orientation.w = math.sin(0.2), math.cos(0.2)
    return msg


def joint_message(names, positions, sec=1_700_000_123, nanosec=5):
    msg = JointState()
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.name, msg.position = list(names), [float(p) for p in positions]
    return msg


def both(msg):
    """Return the rclpy message and its copy as the bag reader has it (rosbags, through CDR)."""
    ts = typestore()
    copy = to_rosbags(msg)
    return msg, ts.deserialize_cdr(ts.serialize_cdr(copy, copy.__msgtype__), copy.__msgtype__)


def outcome(read, *args):
    try:
        return read(*args)
    except ConversionError as exc:
        return f'refused: {exc}'


@pytest.mark.parametrize('sec, nanosec', [(0, 0), (1_700_000_123, 999_999_999), (-3, 250),
                                          (12, 1)])
def test_a_stamp_is_one_float_live_and_offline(sec, nanosec):
    live, offline = both(pose_message(sec=sec, nanosec=nanosec))
    # The node's own arithmetic, sec + nanosec * 1e-9, from either message or from ns.
    expected = sec + nanosec * 1e-9
    assert stamp_seconds(live.header.stamp) == stamp_seconds(offline.header.stamp) == expected
    assert stamp_ns(offline.header.stamp) == sec * 10**9 + nanosec
    assert ns_to_seconds(np.int64(stamp_ns(live.header.stamp))) == expected


def test_header_stamp_is_read_from_serialized_messages():
    for msg in (Image(), JointState()):
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_123, 456_789
        assert header_stamp_ns_from_cdr(serialize_message(msg)) == \
            1_700_000_123 * 10**9 + 456_789


@pytest.mark.parametrize('frame', ['base_link', '/base_link'])
def test_a_pose_in_the_deltas_frame_reads_alike(frame):
    values = [read_pose(m, 'base_link') for m in both(pose_message(frame))]
    assert values[0] == values[1]
    position, quaternion, stamp = values[0]
    assert position == (0.4, -0.1, 0.3)
    assert quaternion == (0.0, 0.0, math.sin(0.2), math.cos(0.2))
    assert stamp == 1_700_000_123 + 456_789_012 * 1e-9
    assert read_pose(pose_message('world')) == values[0]  # no frame asked for: any


@pytest.mark.parametrize('frame', ['world', '', 'base_link_2'])
def test_a_pose_in_another_frame_is_refused_naming_both_frames_and_the_setting(frame):
    results = {outcome(read_pose, m, 'base_link', '/ee_pose') for m in both(pose_message(frame))}
    assert results == {f"refused: /ee_pose is in frame {frame!r}, expected 'base_link' "
                       "(parameter 'action_frame', the base frame of the deltas); publish "
                       "/ee_pose in 'base_link' or set parameter 'action_frame' to the frame it "
                       'is in'}
    assert '--action-frame' in outcome(read_pose, pose_message(frame), 'base_link', 'ee_pose',
                                       '--action-frame')


@pytest.mark.parametrize('names, positions, problem', [
    (['a', 'b', 'c'], [0.1, 0.2], '/joint_states has 3 names but 2 positions; publish one '
     'position per joint name'),
    (['a'], [], '/joint_states has 1 names but 0 positions'),
    (['a', 'b', 'a', 'c', 'b'], [1, 2, 3, 4, 5], "/joint_states names joint 'a', 'b' more than "
     'once; publish each joint once'),
])
def test_malformed_joint_states_are_refused_alike(names, positions, problem):
    results = {outcome(read_joints, m, '/joint_states')
               for m in both(joint_message(names, positions))}
    assert len(results) == 1
    assert results.pop().startswith(f'refused: {problem}')


def test_joint_states_read_alike_and_keep_nan_for_the_layout():
    live, offline = (read_joints(m) for m in both(joint_message(['a', 'b'], [0.5, math.nan])))
    assert live[1] == offline[1] == 1_700_000_123 + 5e-9
    assert live[0]['a'] == offline[0]['a'] == 0.5
    assert math.isnan(live[0]['b']) and math.isnan(offline[0]['b'])


def test_the_state_is_read_alike_and_a_refused_message_is_its_problem():
    layout = StateLayout(LAYOUT)
    good = joint_message(['shoulder', 'finger_left'], [math.nan, 0.02])  # NaN: unused joint
    for pose, joints in zip(both(pose_message()), both(good)):
        state = layout.read(pose, joints, '/ee_pose', '/joint_states', 'base_link')
        assert not state.problem
        np.testing.assert_array_equal(state.values, [0.4, -0.1, 0.3, 0.0, 0.0, math.sin(0.2),
                                                     math.cos(0.2), 0.02])
    # A refused message has no values; an assembled state holding NaN keeps its values (for
    # vla_finetune's count of non-finite states) beside its problem.
    cases = [(pose_message('odom'), good, "/ee_pose is in frame 'odom'", False),
             (pose_message(), joint_message(['finger_left', 'finger_left'], [0.0, 0.1]),
              "names joint 'finger_left' more than once", False),
             (pose_message(), joint_message(['finger_left'], [math.nan]),
              'non-finite state values in joint:finger_left', True),
             (None, good, 'no pose received on /ee_pose yet', False)]
    for pose, joints, problem, assembled in cases:
        for p, j in zip(both(pose) if pose else (None, None), both(joints)):
            state = layout.read(p, j, '/ee_pose', '/joint_states', 'base_link')
            assert problem in state.problem
            assert (state.values is not None) == assembled


ALOHA_POSITIONS = {f'vx300s_{side}/{joint}': 0.1 * i + (0.05 if side == 'right' else 0.0)
                   for side in ('left', 'right') for i, joint in enumerate(ALOHA_ARM)}


def test_the_aloha_preset_reads_both_arms_and_normalises_the_grippers():
    """``aloha``: 6 joints then the gripper (0 closed .. 1 open) per arm, from joint_states."""
    layout = StateLayout(['aloha'])
    assert layout.dim == 14 and layout.entries[6] == 'gripper:vx300s_left/left_finger'
    closed, opened = ALOHA_GRIPPER
    positions = {**ALOHA_POSITIONS, 'vx300s_left/left_finger': closed,
                 'vx300s_left/right_finger': -closed,
                 'vx300s_right/left_finger': closed + 0.25 * (opened - closed)}
    expected = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.25]
    for joints in both(joint_message(list(positions), list(positions.values()))):
        state = layout.read(None, joints, joint_source='/joint_states')
        assert not state.problem
        np.testing.assert_allclose(state.values, expected, rtol=0, atol=1e-12)
    # gripper:NAME alone, with another range; a joint:NAME of the same finger reads metres.
    other = StateLayout(['gripper:finger', 'joint:finger'], gripper=GripperRange(0.0, 0.08))
    state = other.read(None, joint_message(['finger'], [0.06]))
    np.testing.assert_allclose(state.values, [0.75, 0.06])


def test_a_missing_gripper_joint_is_a_bad_state_naming_it():
    layout = StateLayout(['aloha'])
    names = list(ALOHA_POSITIONS) + ['vx300s_left/left_finger']  # no right gripper
    for joints in both(joint_message(names, [0.0] * len(names))):
        state = layout.read(None, joints, joint_source='/joint_states')
        assert state.values is None
        assert state.problem.startswith('/joint_states has no joint vx300s_right/left_finger')
        assert 'fix the proprio parameter' in state.problem
    for bad in (['gripper:'], ['alohaa'], ['joint:']):
        with pytest.raises(ValueError, match='unknown proprio entries .* gripper:NAME'):
            StateLayout(bad)


@pytest.mark.parametrize('text', ['', 'pick up the red cup', 'grüne Tasse ✓', 'x' * 5000])
def test_string_from_cdr_round_trip(text):
    assert string_from_cdr(serialize_message(String(data=text))) == text


@pytest.mark.parametrize('raw, problem', [
    (b'\x00\x01\x00\x00' + (6).to_bytes(4, 'little') + b'\xff\xfe\xfd!!\x00', 'not valid UTF-8'),
    (b'\x00\x01\x00', 'not a CDR-serialized'),
    (b'\x00\x01\x00\x00' + (9).to_bytes(4, 'little') + b'ab\x00', 'truncated'),
    (b'\x00\x01\x00\x00' + (3).to_bytes(4, 'little') + b'abc', 'truncated'),
])
def test_string_from_cdr_refuses_malformed_instructions(raw, problem):
    with pytest.raises(ConversionError, match=problem):
        string_from_cdr(raw)
