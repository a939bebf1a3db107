"""The joint bridge's decisions (arm_bridge joint_trajectory), with no ROS: ALOHA's two arms."""

import math

import numpy as np
import pytest

from vla_ros.control.joint_bridge import (check_controllers, JointBridgeConfig, JointBridgeCore,
                                          Outcome)
from vla_ros.control.joints import (ALOHA_GRIPPER, GripperRange, JointError,
                                    limits_from_parameters, PRESETS)
from vla_ros.control.stamps import stamp_refusal
from vla_ros.control.trajectory import jtc_refusal

ARM = ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate', 'left_finger')
LEFT = tuple(f'vx300s_left/{j}' for j in ARM)
RIGHT = tuple(f'vx300s_right/{j}' for j in ARM)
CONTROLLERS = (('left_arm_controller', LEFT), ('right_arm_controller', RIGHT))
LOWER = [-3.14, -1.85, -1.76, -3.14, -1.87, -3.14, 0.018] * 2
UPPER = [3.14, 1.26, 1.6, 3.14, 2.23, 3.14, 0.058] * 2
SPEED = [2.0] * 6 + [0.5] + [2.0] * 6 + [0.5]
LIMITS = limits_from_parameters(LEFT + RIGHT, LOWER, UPPER, SPEED)
NAMES = list(PRESETS['aloha'])        # what vla_node sends: gripper:... for the fingers
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.03] * 2)  # measured, controllers' order
T0 = 1000.0
P = 0.04                              # the step period (25 Hz)


def core(**changes):
    settings = {'controllers': CONTROLLERS, 'limits': LIMITS,
                'gripper': GripperRange(*ALOHA_GRIPPER), 'step_duration': P,
                'command_timeout': 0.5, 'future_tolerance': 0.05, 'tick_period': 0.02}
    bridge = JointBridgeCore(JointBridgeConfig(**{**settings, **changes}))
    bridge.update_state(LEFT + RIGHT, HOME, T0)
    return bridge


def action(positions=HOME, gripper=(0.5, 0.5)):
    """Return a 14-D action in vla_node's order (arm joints, then a normalised gripper)."""
    values = np.array(positions, dtype=np.float64).copy()
    values[[6, 13]] = gripper
    return values


def sent(outcome):
    """Return {controller: Trajectory} of an outcome, each checked with JTC's rules."""
    found = dict(outcome.trajectories)
    for controller, joints in CONTROLLERS:
        assert jtc_refusal(found[controller], joints, 0) == ''
        assert found[controller].joint_names == joints
    return found


def positions(outcome):
    """Return the points of an outcome, (K, 14) in the controllers' order."""
    found = sent(outcome)
    return np.hstack([np.array([p.positions for p in found[c].points]) for c, _ in CONTROLLERS])


def test_a_step_is_one_point_per_controller_at_the_step_period_with_grippers_in_metres():
    target = HOME + 0.02
    outcome = core(step_duration=0.2).command(NAMES, action(target, (0.0, 1.0)), T0, T0, T0)
    assert outcome.events == ('sent_steps',) and outcome.reason == ''
    for trajectory in sent(outcome).values():
        assert trajectory.stamp_ns == 0 and len(trajectory.points) == 1
        assert trajectory.points[0].time_from_start_ns == 200_000_000
    expected = target.copy()
    expected[[6, 13]] = ALOHA_GRIPPER  # left closed, right open
    np.testing.assert_allclose(positions(outcome)[0], expected)


def test_the_names_may_come_in_any_order_and_fingers_as_plain_joints():
    order = np.random.default_rng(0).permutation(14)
    values = HOME + 0.01
    outcome = core().command([(LEFT + RIGHT)[i] for i in order], values[order], T0, T0, T0)
    np.testing.assert_allclose(positions(outcome)[0], values)


def test_the_step_period_is_learned_from_the_arrivals_when_not_fixed():
    bridge = core(step_duration=0.0)
    first = bridge.command(NAMES, action(), T0, T0, T0)
    assert sent(first)['left_arm_controller'].points[0].time_from_start_ns == 500_000_000
    for i in range(1, 4):
        bridge.update_state(LEFT + RIGHT, HOME, T0 + 0.05 * i)
        outcome = bridge.command(NAMES, action(), T0 + 0.05 * i, T0 + 0.05 * i, T0 + 0.05 * i)
    assert sent(outcome)['left_arm_controller'].points[0].time_from_start_ns == 50_000_000


@pytest.mark.parametrize('mode, expected', [('clip', ('sent_steps', 'clipped_limit')),
                                            ('refuse', ('refused_beyond_limit',))])
def test_a_target_beyond_a_limit_is_clipped_or_refused_and_counted(mode, expected):
    target = HOME.copy()
    target[1] = -1.9  # shoulder below -1.85 (a slow step: 1 s for 0.9 rad)
    bridge = core(beyond_limit=mode, step_duration=1.0)
    outcome = bridge.command(NAMES, action(target), T0, T0, T0)
    assert outcome.events == expected and 'shoulder' in outcome.reason
    if mode == 'clip':
        assert positions(outcome)[0][1] == -1.85
    else:
        assert outcome.trajectories == ()


@pytest.mark.parametrize('mode, expected', [('clip', ('sent_steps', 'clipped_velocity')),
                                            ('refuse', ('refused_too_fast',))])
def test_a_step_faster_than_a_speed_limit_is_slowed_as_a_whole_or_refused(mode, expected):
    target = HOME.copy()
    target[0] += 0.16    # waist: 4 rad/s over 0.04 s, twice its limit
    target[8] += 0.04    # right elbow: 1 rad/s, within its limit alone
    outcome = core(too_fast=mode).command(NAMES, action(target), T0, T0, T0)
    assert outcome.events == expected
    if mode == 'clip':
        step = positions(outcome)[0] - HOME
        np.testing.assert_allclose(step[[0, 8]], [0.08, 0.02])  # one factor: the direction kept
    else:
        assert outcome.trajectories == ()


@pytest.mark.parametrize('names, values, event', [
    (NAMES, action(np.r_[math.nan, HOME[1:]]), 'rejected_nan'),
    (NAMES, action(np.r_[HOME[:12], math.inf, 0.0]), 'rejected_nan'),
    (NAMES[:13] + ['vx300s_right/gripper'], action(), 'rejected_unknown_joint'),
    (NAMES[:13], action()[:13], 'rejected_missing_joint'),
    (NAMES[:13] + ['vx300s_left/waist'], action(), 'rejected_names'),
    (NAMES, action()[:13], 'rejected_names'),
])
def test_bad_commands_are_refused_and_counted(names, values, event):
    outcome = core().command(names, values, T0, T0, T0)
    assert outcome == Outcome((), (event,), outcome.reason) and outcome.reason


@pytest.mark.parametrize('stamp, last, event', [
    (T0 - 0.51, -math.inf, 'dropped_stale'), (T0 + 0.06, -math.inf, 'dropped_future'),
    (T0 - 0.1, T0 - 0.05, 'dropped_reordered'), (math.nan, -math.inf, 'rejected_nan')])
def test_stale_future_and_reordered_stamps_are_dropped(stamp, last, event):
    bridge = core()
    bridge.last_stamp = last
    assert bridge.command(NAMES, action(), stamp, T0, T0).events == (event,)
    assert stamp_refusal(stamp, T0, 0.5, 0.05, last)[0] == event


def test_equal_stamps_are_steps_like_any_other():
    bridge = core()
    assert bridge.command(NAMES, action(), T0 - 0.1, T0, T0).trajectories
    assert bridge.command(NAMES, action(HOME + 0.01), T0 - 0.1, T0, T0).trajectories


def test_nothing_moves_without_fresh_joint_states_of_every_joint():
    bridge = core()
    assert bridge.command(NAMES, action(), T0 + 0.51, T0 + 0.51, T0 + 0.51).events == \
        ('dropped_no_state',)
    bridge.update_state(LEFT[:3], HOME[:3], T0 + 0.6)
    assert bridge.command(NAMES, action(), T0 + 0.6, T0 + 0.6, T0 + 0.6).trajectories
    fresh = core()
    fresh.update_state(['vx300s_left/elbow'], [math.nan], T0)
    outcome = fresh.command(NAMES, action(), T0, T0, T0)
    assert outcome.events == ('dropped_no_state',)
    assert 'no finite position of controller joint(s) vx300s_left/elbow' in outcome.reason
    # a controller joint the robot does not have (its joint_states never name it): named
    other = core(controllers=(('left_arm_controller', LEFT[:6] + ('vx300s_left/thumb',)),
                              ('right_arm_controller', RIGHT)),
                 limits=limits_from_parameters(LEFT[:6] + ('vx300s_left/thumb',) + RIGHT,
                                               LOWER, UPPER, SPEED))
    names = [n.replace('gripper:vx300s_left/left_finger', 'gripper:vx300s_left/thumb')
             for n in NAMES]
    outcome = other.command(names, action(), T0, T0, T0)
    assert outcome.events == ('dropped_no_state',)
    assert 'vx300s_left/thumb: is each a joint of this robot' in outcome.reason


def chunk_rows(k=25):
    """Return k ALOHA rows moving slowly away from HOME, at vla_node's times i * P."""
    rows = np.array([action(HOME + 0.01 * (i + 1)) for i in range(k)])
    return rows, [i * P for i in range(k)]


def test_a_chunk_sends_the_rows_not_yet_due_at_its_row_spacing():
    rows, times = chunk_rows()
    outcome = core(step_duration=0.0).chunk(NAMES, rows, times, T0 - 0.05, T0)
    assert outcome.events == ('sent_chunks',)
    found = sent(outcome)
    # Rows 0 (due at the stamp) and 1 (0.04 s after it) are past; 23 remain, one period apart.
    assert [p.time_from_start_ns for p in found['right_arm_controller'].points] == \
        [40_000_000 * (i + 1) for i in range(23)]
    expected = rows[2:].copy()
    expected[:, [6, 13]] = GripperRange(*ALOHA_GRIPPER).position(0.5)
    np.testing.assert_allclose(positions(outcome), expected)


def test_a_chunk_whose_rows_are_all_past_or_which_is_stale_sends_nothing():
    rows, times = chunk_rows(3)
    assert core().chunk(NAMES, rows, times, T0 - 0.2, T0).events == ('dropped_chunk_passed',)
    assert core().chunk(NAMES, rows, times, T0 - 0.6, T0).events == ('dropped_stale',)
    assert core().chunk(NAMES, rows, [0.0, 0.04, 0.04], T0, T0).events == ('rejected_chunk',)


def test_chunk_rows_are_checked_as_points_one_after_the_other():
    rows, times = chunk_rows(4)
    rows[2, 0] = 5.0  # waist beyond its limit
    refused = core(beyond_limit='refuse').chunk(NAMES, rows, times, T0, T0)
    assert refused.events == ('sent_chunks', 'refused_beyond_limit')
    assert len(positions(refused)) == 1  # row 1, before the refused one (row 0 is past)
    clipped = core().chunk(NAMES, rows, times, T0, T0)
    assert positions(clipped)[2][0] < 5.0 and 'clipped_limit' in clipped.events


def test_the_watchdog_holds_the_measured_positions_once_after_command_timeout():
    bridge = core()
    assert bridge.tick(T0 + 5) is None  # nothing accepted yet: nothing to hold
    bridge.command(NAMES, action(HOME + 0.02), T0, T0, T0)
    assert bridge.tick(T0 + 0.49) is None
    moved = HOME + 0.015
    bridge.update_state(LEFT + RIGHT, moved, T0 + 0.5)
    hold = bridge.tick(T0 + 0.51)
    assert hold.events == ('watchdog_holds',)
    np.testing.assert_allclose(positions(hold), [moved])
    assert sent(hold)['left_arm_controller'].points[0].time_from_start_ns == 20_000_000
    assert bridge.tick(T0 + 0.6) is None


def test_the_watchdog_waits_for_the_end_of_a_chunk():
    bridge = core()
    rows, times = chunk_rows()
    bridge.chunk(NAMES, rows, times, T0, T0)  # 24 rows, to T0 + 0.96
    bridge.update_state(LEFT + RIGHT, HOME, T0 + 0.9)
    assert bridge.tick(T0 + 0.9) is None
    assert bridge.tick(T0 + 0.97).events == ('watchdog_holds',)


def test_disable_holds_at_once_drops_commands_and_enable_follows_only_later_stamps():
    bridge = core()
    bridge.command(NAMES, action(HOME + 0.02), T0, T0, T0)
    hold = bridge.set_enabled(False, T0 + 0.01)
    assert hold.events == ('disable_holds',)
    np.testing.assert_allclose(positions(hold), [HOME])
    assert bridge.command(NAMES, action(), T0 + 0.02, T0 + 0.02, T0 + 0.02).events == \
        ('dropped_disabled',)
    assert bridge.tick(T0 + 2) is None  # disabled: no watchdog, no second hold
    bridge.update_state(LEFT + RIGHT, HOME, T0 + 0.1)
    assert bridge.set_enabled(True, T0 + 0.1) is None
    assert bridge.command(NAMES, action(), T0 + 0.09, T0 + 0.11, T0 + 0.11).events == \
        ('dropped_reordered',)
    assert bridge.command(NAMES, action(), T0 + 0.1, T0 + 0.11, T0 + 0.11).trajectories


def test_a_disable_without_joint_states_holds_as_soon_as_they_come():
    bridge = core()
    bridge.update_state([], [], T0 - 1.0)
    assert bridge.set_enabled(False, T0) is None
    bridge.update_state(LEFT + RIGHT, HOME, T0 + 0.01)
    assert bridge.tick(T0 + 0.02).events == ('disable_holds',)
    assert bridge.tick(T0 + 0.04) is None


def test_a_clock_jump_back_forgets_the_stamp_order_and_the_state():
    bridge = core()
    bridge.command(NAMES, action(), T0, T0, T0)
    bridge.clock_jumped(T0 - 10, T0)
    assert bridge.command(NAMES, action(), T0 - 10, T0 - 10, T0 - 10).events == \
        ('dropped_no_state',)
    bridge.update_state(LEFT + RIGHT, HOME, T0 - 10)
    assert bridge.command(NAMES, action(), T0 - 0.01, T0 - 10, T0 - 10).events == \
        ('dropped_stale',)  # ahead of the new clock, from before the jump
    assert bridge.command(NAMES, action(), T0 - 10, T0 - 10, T0 - 10).trajectories


@pytest.mark.parametrize('controllers, message', [
    ({}, "'controllers' is empty"),
    ({'left': LEFT, 'right': ()}, "'right' has no joints"),
    ({'left': LEFT, 'right': RIGHT[:6] + LEFT[:1]}, "in controllers 'left' and 'right'"),
    ({'left': LEFT + LEFT[:1]}, 'named twice'),
    ({'left': LEFT[:6] + ('gripper:vx300s_left/left_finger',)}, 'list the finger joint'),
])
def test_controllers_that_cannot_work_are_refused_with_the_fix(controllers, message):
    with pytest.raises(JointError, match=message):
        check_controllers(controllers)


def test_the_policys_hold_cuts_a_chunk_short_at_the_measured_positions_and_gates_older_stamps():
    bridge = core()
    rows, times = chunk_rows()
    bridge.chunk(NAMES, rows, times, T0, T0)  # runs to T0 + 0.96
    moved = HOME + 0.01
    bridge.update_state(LEFT + RIGHT, moved, T0 + 0.2)
    hold = bridge.policy_hold(T0 + 0.2, T0 + 0.21)
    assert hold.events == ('policy_holds',)
    np.testing.assert_allclose(positions(hold), [moved])
    # computed before the hold (an image older than it): not followed; newer: followed
    assert bridge.command(NAMES, action(), T0 + 0.15, T0 + 0.22, T0 + 0.22).events == \
        ('dropped_reordered',)
    bridge.update_state(LEFT + RIGHT, moved, T0 + 0.9)
    assert bridge.tick(T0 + 0.9) is None  # the hold replaced the chunk: no watchdog owed
    assert bridge.command(NAMES, action(), T0 + 0.9, T0 + 0.91, T0 + 0.91).trajectories
    assert bridge.policy_hold(math.nan, T0 + 0.92).events == ('rejected_nan',)
    bridge.set_enabled(False, T0 + 0.93)
    assert bridge.policy_hold(T0 + 0.93, T0 + 0.94) is None  # disabled: already holding
