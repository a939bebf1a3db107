"""JTC's checks on a JointTrajectory (written from its source) and the bridge's chunk layout."""

import dataclasses
import math

import numpy as np
import pytest

from vla_ros.control.trajectory import (bridge_refusal, chunk_trajectory, FLOAT_EPSILON,
                                        Follower, jtc_refusal, JtcOptions, Point, Trajectory)

ARM = ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate')
NOW_NS = 50 * 10**9


def chunk(rows=25, period=0.04, stamp_ns=0):
    values = np.linspace(0.0, 0.5, rows)[:, None] + np.arange(len(ARM))[None] * 0.01
    return chunk_trajectory(ARM, values, period, stamp_ns)


def test_a_chunk_is_one_point_per_row_at_the_step_period_the_first_one_period_ahead():
    trajectory = chunk(rows=25, period=0.04, stamp_ns=7)
    assert trajectory.joint_names == ARM and trajectory.stamp_ns == 7
    assert [p.time_from_start_ns for p in trajectory.points] == \
        [(i + 1) * 40_000_000 for i in range(25)]
    assert trajectory.points[3].positions == pytest.approx(
        tuple(np.linspace(0.0, 0.5, 25)[3] + np.arange(6) * 0.01))
    one_step = chunk_trajectory(ARM, [np.zeros(6)], 0.1)
    assert len(one_step.points) == 1 and one_step.points[0].time_from_start_ns == 100_000_000
    now = dataclasses.replace(trajectory, stamp_ns=0)
    assert jtc_refusal(now, ARM, NOW_NS) == '' and bridge_refusal(now, ARM, NOW_NS) == ''
    with pytest.raises(ValueError, match='period must be positive'):
        chunk_trajectory(ARM, [np.zeros(6)], 0.0)


def with_points(trajectory, **changes):
    """Return ``trajectory`` with the given fields of its last point changed."""
    points = list(trajectory.points)
    points[-1] = dataclasses.replace(points[-1], **changes)
    return dataclasses.replace(trajectory, points=tuple(points))


# Each case: a trajectory JTC refuses (with its defaults), and what the reason says.
def refused_cases():
    good = chunk(rows=3)
    swapped = list(good.points)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    equal = list(good.points)
    equal[2] = dataclasses.replace(equal[2], time_from_start_ns=equal[1].time_from_start_ns)
    return {
        'fewer names than the controller (no partial goals)': (
            dataclasses.replace(good, joint_names=ARM[:5],
                                points=tuple(Point(p.positions[:5], p.time_from_start_ns)
                                             for p in good.points)),
            '5 joint name(s), but the controller has 6'),
        "a name that is not the controller's": (
            dataclasses.replace(good, joint_names=ARM[:5] + ('gripper',)),
            "joint 'gripper' is not one of the controller's joints"),
        'no points': (dataclasses.replace(good, points=()), 'no points'),
        'a point without every joint': (
            with_points(good, positions=good.points[-1].positions[:4]),
            'point 2 has 4 positions for 6 joint name(s)'),
        'a point without positions': (with_points(good, positions=()),
                                      'point 2 has 0 positions'),
        'velocities of the wrong size': (with_points(good, velocities=(0.0,) * 5),
                                         'point 2 has 5 velocities'),
        'times that go back': (dataclasses.replace(good, points=tuple(swapped)),
                               'not strictly increasing between points 1 and 2'),
        'two points at one time': (dataclasses.replace(good, points=tuple(equal)),
                                   'not strictly increasing between points 1 and 2'),
        'a moving end': (with_points(good, velocities=(0.0,) * 5 + (0.1,)),
                         "last point's velocity of joint 'wrist_rotate' is not zero"),
        'a stamped trajectory that ended before now': (
            dataclasses.replace(good, stamp_ns=NOW_NS - 10**9), 'ends in the past'),
        'efforts for a position controller': (with_points(good, effort=(1.0,) * 6),
                                              'point 2 has efforts'),
    }


@pytest.mark.parametrize('case', list(refused_cases()))
def test_each_case_jtc_refuses_is_refused_with_its_reason(case):
    trajectory, reason = refused_cases()[case]
    assert reason in jtc_refusal(trajectory, ARM, NOW_NS)
    assert reason in bridge_refusal(trajectory, ARM, NOW_NS)


def test_what_jtc_takes():
    good = chunk(rows=3)
    assert jtc_refusal(good, ARM, NOW_NS) == ''
    # Stamp 0 is "now", whatever the times; a stamped one ending exactly now is still taken.
    end = good.points[-1].time_from_start_ns
    assert jtc_refusal(dataclasses.replace(good, stamp_ns=NOW_NS - end), ARM, NOW_NS) == ''
    # The first point may be at 0; the names in any order; a float-epsilon end velocity is zero.
    first = list(good.points)
    first[0] = dataclasses.replace(first[0], time_from_start_ns=0)
    assert jtc_refusal(dataclasses.replace(good, points=tuple(first)), ARM, NOW_NS) == ''
    reordered = Trajectory(ARM[::-1], 0, tuple(
        Point(p.positions[::-1], p.time_from_start_ns) for p in good.points))
    assert jtc_refusal(reordered, ARM, NOW_NS) == ''
    assert jtc_refusal(with_points(good, velocities=(FLOAT_EPSILON,) * 6), ARM, NOW_NS) == ''
    # Parameters that relax the rules, as the controller's own.
    partial = dataclasses.replace(good, joint_names=ARM[:2], points=tuple(
        Point(p.positions[:2], p.time_from_start_ns) for p in good.points))
    assert jtc_refusal(partial, ARM, NOW_NS, JtcOptions(allow_partial_joints_goal=True)) == ''
    moving = with_points(good, velocities=(0.1,) * 6)
    assert jtc_refusal(moving, ARM, NOW_NS,
                       JtcOptions(allow_nonzero_velocity_at_trajectory_end=True)) == ''
    velocity_only = with_points(good, positions=(), velocities=(0.0,) * 6)
    assert jtc_refusal(velocity_only, ARM, NOW_NS,
                       JtcOptions(allow_integration_in_goal_trajectories=True)) == ''
    assert 'no positions, velocities or accelerations' in jtc_refusal(
        with_points(good, positions=()), ARM, NOW_NS,
        JtcOptions(allow_integration_in_goal_trajectories=True))


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_the_bridge_also_refuses_what_jtc_would_take_and_must_not_move_the_arm(bad):
    good = chunk(rows=3)
    values = list(good.points[1].positions)
    values[2] = bad
    points = list(good.points)
    points[1] = dataclasses.replace(points[1], positions=tuple(values))
    nan = dataclasses.replace(good, points=tuple(points))
    assert jtc_refusal(nan, ARM, NOW_NS) == ''  # JTC does not look at the values
    assert bridge_refusal(nan, ARM, NOW_NS) == 'point 1 has a NaN or inf position'
    doubled = dataclasses.replace(good, joint_names=ARM[:5] + ('waist',))
    assert jtc_refusal(doubled, ARM, NOW_NS) == ''  # six names, each the controller's
    assert bridge_refusal(doubled, ARM, NOW_NS) == "joint 'waist' is named twice"


def test_the_follower_moves_from_where_the_arm_is_through_each_point_at_its_time():
    follower = Follower()
    assert follower.sample(NOW_NS, (0.0, 0.0)) is None  # nothing taken yet: JTC holds
    rows = np.array([[0.1, -0.1], [0.2, -0.2], [0.4, -0.2]])
    follower.take(chunk_trajectory(('a', 'b'), rows, 0.04))  # stamp 0: starts when sampled
    assert follower.sample(NOW_NS, (0.0, 0.0)) == pytest.approx((0.0, 0.0))
    ms = 1_000_000
    assert follower.sample(NOW_NS + 20 * ms, (9.0, 9.0)) == pytest.approx((0.05, -0.05))
    for k, row in enumerate(rows):  # each row at its time, (k + 1) periods after the start
        assert follower.sample(NOW_NS + (k + 1) * 40 * ms, None) == pytest.approx(tuple(row))
    assert follower.sample(NOW_NS + 100 * ms, None) == pytest.approx((0.3, -0.2))
    assert follower.sample(NOW_NS + 10**9, None) == pytest.approx((0.4, -0.2))  # held at the end
    # A new trajectory replaces it, from where the arm is when it is first sampled; a stamp
    # in the future starts it then, moving toward its first point from now.
    later = dataclasses.replace(chunk_trajectory(('a', 'b'), [[1.0, 1.0]], 0.1),
                                stamp_ns=NOW_NS + 2 * 10**9 - 100 * ms)
    follower.take(later)
    assert follower.sample(NOW_NS + 10**9, (0.4, -0.2)) == pytest.approx((0.4, -0.2))
    assert follower.sample(NOW_NS + 1500 * ms, None) == pytest.approx((0.7, 0.4))
    assert follower.sample(NOW_NS + 2 * 10**9, None) == pytest.approx((1.0, 1.0))
