"""
The joint bridge's decisions (arm_bridge ``output_mode: joint_trajectory``), ROS-free.

A joint-space policy's commands in, ``joint_trajectory_controller`` (JTC) trajectories out, one
per controller. Times are float seconds on the node clock. What ``JointBridgeCore`` does:

* A joint command (``vla/joint_command``: names, positions, the image's stamp) or a chunk
  (``vla/joint_chunk``: names, rows, each row's ``time_from_start``) passes, in order: the
  enable switch (disabled: ``dropped_disabled``); the stamp rules (``vla_ros.control.stamps``:
  stale, future, reordered); fresh measured positions of every controller joint (``joint_states``
  newer than ``command_timeout``, else ``dropped_no_state``); its names (each once, each a
  controller's joint, ``gripper:NAME`` mapped through ``GripperRange`` to NAME's position, every
  controller joint present); finite values. Then ``JointSafety`` (limits, then speed from the
  measured positions over the step period: clipped or refused, counted).
* A step becomes one point per controller at ``time_from_start`` = the step period: fixed
  (``step_duration``), or learned from the arrivals of the commands (``StepPeriod``, as the
  end-effector bridge learns it). A chunk sends the rows not yet due (row i is due at its stamp
  plus its ``time_from_start``) at the chunk's own row spacing (or the fixed period), laid out
  by ``chunk_trajectory``: JTC has one period to reach the first of them.
* Every trajectory is checked with ``bridge_refusal`` (JTC's validation, doubled names, NaN)
  before it leaves; a refusal there is a bug of the bridge, counted as ``refused_bug``, and
  nothing of that command is sent.
* A hold is one point per controller at the measured positions, one tick period ahead. It goes
  out once when no command was accepted for ``command_timeout`` after the last one (and after
  the end of the last trajectory sent: a chunk runs longer), at once on disable, and at once on
  the policy's hold (vla_node's ``enable: false`` or deactivate: a ``vla/joint_chunk`` without
  points; JTC itself refuses an empty trajectory, so it never goes further). Enabling again,
  or after the policy's hold, follows only commands stamped after it.

Every outcome is an ``Outcome``: the trajectories to publish (none when refused) and the
counter keys (``EVENTS``) with a reason.
"""

import dataclasses
import math

import numpy as np

from vla_ros.control.joints import GripperRange, JointError, JointSafety, parse_action_joints
from vla_ros.control.stamps import stamp_refusal
from vla_ros.control.step_period import StepPeriod
from vla_ros.control.trajectory import bridge_refusal, chunk_trajectory

EVENTS = ('sent_steps', 'sent_chunks', 'disable_holds', 'watchdog_holds', 'policy_holds',
          'clipped_limit', 'clipped_velocity', 'refused_beyond_limit', 'refused_too_fast',
          'rejected_nan', 'rejected_names', 'rejected_unknown_joint', 'rejected_missing_joint',
          'rejected_chunk', 'dropped_stale', 'dropped_future', 'dropped_reordered',
          'dropped_disabled', 'dropped_no_state', 'dropped_chunk_passed', 'refused_bug')
MIN_SPACING = 1e-3  # s between the rows of a chunk, at least
# JointSafety's counter keys, as the bridge counts them.
_SAFETY_KEYS = {'non_finite': 'rejected_nan', 'no_state': 'dropped_no_state',
                'beyond_limit': 'refused_beyond_limit', 'too_fast': 'refused_too_fast',
                'clipped_limit': 'clipped_limit', 'clipped_velocity': 'clipped_velocity'}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one input: ``(controller, Trajectory)`` pairs to send, counter keys."""

    trajectories: tuple = ()
    events: tuple = ()
    reason: str = ''


@dataclasses.dataclass(frozen=True)
class JointBridgeConfig:
    """The bridge's settings; each field is the arm_bridge parameter of (nearly) that name."""

    controllers: tuple            # ((controller, (joint, ...)), ...)
    limits: dict                  # {joint: JointLimit}
    gripper: GripperRange
    beyond_limit: str = 'clip'
    too_fast: str = 'clip'
    command_timeout: float = 0.5
    future_tolerance: float = 0.05
    step_duration: float = 0.0    # 0: learn the step period from the arrivals
    tick_period: float = 0.02     # 1 / stream_rate_hz


def check_controllers(controllers):
    """
    Return ``controllers`` (``{name: joints}``) as a tuple of pairs; raise ``JointError``.

    Refused, each with the fix: no controller, a controller without joints, a joint named twice
    or in two controllers, a ``gripper:`` entry (controllers take joint names; commands carry
    the gripper entries).
    """
    if not controllers:
        raise JointError("parameter 'controllers' is empty; name each joint_trajectory_"
                         "controller (e.g. ['left_arm_controller', 'right_arm_controller']) "
                         'and give each its joints as CONTROLLER.joints')
    owner = {}
    for controller, joints in controllers.items():
        if not joints:
            raise JointError(f'controller {controller!r} has no joints; set parameter '
                             f"'{controller}.joints' to its joint names, in the controller's "
                             'order')
        for joint in joints:
            if joint.startswith('gripper:'):
                raise JointError(f"'{controller}.joints' names {joint!r}; list the finger joint "
                                 'itself (the commands carry gripper:NAME entries)')
            if joint in owner:
                where = 'twice' if owner[joint] == controller else \
                    f'in controllers {owner[joint]!r} and {controller!r}'
                raise JointError(f'joint {joint!r} is named {where}; each joint belongs to '
                                 'exactly one controller: fix the CONTROLLER.joints parameters')
            owner[joint] = controller
    return tuple((c, tuple(j)) for c, j in controllers.items())


class JointBridgeCore:
    """The decisions of the joint bridge; see the module docstring."""

    def __init__(self, config):
        self.config = config
        self.controllers = check_controllers(dict(config.controllers))
        self.names = tuple(j for _, joints in self.controllers for j in joints)
        self._index = {name: i for i, name in enumerate(self.names)}
        self.safety = JointSafety(self.names, config.limits, config.beyond_limit,
                                  config.too_fast)
        self.step = StepPeriod(config.step_duration, shortest=config.tick_period)
        self.enabled = True
        self.last_stamp = -math.inf     # newest accepted stamp, or the last enable time
        self.busy_until = -math.inf     # when the last trajectory sent ends
        self.watchdog_armed = False     # a command was accepted since the last hold
        self.hold_owed = None           # counter key of a hold not yet sent (no state yet)
        self._state, self._state_time = {}, -math.inf
        self._jumped_from = -math.inf

    @property
    def step_period(self):
        """Return the step period in force, s (fixed, first guess or learned)."""
        return self.step.seconds(self.config.command_timeout)

    # ------------------------------------------------------------------ inputs
    def update_state(self, names, positions, time):
        """Take measured positions (``joint_states``) that arrived at ``time``."""
        self._state.update(zip(names, (float(p) for p in positions)))
        self._state_time = time

    def measured(self, now):
        """Return the measured positions (N,) in ``names`` order; None: stale or incomplete."""
        if now - self._state_time > self.config.command_timeout:
            return None
        values = np.array([self._state.get(n, math.nan) for n in self.names])
        return values if np.all(np.isfinite(values)) else None

    def command(self, names, positions, stamp, now, arrival):
        """Offer one step (``vla/joint_command``); return the ``Outcome``."""
        refused, targets = self._gate(names, [positions], stamp, now, 'joint command')
        if refused:
            return refused
        self.step.arrive(arrival, self.config.command_timeout)
        period = self.step_period
        before = dict(self.safety.counts)
        positions, reason = self.safety.check(targets[0], self.measured(now), period)
        events = self._safety_events(before)
        if positions is None:
            return Outcome((), events, reason)
        return self._send([positions], period, stamp, now, ('sent_steps',) + events, reason)

    def chunk(self, names, rows, times, stamp, now):
        """Offer the rows (K, N) of ``vla/joint_chunk``, at ``times`` (s) after ``stamp``."""
        times = np.asarray(times, dtype=np.float64)
        if len(rows) == 0 or len(times) != len(rows) or not np.all(np.isfinite(times)) or \
                np.any(np.diff(times) < MIN_SPACING):
            return Outcome((), ('rejected_chunk',), 'a chunk needs one time_from_start per row, '
                           f'finite and increasing by at least {MIN_SPACING} s')
        refused, targets = self._gate(names, rows, stamp, now, 'joint chunk')
        if refused:
            return refused
        due = stamp + times > now
        if not due.any():
            return Outcome((), ('dropped_chunk_passed',), f'every row of the chunk stamped '
                           f'{now - stamp:.3f} s ago is past its time')
        period = self.config.step_duration or (
            float(np.median(np.diff(times))) if len(times) > 1 else self.step_period)
        before = dict(self.safety.counts)
        sent, reason = self.safety.check_rows(targets[due], self.measured(now), period)
        events = self._safety_events(before)
        if not len(sent):
            return Outcome((), events, reason)
        return self._send(sent, period, stamp, now, ('sent_chunks',) + events, reason)

    def tick(self, now):
        """Return the watchdog's hold (or a hold still owed), or None: nothing to send."""
        if self.enabled and self.watchdog_armed and \
                now > max(self.last_stamp + self.config.command_timeout, self.busy_until):
            self.watchdog_armed = False
            self.hold_owed = 'watchdog_holds'
        return self._hold(now) if self.hold_owed else None

    def policy_hold(self, stamp, now):
        """
        Hold for the policy (vla_node's hold: a ``vla/joint_chunk`` without points).

        The measured positions at once, as on disable, and nothing stamped before the hold
        follows it. A hold is always safe, so only a non-finite stamp is refused.
        """
        if not math.isfinite(stamp):
            return Outcome((), ('rejected_nan',), 'a hold stamped NaN or inf')
        self.last_stamp = max(self.last_stamp, min(stamp, now))
        self.busy_until, self.watchdog_armed = -math.inf, False
        if not self.enabled:
            return None  # already holding since the disable
        self.hold_owed = 'policy_holds'
        return self._hold(now)

    def set_enabled(self, enabled, now):
        """Switch on or off; off returns the hold (None without state: it goes when it can)."""
        if enabled:
            if not self.enabled:
                self.last_stamp = max(self.last_stamp, now)
            self.enabled, self.hold_owed = True, None
            return None
        self.enabled, self.watchdog_armed = False, False
        self.hold_owed = 'disable_holds'
        return self._hold(now)

    def clock_jumped(self, now, jumped_from):
        """Forget what was timed on the old time (see ``vla_ros.control.clock``)."""
        self.last_stamp = self.busy_until = self._state_time = -math.inf
        self.watchdog_armed = False
        self._jumped_from = max(self._jumped_from, jumped_from)

    # ------------------------------------------------------------------ the rules
    def _gate(self, names, rows, stamp, now, what):
        """Return (refusal Outcome, None) or (None, targets (K, N) in ``names`` order)."""
        if not self.enabled:
            return Outcome((), ('dropped_disabled',), f'{what} while disabled'), None
        cfg = self.config
        refusal = stamp_refusal(stamp, now, cfg.command_timeout, cfg.future_tolerance,
                                self.last_stamp, self._jumped_from, what)
        if refusal:
            return Outcome((), (refusal[0],), refusal[1]), None
        if self.measured(now) is None:
            return Outcome((), ('dropped_no_state',), self._no_state(now)), None
        try:
            joints = parse_action_joints(names)
        except JointError as exc:
            return Outcome((), ('rejected_names',), f'{what}: {exc}'), None
        unknown = [j.name for j in joints if j.name not in self._index]
        if unknown:
            return Outcome((), ('rejected_unknown_joint',), f'{what} names joint {unknown[0]!r}, '
                           f"which no controller has (controllers' joints: "
                           f'{", ".join(self.names)})'), None
        missing = [n for n in self.names if n not in {j.name for j in joints}]
        if missing:
            return Outcome((), ('rejected_missing_joint',), f'{what} has no value for joint '
                           f'{missing[0]!r}; a controller takes a point of all its joints'), None
        values = np.asarray(rows, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(joints):
            return Outcome((), ('rejected_names',), f'{what}: {values.shape[-1]} value(s) per '
                           f'row for {len(joints)} joint name(s)'), None
        if not np.all(np.isfinite(values)):
            return Outcome((), ('rejected_nan',), f'{what} has NaN or inf'), None
        targets = np.empty((len(values), len(self.names)))
        for column, joint in enumerate(joints):
            value = values[:, column]
            if joint.gripper:
                value = [self.config.gripper.position(v) for v in value]
            targets[:, self._index[joint.name]] = value
        return None, targets

    def _no_state(self, now):
        """Say why there are no measured positions: none fresh, or joints joint_states lacks."""
        timeout = self.config.command_timeout
        if now - self._state_time > timeout:
            return f'no joint_states newer than command_timeout {timeout} s'
        missing = [n for n in self.names if not math.isfinite(self._state.get(n, math.nan))]
        return (f'joint_states has no finite position of controller joint(s) '
                f'{", ".join(missing)}: is each a joint of this robot (its joint_states names)?')

    def _safety_events(self, before):
        return tuple(_SAFETY_KEYS[k] for k, n in self.safety.counts.items()
                     if k in _SAFETY_KEYS and n > before.get(k, 0))

    def _trajectories(self, rows, period, now):
        """Return ((controller, Trajectory), ...) or a reason: the bridge would send a bug."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, len(self.names))
        out = []
        for controller, joints in self.controllers:
            columns = [self._index[j] for j in joints]
            trajectory = chunk_trajectory(joints, rows[:, columns], period)
            refusal = bridge_refusal(trajectory, joints, int(now * 1e9))
            if refusal:
                return f'{controller}: {refusal}'
            out.append((controller, trajectory))
        return tuple(out)

    def _send(self, rows, period, stamp, now, events, reason):
        trajectories = self._trajectories(rows, period, now)
        if isinstance(trajectories, str):
            return Outcome((), ('refused_bug',), f'a trajectory JTC would refuse: {trajectories}')
        self.last_stamp = stamp
        self.busy_until = now + len(rows) * period
        self.watchdog_armed = True
        return Outcome(trajectories, events, reason)

    def _hold(self, now):
        measured = self.measured(now)
        if measured is None:
            return None
        key, self.hold_owed = self.hold_owed, None
        trajectories = self._trajectories([measured], self.config.tick_period, now)
        if isinstance(trajectories, str):
            return Outcome((), ('refused_bug',), f'a hold JTC would refuse: {trajectories}')
        return Outcome(trajectories, (key,), 'holding the measured positions')
