"""Joint-space actions: the joint list, limits from parameters and URDF, the safety checks."""

import math
import re

import numpy as np
import pytest

from vla_ros.control.joints import (ActionJoint, ALOHA_GRIPPER, check_action_size, GripperRange,
                                    JointError, JointLimit, JointSafety, limits_from_parameters,
                                    limits_from_urdf, parse_action_joints, PRESETS)

NAMES = ('waist', 'shoulder', 'elbow')
LIMITS = limits_from_parameters(NAMES, [-3.0, -1.8, -1.7], [3.0, 1.2, 1.6], [2.0, 1.0, 1.0])
URDF = """<robot name="arm">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/><link name="l4"/>
  <joint name="waist" type="revolute"><parent link="base"/><child link="l1"/>
    <limit lower="-3.0" upper="3.0" velocity="2.0" effort="10"/></joint>
  <joint name="wrist" type="continuous"><parent link="l1"/><child link="l2"/>
    <limit velocity="4.0" effort="10"/></joint>
  <joint name="finger" type="prismatic"><parent link="l2"/><child link="l3"/>
    <limit lower="0.021" upper="0.057" velocity="0.5" effort="1"/></joint>
  <joint name="camera_mount" type="fixed"><parent link="l3"/><child link="l4"/></joint>
</robot>"""


def test_the_aloha_preset_is_each_arms_six_joints_then_its_gripper():
    joints = parse_action_joints(PRESETS['aloha'])
    assert len(joints) == 14
    assert joints[0] == ActionJoint('vx300s_left/waist')
    assert joints[6] == ActionJoint('vx300s_left/left_finger', gripper=True)
    assert joints[7] == ActionJoint('vx300s_right/waist')
    assert joints[13] == ActionJoint('vx300s_right/left_finger', gripper=True)
    check_action_size(joints, 14, 'the policy (OpenVLA-OFT, platform aloha)')


@pytest.mark.parametrize('entries, message', [
    ([], 'action_joints is empty'),
    (['waist', ' '], "entry '' names no joint"),
    (['waist', 'gripper:'], "entry 'gripper:' names no joint"),
    (['waist', 'gripper:waist'], "names joint 'waist' twice"),
])
def test_bad_joint_lists_are_one_clear_error(entries, message):
    with pytest.raises(JointError, match=message):
        parse_action_joints(entries)


def test_an_action_size_that_is_not_the_joint_lists_is_refused():
    with pytest.raises(JointError, match=r'predicts 7-D actions, but action_joints names 14'):
        check_action_size(parse_action_joints(PRESETS['aloha']), 7, 'the policy')


def test_the_gripper_maps_zero_closed_and_one_open_to_finger_positions():
    gripper = GripperRange(*ALOHA_GRIPPER)
    assert gripper.position(0.0) == pytest.approx(0.01844)
    assert gripper.position(1.0) == pytest.approx(0.05800)
    assert gripper.position(0.5) == pytest.approx((0.01844 + 0.05800) / 2)
    assert gripper.position(1.7) == pytest.approx(0.05800)  # clipped to the range
    assert gripper.value(gripper.position(0.25)) == pytest.approx(0.25)


def test_limits_from_the_urdf():
    limits = limits_from_urdf(URDF, ['waist', 'wrist', 'finger'])
    assert limits['waist'] == JointLimit(-3.0, 3.0, 2.0)
    assert limits['wrist'] == JointLimit(-math.inf, math.inf, 4.0)  # continuous: no range
    assert limits['finger'] == JointLimit(0.021, 0.057, 0.5)


@pytest.mark.parametrize('urdf, names, message', [
    (URDF, ['waist', 'shoulder'], "the robot has no joint 'shoulder'"),
    (URDF, ['camera_mount'], "gives joint 'camera_mount' (fixed) no <limit"),
    (URDF.replace(' lower="-3.0" upper="3.0"', ''), ['waist'], "joint 'waist' (revolute) no"),
    (URDF.replace('velocity="2.0" ', ''), ['waist'], 'no <limit lower upper velocity>'),
    (URDF.replace('upper="3.0"', 'upper="a lot"'), ['waist'], 'is not numbers'),
    (URDF.replace('upper="3.0"', 'upper="-3.5"'), ['waist'], 'is not below upper limit'),
    (URDF.replace('velocity="2.0"', 'velocity="0"'), ['waist'], 'must be a positive number'),
    ('<robot name="arm"', ['waist'], 'is not valid URDF XML'),
])
def test_a_urdf_that_cannot_bound_a_commanded_joint_is_one_clear_error(urdf, names, message):
    with pytest.raises(JointError, match=re.escape(message)):
        limits_from_urdf(urdf, names)


def test_limits_from_parameters_must_have_one_value_per_joint():
    with pytest.raises(JointError, match='joint_upper has 2 value'):
        limits_from_parameters(NAMES, [0, 0, 0], [1, 1], [1, 1, 1])
    with pytest.raises(JointError, match='no limits for joint.s. wrist'):
        JointSafety(('waist', 'wrist'), LIMITS)


def test_a_step_within_the_limits_is_sent_as_asked():
    safety = JointSafety(NAMES, LIMITS)
    positions, reason = safety.check([0.1, 0.05, -0.05], [0.0, 0.0, 0.0], dt=0.1)
    assert reason == '' and np.array_equal(positions, [0.1, 0.05, -0.05])
    assert safety.counts == {'sent': 1}


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_nan_or_inf_targets_and_missing_state_send_nothing(bad):
    safety = JointSafety(NAMES, LIMITS)
    assert safety.check([0.0, bad, 0.0], [0.0, 0.0, 0.0], 0.1) == (
        None, 'NaN or inf in the target')
    assert safety.check([0.0, 0.0, 0.0], [0.0, math.nan, 0.0], 0.1)[0] is None
    assert safety.counts == {'non_finite': 1, 'no_state': 1}


def test_beyond_a_limit_is_clipped_or_refused_as_configured_and_counted():
    clip = JointSafety(NAMES, LIMITS)
    positions, reason = clip.check([0.0, 1.5, 0.0], [0.0, 1.15, 0.0], dt=1.0)
    assert np.array_equal(positions, [0.0, 1.2, 0.0]) and "limits of 'shoulder'" in reason
    assert clip.counts == {'clipped_limit': 1, 'sent': 1}
    refuse = JointSafety(NAMES, LIMITS, beyond_limit='refuse')
    assert refuse.check([0.0, 1.5, 0.0], [0.0, 1.15, 0.0], 1.0) == (
        None, "joint 'shoulder' beyond its limits")
    assert refuse.counts == {'beyond_limit': 1}


def test_a_step_faster_than_a_joint_may_go_is_scaled_as_a_whole_or_refused():
    clip = JointSafety(NAMES, LIMITS)
    # elbow may go 1 rad/s: 0.3 rad in 0.1 s is 3x too fast, so every joint goes a third.
    positions, reason = clip.check([0.3, 0.15, 0.3], [0.0, 0.0, 0.0], dt=0.1)
    assert positions == pytest.approx([0.1, 0.05, 0.1])
    assert "speed limit of 'elbow'" in reason and clip.counts['clipped_velocity'] == 1
    speeds = np.abs(positions) / 0.1
    assert np.all(speeds <= np.array([2.0, 1.0, 1.0]) + 1e-12)
    refuse = JointSafety(NAMES, LIMITS, too_fast='refuse')
    assert refuse.check([0.3, 0.15, 0.3], [0.0, 0.0, 0.0], 0.1) == (
        None, "joint 'elbow' faster than its limit")


def test_a_chunks_rows_are_checked_point_after_point_up_to_the_first_refused():
    safety = JointSafety(NAMES, LIMITS, too_fast='refuse')
    rows = np.array([[0.05, 0.0, 0.0], [0.10, 0.0, 0.0], [0.9, 0.0, 0.0], [0.95, 0.0, 0.0]])
    sent, reason = safety.check_rows(rows, [0.0, 0.0, 0.0], period=0.04)
    assert np.array_equal(sent, rows[:2]) and "'waist' faster than its limit" in reason
    clip = JointSafety(NAMES, LIMITS)
    sent, reason = clip.check_rows(rows, [0.0, 0.0, 0.0], period=0.04)
    assert sent.shape == (4, 3) and 'speed limit' in reason
    steps = np.diff(np.vstack([np.zeros(3), sent]), axis=0)
    assert np.all(np.abs(steps[:, 0]) <= 2.0 * 0.04 + 1e-12)  # from the row sent before
