"""
The arm bridge's safety core: every check between a policy delta and an arm command (ROS-free).

Times are float seconds on one clock (the node clock); positions are metres in the base frame;
quaternions are ``(x, y, z, w)``; a delta is ``[dx, dy, dz, droll, dpitch, dyaw]`` with the
rotation ``R = Rz(yaw) Ry(pitch) Rx(roll)`` (OpenVLA / BridgeData V2).

Order of the checks for one delta (``check_delta``, then the mode's ``offer``):

1. NaN or inf anywhere (delta or stamp): rejected.
2. Stamp older than ``command_timeout`` or more than ``future_tolerance`` ahead of now: dropped
   (stale; future, or stale when the clock has since jumped back from a time after it).
3. Stamp older than the last accepted stamp (reordered), or than the last enable: dropped
   (2 and 3: ``vla_ros.control.stamps``, shared with the joint bridge). An
   equal stamp is accepted: vla_node publishes the rows of one chunk with one image stamp, and
   equal rows (a discrete head, a saturated or all-zero chunk, a policy holding still) are
   steps like any other. Only a *repeat* is not: the same stamp and values as the last accepted
   delta, arriving (node clock at receipt) less than half a stream period after it, is the same
   message delivered twice (a DDS repeat, a re-publish), dropped as ``dropped_duplicate``. The
   window is the burst rule of ``vla_ros.control.step_period.same_burst``: rows come one per
   control step, several stream periods apart, and two rows that do arrive within one stream
   period would make one step anyway (next sentence).
   Of several deltas accepted within one stream period (a burst), the newest wins and replaces
   the others (counted as ``superseded``): one output never carries more than one step.
4. Per-axis clip to +-``max_step_translation`` (x, y, z) and +-``max_step_rotation`` (roll,
   pitch, yaw), as the WidowX / Bridge stack's ``np.clip`` does.
5. No fresh measured pose (older than ``pose_timeout``): dropped.
6. Workspace box: the translation is cut so the step ends inside ``[workspace_min,
   workspace_max]``, from the previous target (``pose_target``) or from the predicted arm
   position (``servo_twist``). From outside the box (an arm started outside) a step may move
   towards the box or stay, never further out on any axis: the box never pushes the arm.
7. Speed: no step moves the arm faster than ``max_linear_speed`` (m/s, the norm of the
   translation) or ``max_angular_speed`` (rad/s, the angle of the rotation), counted as
   ``clamped_speed``. The per-step clips bound a step, not how often steps come: the learned
   step period follows the arrivals down to one stream period, so 0.05 m deltas arriving at
   60 Hz (a wrong ``control_rate_hz``, two publishers, a replay) would stream 2.5 m/s per axis.
   One factor scales the translation and the rotation together (``speed_share``), so the step
   keeps its direction and its screw: a per-axis limit would bend a diagonal step and still let
   it go sqrt(3) times the limit. ``servo_twist`` streams the step over a longer period (the
   twist scaled down to the limit, the step itself unchanged, still cut at ``stamp +
   command_timeout`` and by the next delta); ``pose_target`` shortens the step to what the
   limits allow in the time since the target last moved, at most ``command_timeout`` (a longer
   pause is a pause: no motion is owed for it). Deltas in a burst, one tick apart, so move the
   target one tick's worth each; the period a policy is learned to have plays no part.

``TwistStreamer`` (``servo_twist``) turns an accepted delta into a twist ``delta / period``
streamed until ``min(accept time + period, stamp + command_timeout)`` and zero after, so a twist
is never published from a delta older than ``command_timeout``. The period is the policy's step
period: fixed (``step_duration``), or learned from the arrivals of the accepted deltas
(``vla_ros.control.step_period``), so a 5 Hz policy and a 20 Hz chunked one both move at the
speed they ask for. ``TargetTracker`` (``pose_target``) composes the delta onto the previous
target, Bridge-style. Both sit behind ``enabled``: disabled means zero twist, or the measured
pose at disable time held. After a backward jump of the node clock (``use_sim_time``, a bag
played in a loop) ``clock_jumped`` starts both again on the new time.
"""

import collections
import dataclasses
import math

import numpy as np

from vla_ros.control.geometry import (compose_pose, is_finite_number, matrix_to_rpy,
                                      rotation_from_vector, rotation_vector, rpy_to_matrix)
from vla_ros.control.stamps import stamp_refusal
from vla_ros.control.step_period import same_burst, StepPeriod

EVENTS = ('accepted', 'clamped_translation', 'clamped_rotation', 'clamped_box', 'dropped_stale',
          'dropped_future', 'dropped_reordered', 'dropped_duplicate', 'dropped_disabled',
          'dropped_no_pose', 'rejected_nan', 'reseeds', 'superseded', 'clamped_speed')


@dataclasses.dataclass(frozen=True)
class SafetyLimits:
    """The bridge's limits; each field is the arm_bridge parameter of the same name."""

    max_step_translation: float = 0.05
    max_step_rotation: float = 0.25
    workspace_min: tuple = (0.1, -0.4, 0.0)
    workspace_max: tuple = (0.7, 0.4, 0.6)
    command_timeout: float = 0.5
    future_tolerance: float = 0.05
    pose_timeout: float = 0.5
    reseed_distance: float = 0.05
    # 5 Hz steps at the clips on all axes at once: 0.43 m/s, 2.2 rad/s (docs/arm_bridge.md).
    max_linear_speed: float = 0.5
    max_angular_speed: float = 2.5

    def validate(self):
        """Return a list of problems, each naming the parameter and its allowed range."""
        problems = []
        ranges = (('max_step_translation', 0.0, 0.5, 'm'), ('max_step_rotation', 0.0, 1.0, 'rad'),
                  ('command_timeout', 0.0, 60.0, 's'), ('pose_timeout', 0.0, 60.0, 's'),
                  ('reseed_distance', 0.0, 1.0, 'm'), ('max_linear_speed', 0.0, 5.0, 'm/s'),
                  ('max_angular_speed', 0.0, 20.0, 'rad/s'))
        for name, low, high, unit in ranges:
            value = getattr(self, name)
            if not (is_finite_number(value) and low < value <= high):
                problems.append(f"parameter '{name}' is {value!r}; allowed range ({low}, {high}] "
                                f'{unit}')
        value = self.future_tolerance
        if not (is_finite_number(value) and 0.0 <= value <= 1.0):
            problems.append(f"parameter 'future_tolerance' is {value!r}; allowed range "
                            '[0.0, 1.0] s')
        boxes_ok = True
        for name in ('workspace_min', 'workspace_max'):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 3
                    and all(is_finite_number(v) and abs(v) <= 100.0 for v in value)):
                boxes_ok = False
                problems.append(f"parameter '{name}' is {value!r}; allowed: 3 finite numbers "
                                '[x, y, z] in metres within +-100, e.g. [0.1, -0.4, 0.0]')
        if boxes_ok and not all(lo < hi for lo, hi in zip(self.workspace_min,
                                                          self.workspace_max)):
            problems.append(f"parameters 'workspace_min' {list(self.workspace_min)} and "
                            f"'workspace_max' {list(self.workspace_max)}: each axis of "
                            'workspace_min must be < the same axis of workspace_max')
        return problems


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What became of one delta: the accepted (clamped) delta or None, counted events, a reason."""

    delta: object
    events: tuple
    reason: str = ''


@dataclasses.dataclass(frozen=True)
class Pose:
    """A measured or target pose: position (3,), unit quaternion (x, y, z, w), its time."""

    position: np.ndarray
    quaternion: np.ndarray
    time: float


# ------------------------------------------------------------------------------ checks
def check_delta(delta, stamp, now, limits, last_stamp=-math.inf, jumped_from=-math.inf):
    """
    Run checks 1 to 4 of the module docstring on one delta; return a ``Verdict``.

    ``delta``: 6 floats ``[dx, dy, dz, droll, dpitch, dyaw]``; ``last_stamp``: the newest stamp
    accepted (or the last enable time); ``jumped_from``: when the clock last jumped back from.
    """
    values = np.asarray(delta, dtype=np.float64).reshape(6)
    if not np.all(np.isfinite(values)):
        return Verdict(None, ('rejected_nan',), f'non-finite delta {values.tolist()}')
    refusal = stamp_refusal(stamp, now, limits.command_timeout, limits.future_tolerance,
                            last_stamp, jumped_from, 'delta')
    if refusal is not None:
        return Verdict(None, (refusal[0],), refusal[1])
    events = ['accepted']
    clipped = values.copy()
    clipped[:3] = np.clip(values[:3], -limits.max_step_translation, limits.max_step_translation)
    clipped[3:] = np.clip(values[3:], -limits.max_step_rotation, limits.max_step_rotation)
    if np.any(clipped[:3] != values[:3]):
        events.append('clamped_translation')
    if np.any(clipped[3:] != values[3:]):
        events.append('clamped_rotation')
    return Verdict(clipped, tuple(events))


def bound_translation(position, step, limits):
    """
    Return (step cut to stay in the workspace box, True if it was cut).

    Per axis the end point ``position + step`` is clipped to the box widened to contain
    ``position``: inside the box a step ends inside; outside, it never goes further out.
    """
    position = np.asarray(position, dtype=np.float64)
    low = np.minimum(np.asarray(limits.workspace_min, dtype=np.float64), position)
    high = np.maximum(np.asarray(limits.workspace_max, dtype=np.float64), position)
    end = position + step
    bounded = np.clip(end, low, high)
    return bounded - position, bool(np.any(bounded != end))


def speed_share(translation, rotation, seconds, limits):
    """
    Return the share in [0, 1] of a step that the speed limits allow in ``seconds`` (check 7).

    ``translation`` in metres and ``rotation`` (a rotation vector) in radians are scaled by the
    one share, so the step keeps its direction.
    """
    needs = max(float(np.linalg.norm(translation)) / limits.max_linear_speed,
                float(np.linalg.norm(rotation)) / limits.max_angular_speed)  # s at the limits
    if needs <= seconds:
        return 1.0
    return max(0.0, seconds) / needs


def _slowed(verdict, translation, rotation, seconds, limits):
    """Return ``verdict`` with ``clamped_speed`` counted and the speeds asked as its reason."""
    seconds = max(seconds, 1e-9)
    reason = (f'a step of {np.linalg.norm(translation):.3g} m, {np.linalg.norm(rotation):.3g} rad '
              f'in {seconds:.3g} s asks {np.linalg.norm(translation) / seconds:.3g} m/s, '
              f'{np.linalg.norm(rotation) / seconds:.3g} rad/s; limits: max_linear_speed '
              f'{limits.max_linear_speed} m/s, max_angular_speed {limits.max_angular_speed} rad/s')
    return dataclasses.replace(verdict, events=verdict.events + ('clamped_speed',), reason=reason)


def make_pose(position, quaternion, time):
    """Return a ``Pose`` from raw values, or None when they are non-finite or degenerate."""
    position = np.asarray(position, dtype=np.float64).reshape(3)
    quaternion = np.asarray(quaternion, dtype=np.float64).reshape(4)
    norm = float(np.linalg.norm(quaternion))
    if not (np.all(np.isfinite(position)) and math.isfinite(norm) and norm > 1e-6):
        return None
    return Pose(position, quaternion / norm, float(time))


@dataclasses.dataclass(frozen=True)
class Command:
    """
    One output of a mode's ``tick``.

    ``state`` is ``moving``, ``idle`` (no motion, within command_timeout), ``watchdog`` (no fresh
    delta within command_timeout), ``disabled`` or ``waiting`` (pose_target with no pose: publish
    nothing). ``source_stamp`` is the stamp of the delta the motion came from (None for holds).
    Servo: ``linear``/``angular`` in m/s and rad/s. Pose target: ``pose``.
    """

    state: str
    linear: np.ndarray = None
    angular: np.ndarray = None
    pose: Pose = None
    source_stamp: float = None


class _Mode:
    """
    What both output modes share: the enable switch, the stamp order and the measured pose.

    ``stream_period``: seconds between two ticks (1 / ``stream_rate_hz``), which sets the window
    within which the same delta is a repeat (check 3).
    """

    def __init__(self, limits, stream_period):
        self.limits = limits
        self.stream_period = float(stream_period)
        self.enabled = True
        self.last_stamp = -math.inf   # newest accepted stamp, or the last enable time
        self.ever_accepted = False
        self.pose = None              # the newest measured Pose (time = arrival on the node clock)
        self._last_raw = None         # the last accepted delta as received, for repeats
        self._last_arrival = None     # and when it arrived
        self._offered = False         # a delta was accepted since the last tick
        self._jumped_from = -math.inf  # the latest time the clock jumped back from

    def update_pose(self, pose):
        self.pose = pose

    def fresh_pose(self, now):
        """Return the measured pose if it arrived within ``pose_timeout``, else None."""
        if self.pose is None or now - self.pose.time > self.limits.pose_timeout:
            return None
        return self.pose

    def _gate(self, delta, stamp, now, arrival):
        if not self.enabled:
            return Verdict(None, ('dropped_disabled',), 'delta while disabled')
        raw = np.asarray(delta, dtype=np.float64).reshape(6)
        if (stamp == self.last_stamp and np.array_equal(raw, self._last_raw)
                and same_burst(self._last_arrival, arrival, self.stream_period)):
            return Verdict(None, ('dropped_duplicate',), 'the same delta (stamp and values) as '
                           f'the last accepted one, {arrival - self._last_arrival:.4f} s after '
                           'it: the same message twice, not a new step')
        verdict = check_delta(raw, stamp, now, self.limits, self.last_stamp, self._jumped_from)
        if verdict.delta is not None and self.fresh_pose(now) is None:
            return Verdict(None, ('dropped_no_pose',), 'no fresh ee_pose: the workspace box '
                           'cannot be checked')
        return verdict

    def _accept(self, verdict, stamp, arrival, raw, step, box_cut):
        """Record an accepted delta; return its verdict with ``step`` (6 values) as the delta."""
        self.last_stamp = stamp
        self._last_raw = np.asarray(raw, dtype=np.float64).reshape(6)
        self._last_arrival = arrival
        self.ever_accepted = True
        events = verdict.events + (('clamped_box',) if box_cut else ())
        events += ('superseded',) if self._offered else ()
        self._offered = True
        return Verdict(np.asarray(step, dtype=np.float64), events)

    def _idle_state(self, now):
        timed_out = now - self.last_stamp > self.limits.command_timeout
        return 'watchdog' if self.ever_accepted and timed_out else 'idle'

    def clock_jumped(self, now, jumped_from):
        """
        Start again on the new time: the clock jumped back from ``jumped_from`` to ``now``.

        What was timed on the old time lies ahead of the new one and would pass every age check
        (or drop every new delta as reordered) for as long as the jump. Forgotten: the stamp
        order, the repeat memory, the watchdog, the measured pose's freshness (deltas are
        followed again once an ee_pose arrives on the new time), the mode's own timing (see its
        override); a delta stamped before the jump is stale. Kept: what is not time.
        """
        self.last_stamp, self._last_raw, self._last_arrival = -math.inf, None, None
        self.ever_accepted = self._offered = False
        self._jumped_from = max(self._jumped_from, jumped_from)
        if self.pose is not None:
            self.pose = dataclasses.replace(self.pose, time=-math.inf)

    def set_enabled(self, enabled, now):
        """Switch motion on or off; on enable, deltas stamped before ``now`` are refused."""
        if enabled and not self.enabled:
            self.last_stamp = max(self.last_stamp, now)
            self._last_raw = None
        self.enabled = bool(enabled)


class TwistStreamer(_Mode):
    """
    ``servo_twist``: each accepted delta becomes a twist streamed for one step, then zeros.

    The workspace box is checked against the *predicted* position: the measured pose plus the
    motion this streamer has commanded since that pose arrived, so a lagging or briefly missing
    ``ee_pose`` cannot let a step leave the box.

    ``step_duration``: the step period in seconds, or 0 to learn it from ``offer``'s ``arrival``
    times (``StepPeriod``).
    """

    def __init__(self, limits, step_duration, stream_period):
        super().__init__(limits, stream_period)
        self.step = StepPeriod(step_duration, shortest=stream_period)
        # Commanded motions, oldest first: [start, end, linear, angular, source stamp]. The last
        # one is the current stream while ``now < end``; a new delta or a stop cuts its end.
        self._segments = collections.deque()

    def predicted_position(self, now):
        """Return the measured position plus the commanded motion since it arrived."""
        since = self.pose.time
        shift = np.zeros(3)
        for start, end, linear, _, _ in self._segments:
            overlap = min(end, now) - max(start, since)
            if overlap > 0:
                shift += linear * overlap
        return self.pose.position + shift

    @property
    def step_duration(self):
        """Return the step period in force, in seconds (fixed, first guess or learned)."""
        return self.step.seconds(self.limits.command_timeout)

    def offer(self, delta, stamp, now, arrival=None):
        """
        Check one delta at time ``now`` and, if accepted, start streaming it.

        ``arrival`` is when the delta arrived (default ``now``); an accepted delta's arrival
        teaches the learned step period, which then sets the speed of its step, unless that is
        above the speed limits: then the step lasts longer (check 7).
        """
        arrival = now if arrival is None else arrival
        verdict = self._gate(delta, stamp, now, arrival)
        if verdict.delta is None:
            return verdict
        step, cut = bound_translation(self.predicted_position(now), verdict.delta[:3],
                                      self.limits)
        verdict = self._accept(verdict, stamp, arrival, delta,
                               np.concatenate([step, verdict.delta[3:]]), cut)
        self.step.arrive(arrival, self.limits.command_timeout)
        period = self.step_duration
        rotation = rotation_vector(rpy_to_matrix(*verdict.delta[3:]))
        share = speed_share(step, rotation, period, self.limits)
        if share < 1.0:
            verdict = _slowed(verdict, step, rotation, period, self.limits)
            period /= share
        self._stop(now)
        end = min(now + period, stamp + self.limits.command_timeout)
        self._segments.append([now, end, step / period, rotation / period, stamp])
        horizon = now - 2.0 * (self.limits.pose_timeout + period)
        while self._segments and self._segments[0][1] < horizon:
            self._segments.popleft()
        return verdict

    def tick(self, now):
        """
        Return the twist to publish at ``now`` (a ``Command``; zero unless ``moving``).

        The last tick of a step is scaled down so that, held for one stream period, the
        stream moves the arm by the delta and no more.
        """
        zero = np.zeros(3)
        self._offered = False
        if not self.enabled:
            return Command('disabled', zero, zero)
        if not self._segments or now >= self._segments[-1][1]:
            return Command(self._idle_state(now), zero, zero)
        _, end, linear, angular, stamp = self._segments[-1]
        scale = min(1.0, (end - now) / self.stream_period)
        return Command('moving', linear * scale, angular * scale, source_stamp=stamp)

    def _stop(self, now):
        if self._segments and self._segments[-1][1] > now:
            self._segments[-1][1] = now

    def set_enabled(self, enabled, now):
        """Switch motion on or off; off stops the stream at once."""
        super().set_enabled(enabled, now)
        if not enabled:
            self._stop(now)

    def reset(self, now):
        """Forget the stream (zero twist from now on)."""
        self._stop(now)

    def clock_jumped(self, now, jumped_from):
        """Also stop the stream at once: its segments end on the old time."""
        super().clock_jumped(now, jumped_from)
        self._segments.clear()


class TargetTracker(_Mode):
    """
    ``pose_target``: an absolute target, the previous target composed with each delta.

    No step period: a step moves the target at once, by at most what the speed limits allow in
    the time since the target last moved (check 7).
    """

    def __init__(self, limits, stream_period):
        super().__init__(limits, stream_period)
        self.target = None         # Pose
        self._moved_at = None      # stamp of the delta that last moved the target
        self._moved_time = None    # node time (a tick) at which a delta last moved the target
        self._before = None        # (target, moved_at, moved_time) before this period's delta

    def offer(self, delta, stamp, now, arrival=None):
        """Check one delta at ``now`` and, if accepted, move the target by it."""
        arrival = now if arrival is None else arrival
        verdict = self._gate(delta, stamp, now, arrival)
        if verdict.delta is None:
            return verdict
        if self._offered:  # a burst: the newest delta replaces this period's earlier one
            self.target, self._moved_at, self._moved_time = self._before
        self._before = (self.target, self._moved_at, self._moved_time)
        measured = self.pose
        reseed = (self.target is None or np.linalg.norm(self.target.position - measured.position)
                  > self.limits.reseed_distance)
        base = measured if reseed else self.target
        step, cut = bound_translation(base.position, verdict.delta[:3], self.limits)
        timeout = self.limits.command_timeout
        since = timeout if self._moved_time is None else min(now - self._moved_time, timeout)
        rotation = rotation_vector(rpy_to_matrix(*verdict.delta[3:]))
        share = speed_share(step, rotation, since, self.limits)
        rpy = verdict.delta[3:] if share == 1.0 else \
            matrix_to_rpy(rotation_from_vector(rotation * share))
        verdict = self._accept(verdict, stamp, arrival, delta, np.r_[step * share, rpy], cut)
        if share < 1.0:
            verdict = _slowed(verdict, step, rotation, since, self.limits)
        position, quaternion = compose_pose(base.position, base.quaternion, verdict.delta)
        self.target = Pose(position, quaternion, now)
        self._moved_at, self._moved_time = stamp, now
        return dataclasses.replace(verdict, events=verdict.events
                                   + (('reseeds',) if reseed else ()))

    def tick(self, now):
        """Return the target to publish at ``now``; ``waiting`` (publish nothing) with no pose."""
        self._offered = False
        if self.target is None:
            if self.pose is None:
                return Command('waiting')
            self.target = self.pose  # first pose (or after reset): hold where the arm is
            self._moved_at = None
        if not self.enabled:
            return Command('disabled', pose=self.target)
        if self._moved_at is not None and now - self._moved_at <= self.limits.command_timeout:
            return Command('moving', pose=self.target, source_stamp=self._moved_at)
        return Command(self._idle_state(now), pose=self.target)

    def set_enabled(self, enabled, now):
        """Disable holds the measured pose at once (the last target if none was ever measured)."""
        super().set_enabled(enabled, now)
        if not enabled and self.pose is not None:
            self.target = self.pose
            self._moved_at = None

    def reset(self, now):
        """Forget the target: the next tick holds the measured pose (disabled: keep the hold)."""
        if self.enabled:
            self.target = None
        self._moved_at = None

    def clock_jumped(self, now, jumped_from):
        """Also forget when the target last moved (not ``moving``); the target stays held."""
        super().clock_jumped(now, jumped_from)
        self._moved_at = self._moved_time = None
