"""
Joint trajectories for ros2_control's ``joint_trajectory_controller`` (JTC), ROS-free.

``Trajectory`` holds what a ``trajectory_msgs/JointTrajectory`` carries that the bridge fills:
joint names, ``header.stamp`` (ns; 0 means "start now" to JTC) and points of positions with
their ``time_from_start`` (ns). ``chunk_trajectory`` lays out the rows of an action chunk (or
one step: one row) at the step period, the first at one period: the arm has that long to get
from where it is to the first row, as JTC's own ``positions_upsampling`` times a positions-only
chunk (first target at ``dt``, not 0).

``jtc_refusal`` is the check JTC runs on every message of its ``~/joint_trajectory`` topic
before it takes it (``JointTrajectoryController::validate_trajectory_msg`` and
``validate_trajectory_point_field`` in ros2_controllers, read at 94e74de), in its order, with
its parameters' defaults: a trajectory it refuses is dropped there with only a log line, so
the bridge refuses it first and counts it. The rules:

1. without ``allow_partial_joints_goal`` (default false) the names must be as many as the
   controller's joints;
2. at least one joint name, and at least one point;
3. every name must be one of the controller's joints;
4. without ``allow_nonzero_velocity_at_trajectory_end`` (default false) the last point's
   velocities, where given, must be zero (within float epsilon);
5. with a non-zero stamp, the trajectory must not end (stamp + last ``time_from_start``)
   before now;
6. ``time_from_start`` strictly increasing from the second point on (the first may be 0);
7. per point, positions with one value per name (velocities and accelerations empty or one per
   name), unless ``allow_integration_in_goal_trajectories``; efforts only for an effort
   interface (the bridge never sends velocities, accelerations or efforts).

``Follower`` is how JTC then follows a positions-only trajectory (``Trajectory::sample``), for
the simulated arm.

JTC itself accepts two things the bridge must not send, so ``bridge_refusal`` adds them: a name
given twice (JTC's name check passes it and its reordering then reads one column twice) and a
position that is NaN or inf (JTC does not look at the values).
"""

import dataclasses
import math

FLOAT_EPSILON = 1.1920928955078125e-07  # std::numeric_limits<float>::epsilon(), JTC's zero


@dataclasses.dataclass(frozen=True)
class Point:
    """One trajectory point: positions (one per joint name) at ``time_from_start_ns``."""

    positions: tuple
    time_from_start_ns: int
    velocities: tuple = ()
    accelerations: tuple = ()
    effort: tuple = ()


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """What the bridge puts in a ``JointTrajectory``: names, ``header.stamp`` (ns), points."""

    joint_names: tuple
    stamp_ns: int
    points: tuple


@dataclasses.dataclass(frozen=True)
class JtcOptions:
    """The JTC parameters its validation reads (defaults: JTC's)."""

    allow_partial_joints_goal: bool = False
    allow_nonzero_velocity_at_trajectory_end: bool = False
    allow_integration_in_goal_trajectories: bool = False
    has_effort_command_interface: bool = False


def chunk_trajectory(joint_names, rows, period_s, stamp_ns=0):
    """
    Return the ``Trajectory`` of ``rows`` (K, N): row i at ``(i + 1) * period_s``.

    ``stamp_ns`` 0 (the default) lets JTC start it when it arrives.
    """
    period_ns = int(round(period_s * 1e9))
    if period_ns <= 0:
        raise ValueError(f'the step period must be positive, not {period_s!r} s')
    points = tuple(Point(tuple(float(v) for v in row), (i + 1) * period_ns)
                   for i, row in enumerate(rows))
    return Trajectory(tuple(joint_names), int(stamp_ns), points)


def jtc_refusal(trajectory, controller_joints, now_ns, options=JtcOptions()):
    """Return why JTC would refuse ``trajectory`` (its rules, above), or '' when it takes it."""
    names, points = trajectory.joint_names, trajectory.points
    if not options.allow_partial_joints_goal and len(names) != len(controller_joints):
        return (f'{len(names)} joint name(s), but the controller has {len(controller_joints)} '
                'joints (allow_partial_joints_goal is false)')
    if not names:
        return 'no joint names'
    if not points:
        return 'no points'
    for name in names:
        if name not in controller_joints:
            return f"joint {name!r} is not one of the controller's joints"
    if not options.allow_nonzero_velocity_at_trajectory_end:
        for name, velocity in zip(names, points[-1].velocities):
            if abs(velocity) > FLOAT_EPSILON:
                return f"the last point's velocity of joint {name!r} is not zero ({velocity})"
    if trajectory.stamp_ns != 0 and \
            trajectory.stamp_ns + points[-1].time_from_start_ns < now_ns:
        return 'the trajectory has a start time and ends in the past'
    previous = 0
    for i, point in enumerate(points):
        if i > 0 and point.time_from_start_ns <= previous:
            return (f'time_from_start is not strictly increasing between points {i - 1} and '
                    f'{i}')
        previous = point.time_from_start_ns
        fields = (('positions', point.positions), ('velocities', point.velocities),
                  ('accelerations', point.accelerations))
        if options.allow_integration_in_goal_trajectories:
            if not any(values for _, values in fields):
                return f'point {i} has no positions, velocities or accelerations'
            sized = [(field, values) for field, values in fields if values]
        else:
            sized = [fields[0]] + [(f, v) for f, v in fields[1:] if v]
        for field, values in sized:
            if len(values) != len(names):
                return (f'point {i} has {len(values)} {field} for {len(names)} joint '
                        'name(s)')
        if point.effort and not options.has_effort_command_interface:
            return f'point {i} has efforts, and the controller commands no effort'
    return ''


def bridge_refusal(trajectory, controller_joints, now_ns, options=JtcOptions()):
    """Return why the bridge does not send ``trajectory``: JTC's rules, doubled names, NaN."""
    doubled = sorted({n for n in trajectory.joint_names if trajectory.joint_names.count(n) > 1})
    if doubled:
        return f'joint {doubled[0]!r} is named twice'
    for i, point in enumerate(trajectory.points):
        if not all(math.isfinite(v) for v in point.positions):
            return f'point {i} has a NaN or inf position'
    return jtc_refusal(trajectory, controller_joints, now_ns, options)


class Follower:
    """
    How JTC follows a positions-only trajectory (its ``Trajectory::sample``), for the simulator.

    ``take`` replaces the trajectory being followed (JTC's topic: the newest message wins). The
    first ``sample`` after it fixes its start (``header.stamp``, or that sample's time when the
    stamp is 0) and the point before it (the positions at that sample); then positions are
    interpolated linearly (JTC's spline with positions only) from that point to the first
    point at start + its ``time_from_start``, between consecutive points, and held at the last
    point after it. ``sample`` returns None while no trajectory was taken.
    """

    def __init__(self):
        self.trajectory = None
        self._start_ns = self._before_ns = None
        self._before = None

    def take(self, trajectory):
        """Follow ``trajectory`` (already checked: ``bridge_refusal`` is '') from now on."""
        self.trajectory = trajectory
        self._start_ns = self._before_ns = None

    def sample(self, now_ns, current):
        """Return the commanded positions at ``now_ns``; ``current``: the measured ones."""
        trajectory = self.trajectory
        if trajectory is None:
            return None
        if self._start_ns is None:
            self._start_ns = trajectory.stamp_ns or now_ns
            self._before_ns, self._before = now_ns, tuple(float(v) for v in current)
        times = [self._start_ns + p.time_from_start_ns for p in trajectory.points]
        if now_ns < times[0]:
            return _between(self._before_ns, self._before, times[0],
                            trajectory.points[0].positions, now_ns)
        for i in range(len(times) - 1):
            if times[i] <= now_ns < times[i + 1]:
                return _between(times[i], trajectory.points[i].positions, times[i + 1],
                                trajectory.points[i + 1].positions, now_ns)
        return tuple(trajectory.points[-1].positions)


def _between(t0, a, t1, b, t):
    """Return positions linearly between ``a`` at ``t0`` and ``b`` at ``t1`` (clamped)."""
    share = 1.0 if t1 <= t0 else min(max((t - t0) / (t1 - t0), 0.0), 1.0)
    return tuple(x + share * (y - x) for x, y in zip(a, b))
