"""
arm_bridge: the policy's end-effector deltas in, commands an arm driver accepts out, bounded.

Inputs: ``vla/ee_delta`` (PoseStamped delta), ``vla/gripper`` (Float64), ``ee_pose`` (the arm's
measured end-effector pose in ``base_frame``). Outputs, by ``output_mode`` (``joint_trajectory``:
``main`` runs ``vla_ros.nodes.joint_bridge`` instead, joint-space policies to ros2_control):

* ``servo_twist``: ``servo_node/delta_twist_cmds`` (TwistStamped, m/s and rad/s in
  ``base_frame``, streamed at ``stream_rate_hz`` with fresh stamps). Configure MoveIt Servo with
  ``command_in_type: speed_units``; the angular part turns about the end effector with
  base-aligned axes, as Servo applies a twist given in the planning frame. Each delta lasts one
  step period: learned from the arrivals of the deltas (``step_duration`` 0, the default), so
  the policy's rate is configured once, in the policy; or fixed by ``step_duration``.
* ``pose_target``: ``target_pose`` (PoseStamped), the previous target composed with each delta,
  streamed at ``stream_rate_hz`` (fzi cartesian controllers, Servo pose mode).

plus ``gripper/command`` (Float64 position after hysteresis) and ``/diagnostics`` (1 Hz). Every
check lives in ``vla_ros.control.safety`` and ``vla_ros.control.gripper``; this node only moves
messages in and out. Callbacks store, in arrival order; one timer on the node clock processes
everything, so ``use_sim_time`` works and all state is touched by one thread.

Run-time parameter changes: a safety limit may be tightened while the bridge runs (at the next
tick); loosening one, or changing another parameter, is refused: restart the bridge with it.
"""

import collections
import dataclasses
import math
import sys

from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.time import Time
from std_msgs.msg import Float64
from std_srvs.srv import SetBool, Trigger

from vla_ros.control import clock, geometry, readers, safety
from vla_ros.control.gripper import GripperConfig, GripperHysteresis, PAIRINGS, StepPairing
from vla_ros.control.images import ConversionError
from vla_ros.control.stats import Counters, RateMeter
from vla_ros.nodes import diagnostics, joint_bridge, params, qos
from vla_ros.nodes.logs import LogThrottle
from vla_ros.nodes.startup import report_problems, run

MODES = ('servo_twist', 'pose_target', joint_bridge.MODE)
MAX_PENDING = 64           # deltas and gripper values waiting for the next tick

_L = safety.SafetyLimits()
_G = GripperConfig()
PARAMS = (
    params.NodeParam('output_mode', 'servo_twist', "'servo_twist' (TwistStamped to MoveIt "
                     "Servo), 'pose_target' (absolute PoseStamped target) or 'joint_trajectory'.",
                     check=lambda v: v in MODES, allowed=', '.join(MODES)),
    params.NodeParam('base_frame', 'base_link', 'Frame of ee_pose and of the deltas; deltas in '
                     'another frame are rejected.', check=lambda v: bool(v.strip('/')),
                     allowed='a non-empty frame name, e.g. base_link'),
    params.NodeParam('stream_rate_hz', 50.0, 'Rate of the output stream, Hz.',
                     check=lambda v: 0.0 < v <= 1000.0, allowed='(0, 1000] Hz'),
    params.NodeParam('step_duration', 0.0, 'Seconds one delta lasts (servo_twist: twist = delta '
                     '/ step period). 0: learn it, the median interval between arriving deltas '
                     '(first step: command_timeout). Else fixed, in [1 / stream_rate_hz, 10].'),
    params.NodeParam('command_timeout', _L.command_timeout, 'Seconds; older deltas are dropped '
                     'and no motion comes from a delta older than this. In (0, 60].',
                     runtime=True),
    params.NodeParam('future_tolerance', _L.future_tolerance, 'Seconds a delta stamp may be '
                     'ahead of the node clock. In [0, 1].', runtime=True),
    params.NodeParam('pose_timeout', _L.pose_timeout, 'Seconds; with no ee_pose newer than '
                     'this, deltas are dropped. In (0, 60].', runtime=True),
    params.NodeParam('max_step_translation', _L.max_step_translation, 'Per-axis clip of a step, '
                     'm. In (0, 0.5].', runtime=True),
    params.NodeParam('max_step_rotation', _L.max_step_rotation, 'Per-axis clip of roll, pitch, '
                     'yaw of a step, rad. In (0, 1].', runtime=True),
    params.NodeParam('workspace_min', list(_L.workspace_min), 'Lower corner [x, y, z] of the '
                     'workspace box in base_frame, m.', runtime=True),
    params.NodeParam('workspace_max', list(_L.workspace_max), 'Upper corner [x, y, z] of the '
                     'workspace box in base_frame, m.', runtime=True),
    params.NodeParam('reseed_distance', _L.reseed_distance, 'pose_target: the target restarts '
                     'from ee_pose when it is further than this from it, m. In (0, 1].',
                     runtime=True),
    params.NodeParam('max_linear_speed', _L.max_linear_speed, 'Speed limit of the end effector, '
                     'm/s (norm); a faster step is slowed (servo_twist) or shortened '
                     '(pose_target) along its direction. In (0, 5].', runtime=True),
    params.NodeParam('max_angular_speed', _L.max_angular_speed, 'Angular speed limit of the end '
                     'effector, rad/s (angle); as max_linear_speed. In (0, 20].', runtime=True),
    params.NodeParam('gripper_convention', _G.convention, "'open_is_one', 'closed_is_one' or "
                     "'signed' (-1 = open, +1 = closed)."),
    params.NodeParam('gripper_threshold', _G.threshold, 'Openness threshold of the hysteresis, '
                     'in (0, 1).'),
    params.NodeParam('gripper_consecutive', _G.consecutive, 'Votes in a row needed to flip the '
                     'gripper, in [1, 100].'),
    params.NodeParam('gripper_open_position', _G.open_position, 'gripper/command value for '
                     'open.'),
    params.NodeParam('gripper_closed_position', _G.closed_position, 'gripper/command value for '
                     'closed.'),
)
_LIMITS = tuple(f.name for f in dataclasses.fields(safety.SafetyLimits))
BASE_FRAME = "parameter 'base_frame'"  # where the frame of ee_pose and the deltas is set
RESTART_HINT = 'only the safety limits may change, and only tighten, while arm_bridge runs; ' \
    'restart it with -p NAME:=VALUE'


def configuration(values):
    """
    Turn raw parameter values (a dict) into (settings dict, SafetyLimits, GripperConfig, problems).

    Every problem names the parameter and its allowed range or values. A value of the wrong type
    is reported once and the default stands in for it, so the other checks still run.
    """
    v, problems = {}, []
    for p in PARAMS:
        v[p.name], problem = params.check(p, values[p.name])
        if problem:
            problems.append(problem)
            v[p.name], _ = params.check(p, p.default)
    limits = safety.SafetyLimits(**{name: v[name] for name in _LIMITS})
    grip = GripperConfig(v['gripper_convention'], v['gripper_threshold'],
                         v['gripper_consecutive'], v['gripper_open_position'],
                         v['gripper_closed_position'])
    low = 1.0 / v['stream_rate_hz']
    if v['step_duration'] != 0.0 and not low - 1e-9 <= v['step_duration'] <= 10.0:
        problems.append(f"parameter 'step_duration' is {v['step_duration']!r}; allowed: 0 (learn "
                        f'the step period from the deltas) or [{low:.6g} (one stream period), 10] '
                        's')
    return v, limits, grip, problems + limits.validate() + grip.validate()


def tightened(limits, changes):
    """
    Return (new SafetyLimits, None), or (None, reason) if a change loosens a limit or is invalid.

    Smaller is tighter for the clips, timeouts, tolerances and reseed distance; a box is tighter
    when it lies inside the one in force.
    """
    new = dataclasses.replace(limits, **changes)
    problems = new.validate()
    if problems:
        return None, problems[0]
    for name, value in changes.items():
        old = getattr(limits, name)
        if name == 'workspace_min':
            looser = any(n < o for n, o in zip(value, old))
        elif name == 'workspace_max':
            looser = any(n > o for n, o in zip(value, old))
        else:
            looser = value > old
        if looser:
            shown = [list(v) if isinstance(v, tuple) else v for v in (value, old)]
            return None, (f"'{name}' {shown[0]} would loosen the limit in force ({shown[1]}); a "
                          'safety limit may only tighten while arm_bridge runs: restart it with '
                          f'-p {name}:=... to loosen it')
    return new, None


class ArmBridge(Node):
    """The bridge node; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('arm_bridge', **kwargs)
        params.declare(self, PARAMS)
        self.cfg = self.limits = self.core = None
        self._inbox = collections.deque()  # ('delta' | 'gripper', msg or value, arrival)
        self._pose_msg = None        # (PoseStamped, arrival time), newest only
        self._pose_state = 'waiting'  # waiting, fresh, stale: logged on each change
        self._state = None
        self._clock_watch = clock.ClockWatch()  # node clock readings: a jump back is noticed
        self._log = LogThrottle(self.get_logger())  # once per 5 s per kind of problem
        self._stream_rate = RateMeter()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def start(self):
        """Check every parameter, then create the I/O; return False if a problem was reported."""
        self.cfg, self.limits, grip, problems = configuration(
            {p.name: self.get_parameter(p.name).value for p in PARAMS})
        if problems:
            report_problems(self.get_logger(), problems)
            return False
        self.servo = self.cfg['output_mode'] == 'servo_twist'
        self.base_frame = self.cfg['base_frame'].lstrip('/')
        period = 1.0 / self.cfg['stream_rate_hz']
        if self.servo:
            self.core = safety.TwistStreamer(self.limits, self.cfg['step_duration'], period)
        else:
            self.core = safety.TargetTracker(self.limits, period)
        self.gripper = GripperHysteresis(grip)
        self.pairing = StepPairing()
        self._watchdog_key = 'watchdog_zeros' if self.servo else 'watchdog_holds'
        self.counters = Counters(*safety.EVENTS, 'rejected_frame', 'rejected_quaternion',
                                 'dropped_burst', self._watchdog_key, 'watchdog_trips',
                                 'disabled_ticks', 'rejected_pose', 'gripper_flips', 'clock_jumps',
                                 'gripper_rejected', *(f'gripper_{p}' for p in PAIRINGS))
        self._pose_topic = self.resolve_topic_name('ee_pose')
        if self.servo:
            self._out = self.create_publisher(TwistStamped, 'servo_node/delta_twist_cmds',
                                              qos.COMMAND)
        else:
            self._out = self.create_publisher(PoseStamped, 'target_pose', qos.COMMAND)
        self._gripper_out = self.create_publisher(Float64, 'gripper/command', qos.COMMAND)
        self._diagnostics = self.create_publisher(diagnostics.DiagnosticArray, '/diagnostics',
                                                  qos.COMMAND)
        self.create_subscription(PoseStamped, 'vla/ee_delta', self._on_delta, qos.COMMAND)
        self.create_subscription(Float64, 'vla/gripper', self._on_gripper, qos.COMMAND)
        self.create_subscription(PoseStamped, 'ee_pose', self._on_pose, qos.SENSOR)
        self.create_service(SetBool, '~/enable', self._on_enable)
        self.create_service(Trigger, '~/reset', self._on_reset)
        self.create_timer(period, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        fixed = self.cfg['step_duration'] > 0.0
        step = (f"{self.cfg['step_duration']} s (fixed)" if fixed else 'learned from the deltas '
                f'(first step: {self.limits.command_timeout} s = command_timeout)')
        step = step if self.servo else 'unused (pose_target)'
        self.get_logger().info(
            f"started: output_mode={self.cfg['output_mode']} base_frame={self.base_frame} "
            f"stream_rate_hz={self.cfg['stream_rate_hz']} step_duration={step} "
            f'{self._limits_text()} gripper={grip.convention} threshold={grip.threshold} '
            f'x{grip.consecutive}')
        if self.servo and fixed and self.cfg['step_duration'] >= self.limits.command_timeout:
            self.get_logger().warning(
                f"step_duration {self.cfg['step_duration']} s is not below command_timeout "
                f'{self.limits.command_timeout} s: each twist stream ends command_timeout after '
                "the delta's stamp, so the arm moves less than the policy asks. Set step_duration "
                "to 0 (learn it) or 1 / vla_node's control_rate_hz, or raise command_timeout")
        what = ('deltas are dropped (the workspace box needs the arm position) and zero twist is '
                'streamed' if self.servo else 'nothing is published')
        self.get_logger().warning(f'waiting for ee_pose on {self._pose_topic}: {what} until it '
                                  'arrives')
        return True

    def close(self):
        """Nothing to release: the bridge owns no thread or device."""

    def _limits_text(self):
        lim = self.limits
        return (f'command_timeout={lim.command_timeout} s max_step={lim.max_step_translation} '
                f'm/{lim.max_step_rotation} rad max_speed={lim.max_linear_speed} m/s/'
                f'{lim.max_angular_speed} rad/s workspace={list(lim.workspace_min)}..'
                f'{list(lim.workspace_max)}')

    def _now(self):
        """Read the node clock; a reading before the previous one is a jump back, handled first."""
        now = self.get_clock().now().nanoseconds * 1e-9
        jump = self._clock_watch.read(now)
        if jump:
            self._clock_jumped(now, now + jump)
        return now

    def _clock_jumped(self, now, before):
        """Start again on the new time (see ``safety``): what arrived before it is dropped."""
        self.core.clock_jumped(now, before)
        self._inbox.clear()
        self._pose_msg = None
        self.pairing.reset()
        self._pose_state = 'stale' if self.core.pose is not None else 'waiting'  # said here
        self.counters.bump('clock_jumps')
        self.get_logger().warning(
            f'the clock jumped back {before - now:.3f} s (use_sim_time: a bag played with '
            f"--loop?): {'zero twist' if self.servo else 'holding the target'}; deltas are "
            'followed again once an ee_pose arrives on the new time')

    def _on_set_parameters(self, changes):
        values, reason = params.check_changes(PARAMS, changes, self.core is not None,
                                              RESTART_HINT)
        limits = self.limits
        if reason is None and values and self.core is not None:
            limits, reason = tightened(self.limits, values)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        if self.core is not None and limits is not self.limits:
            self.limits = self.core.limits = limits
            self.get_logger().info(f'safety limits tightened: {self._limits_text()}')
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- callbacks: store only
    def _store(self, kind, item):
        if len(self._inbox) >= MAX_PENDING:
            self._inbox.popleft()
            self.counters.bump('dropped_burst', 'more deltas than one tick can take')
        self._inbox.append((kind, item, self._now()))

    def _on_delta(self, msg):
        self._store('delta', msg)

    def _on_gripper(self, msg):
        self._store('gripper', msg.data)

    def _on_pose(self, msg):
        self._pose_msg = (msg, self._now())

    # ---------------------------------------------------------------- services
    def _on_enable(self, request, response):
        now = self._now()
        self._update_pose(now)
        self.core.set_enabled(request.data, now)
        self._inbox.clear()
        self.pairing.reset()
        if request.data:
            response.message = 'enabled: deltas stamped from now on are followed'
        else:
            command = self.core.tick(now)
            self._publish(command, now)  # the zero twist / hold goes out at once
            response.message = ('disabled: zero twist sent' if self.servo else
                                'disabled: holding the measured pose')
        response.success = True
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, request, response):
        self.core.reset(self._now())
        self._inbox.clear()
        self.pairing.reset()
        response.success = True
        response.message = ('reset: stream cleared, zero twist' if self.servo else
                            'reset: target forgotten, holding the measured pose')
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------- the stream loop
    def _tick(self):
        now = self._now()
        self._update_pose(now)
        while self._inbox:
            kind, item, arrival = self._inbox.popleft()
            if kind == 'delta':
                accepted = self._offer(item, now, arrival)
                if accepted is not None:  # a repeat is no new step for a gripper to pair with
                    self._gripper_commands(self.pairing.delta(arrival, accepted))
            else:
                self._gripper_commands(self.pairing.gripper(arrival, item))
        self._gripper_commands(self.pairing.expire(now))
        if self.servo:
            news = self.core.step.news(self.limits.command_timeout)
            if news:
                self.get_logger().info(news)
        command = self.core.tick(now)
        self._publish(command, now)
        self._track_state(command.state)

    def _update_pose(self, now):
        if self._pose_msg is not None:
            msg, arrived = self._pose_msg
            self._pose_msg = None
            pose = self._measured_pose(msg, arrived)
            if pose is not None:
                self.core.update_pose(pose)
        fresh = self.core.fresh_pose(now) is not None
        state = 'fresh' if fresh else ('waiting' if self.core.pose is None else 'stale')
        if state != self._pose_state:
            if state == 'fresh' and self._pose_state == 'waiting':
                self.get_logger().info(f'ee_pose received on {self._pose_topic}')
            elif state == 'fresh':
                self.get_logger().info(f'ee_pose on {self._pose_topic} is fresh again')
            else:
                self.get_logger().warning(
                    f'ee_pose on {self._pose_topic} is stale (none for more than pose_timeout '
                    f'{self.limits.pose_timeout} s): deltas are dropped')
            self._pose_state = state

    def _measured_pose(self, msg, arrived):
        """Return the ``safety.Pose`` of an ee_pose message, or None (refused: counted, logged)."""
        try:
            position, quaternion, _ = readers.read_pose(msg, self.base_frame, self._pose_topic,
                                                        BASE_FRAME)
        except ConversionError as exc:
            self.counters.bump('rejected_pose', str(exc))
            self._log.warning('pose_frame', f'ee_pose refused: {exc}')
            return None
        pose = safety.make_pose(position, quaternion, arrived)
        if pose is None:
            self.counters.bump('rejected_pose', 'ee_pose with NaN/inf or a zero quaternion')
            self._log.warning('pose_nan', 'ee_pose refused: NaN/inf or a zero quaternion')
        return pose

    def _offer(self, msg, now, arrival):
        """Offer one delta message to the safety core: True if accepted, None if a repeat."""
        try:
            position, quat, stamp = readers.read_pose(msg, self.base_frame, 'vla/ee_delta',
                                                      BASE_FRAME)
        except ConversionError as exc:
            self.counters.bump('rejected_frame', str(exc))
            self._log.warning('frame', f'delta rejected: {exc}')
            return False
        norm = math.sqrt(sum(c * c for c in quat))
        if math.isfinite(norm) and abs(norm - 1.0) > 1e-2:
            self.counters.bump('rejected_quaternion', f'delta quaternion of norm {norm:.4g}')
            self._log.warning('quaternion', f'delta rejected: orientation has norm {norm:.4g}; '
                              'it must be a unit quaternion (identity is 0, 0, 0, 1)')
            return False
        if math.isfinite(norm):
            rpy = geometry.matrix_to_rpy(geometry.quaternion_to_matrix(quat))
        else:
            rpy = (math.nan,) * 3
        verdict = self.core.offer((*position, *rpy), stamp, now, arrival)
        for event in verdict.events:
            self.counters.bump(event, verdict.reason)
        if 'clamped_speed' in verdict.events:
            self._log.warning('speed', f'step slowed to the speed limit: {verdict.reason}. Deltas '
                              'arrive faster than their size allows: check the control_rate_hz '
                              'of vla_node, a second publisher on vla/ee_delta, a replay')
        # A missing or stale ee_pose is said once, when it happens (see _update_pose).
        elif verdict.delta is None and verdict.events[0] != 'dropped_no_pose':
            self._log.warning(verdict.events[0], f'delta dropped: {verdict.reason}')
        if verdict.events[0] == 'dropped_duplicate':
            return None
        return verdict.delta is not None

    def _gripper_commands(self, settled):
        """Apply the gripper commands paired with an accepted delta; count the others."""
        for value, outcome in settled:
            self.counters.bump(f'gripper_{outcome}')
            if outcome == 'with_rejected_delta':
                self._log.warning('gripper_pair', 'gripper command ignored: the delta of its '
                                  'step was dropped (stale, rejected or disabled)')
                continue
            if outcome == 'without_delta':
                self._log.warning('gripper_alone', 'gripper command ignored: no delta of the '
                                  'same step arrived with it (vla/gripper moves the gripper only '
                                  'together with an accepted vla/ee_delta)')
                continue
            update = self.gripper.update(value)
            if update.rejected:
                self.counters.bump('gripper_rejected', f'gripper value {value}')
                self._log.warning('gripper', f'gripper value {value} rejected (NaN or inf)')
                continue
            if update.flipped:
                self.counters.bump('gripper_flips')
                self.get_logger().info(f'gripper: {update.state} ({update.position})')
            if update.position is not None:
                self._gripper_out.publish(Float64(data=float(update.position)))

    def _publish(self, command, now):
        if command.state == 'waiting':
            return
        if command.state == 'watchdog':
            self.counters.bump(self._watchdog_key)
        elif command.state == 'disabled':
            self.counters.bump('disabled_ticks')
        # Stamped with the tick's clock reading: the time the command was computed (and its
        # speed bounded) for, however long the tick's work then took.
        stamp = Time(nanoseconds=round(now * 1e9)).to_msg()
        if self.servo:
            msg = TwistStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.base_frame
            t = msg.twist
            t.linear.x, t.linear.y, t.linear.z = map(float, command.linear)
            t.angular.x, t.angular.y, t.angular.z = map(float, command.angular)
        else:
            msg = PoseStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.base_frame
            pose = msg.pose
            pose.position.x, pose.position.y, pose.position.z = map(float, command.pose.position)
            (pose.orientation.x, pose.orientation.y, pose.orientation.z,
             pose.orientation.w) = map(float, command.pose.quaternion)
        self._out.publish(msg)
        self._stream_rate.mark(now)

    def _track_state(self, state):
        if state == self._state:
            return
        if state == 'watchdog':
            self.counters.bump('watchdog_trips')
            self.get_logger().warning(
                f'watchdog: no fresh delta within command_timeout {self.limits.command_timeout} '
                's: ' + ('zero twist' if self.servo else 'holding the target'))
        self._state = state

    def _publish_diagnostics(self):
        now = self.get_clock().now()
        now_s = now.nanoseconds * 1e-9
        counts, last_error = self.counters.snapshot()
        pose = self.core.pose
        values = {
            'output_mode': self.cfg['output_mode'],
            'enabled': self.core.enabled,
            'state': self._state or 'starting',
            'ee_pose': self._pose_state,
            'ee_pose_age_s': now_s - pose.time if pose is not None else math.nan,
            'stream_rate_target_hz': self.cfg['stream_rate_hz'],
            'stream_rate_hz': self._stream_rate.rate(now_s),
            # servo_twist: the step period sets the speed (fixed, initial guess or learned).
            **({'step_period_s': self.core.step_duration,
                'step_period_source': self.core.step.source} if self.servo else {}),
            'gripper_state': self.gripper.state or 'unknown',
            **counts,
            'last_error': last_error,
        }
        level, message = diagnostics.OK, 'running'
        if self._pose_state != 'fresh':
            level, message = diagnostics.WARN, f'ee_pose {self._pose_state}'
        elif not self.core.enabled:
            level, message = diagnostics.WARN, 'disabled'
        self._diagnostics.publish(diagnostics.array(now.to_msg(), diagnostics.status(
            f'{self.get_name()}: safety', level, message, values)))


def main(args=None):
    return run(lambda: joint_bridge.for_mode(ArmBridge()), args)


if __name__ == '__main__':
    sys.exit(main())
