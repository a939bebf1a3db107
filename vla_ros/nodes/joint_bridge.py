"""
arm_bridge ``output_mode: joint_trajectory``: a joint-space policy to ros2_control's JTC, bounded.

arm_bridge's ``main`` starts this node (named ``arm_bridge`` too) when ``output_mode`` is
``joint_trajectory``. Inputs: ``joint_states`` (the measured joints), ``vla/joint_command``
(sensor_msgs/JointState, one per control step; ``trajectory_points: step``) or ``vla/joint_chunk``
(trajectory_msgs/JointTrajectory, the rows of a chunk; ``trajectory_points: chunk``). Outputs:
``<controller>/joint_trajectory`` (trajectory_msgs/JointTrajectory) for each of ``controllers``,
``/diagnostics`` (1 Hz); service ``~/enable`` (std_srvs/SetBool). Every decision is made by
``vla_ros.control.joint_bridge``; this node turns messages into its inputs and its trajectories
into messages. Callbacks store; one timer at ``stream_rate_hz`` handles what arrived and runs the
watchdog, so all state is touched by one thread. No parameter changes while it runs.
"""

import collections

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from vla_ros.control import clock
from vla_ros.control.joint_bridge import (check_controllers, EVENTS, JointBridgeConfig,
                                          JointBridgeCore)
from vla_ros.control.joints import (ALOHA_GRIPPER, GripperRange, JointError, LIMIT_MODES,
                                    limits_from_parameters, limits_from_urdf)
from vla_ros.control.readers import ns_to_seconds, stamp_seconds
from vla_ros.control.safety import SafetyLimits
from vla_ros.control.stats import Counters
from vla_ros.nodes import diagnostics, messages, params, qos
from vla_ros.nodes.logs import LogThrottle
from vla_ros.nodes.startup import report_problems

MODE = 'joint_trajectory'
HOLDS = ('disable_holds', 'watchdog_holds', 'policy_holds')
POINTS = ('step', 'chunk')
MAX_PENDING = 64  # commands waiting for the next tick
_L = SafetyLimits()
_MODES = f"one of {', '.join(LIMIT_MODES)}"
PARAMS = (
    params.NodeParam('output_mode', MODE, 'arm_bridge runs this node when it is '
                     "'joint_trajectory' (its other modes: servo_twist, pose_target).",
                     check=lambda v: v == MODE, allowed=MODE),
    params.NodeParam('stream_rate_hz', 50.0, 'Rate of the tick that handles the commands and '
                     'the watchdog, Hz; the hold leaves within one tick. In (0, 1000].',
                     check=lambda v: 0.0 < v <= 1000.0, allowed='(0, 1000] Hz'),
    params.NodeParam('step_duration', 0.0, 'Step period, s: time_from_start of a step point. 0: '
                     "learn it from the commands' arrivals (a chunk: its own row spacing). Else "
                     'fixed, in [1 / stream_rate_hz, 10].'),
    params.NodeParam('command_timeout', _L.command_timeout, 'Seconds; commands stamped longer ago '
                     'and joint_states older than this are not followed; the watchdog holds '
                     'after it. In (0, 60].', check=lambda v: 0.0 < v <= 60.0,
                     allowed='(0, 60] s'),
    params.NodeParam('future_tolerance', _L.future_tolerance, 'Seconds a command stamp may be '
                     'ahead of the node clock. In [0, 1].', check=lambda v: 0.0 <= v <= 1.0,
                     allowed='[0, 1] s'),
    params.NodeParam('controllers', (), 'The joint_trajectory_controllers, each with parameter '
                     'CONTROLLER.joints (its joints, in its order); each trajectory goes to '
                     'CONTROLLER/joint_trajectory.', item=str),
    params.NodeParam('trajectory_points', 'step', "'step': one point per vla/joint_command; "
                     "'chunk': the rows of vla/joint_chunk not yet due.",
                     check=lambda v: v in POINTS, allowed=', '.join(POINTS)),
    params.NodeParam('joint_lower', (), 'Lower position limit of each joint, in the order of '
                     'the controllers and their joints (or robot_description).'),
    params.NodeParam('joint_upper', (), 'Upper position limit of each joint, as joint_lower.'),
    params.NodeParam('joint_velocity', (), 'Speed limit of each joint (rad/s or m/s), as '
                     'joint_lower.'),
    params.NodeParam('robot_description', '', "The robot's URDF: the limits of the joints when "
                     'joint_lower/upper/velocity are not given.'),
    params.NodeParam('beyond_limit', 'clip', 'A target beyond its position limit: clipped to it '
                     'or the command refused.', check=lambda v: v in LIMIT_MODES, allowed=_MODES),
    params.NodeParam('too_fast', 'clip', 'A step faster than a speed limit: scaled down (all '
                     'joints together) or refused.', check=lambda v: v in LIMIT_MODES,
                     allowed=_MODES),
    params.NodeParam('gripper_closed', ALOHA_GRIPPER[0], 'Position of a gripper:NAME joint for '
                     '0 (closed), m.'),
    params.NodeParam('gripper_open', ALOHA_GRIPPER[1], 'Position of a gripper:NAME joint for 1 '
                     '(open), m.'),
)
RESTART_HINT = 'arm_bridge (joint_trajectory) takes no parameter change while it runs; restart ' \
    'it with -p NAME:=VALUE'


def for_mode(node):
    """
    Return ``node`` (arm_bridge's end-effector node, parameters declared), or this mode's node.

    The output mode is a parameter, known only once a node has read its overrides; in
    joint_trajectory mode that first node is destroyed and this one, with its own parameters,
    takes its name.
    """
    if node.get_parameter('output_mode').value != MODE:
        return node
    node.destroy_node()
    return JointBridge()


def joints_param(controller):
    """Return the declaration of ``CONTROLLER.joints``."""
    return params.NodeParam(f'{controller}.joints', (), f'The joints of {controller}, in its '
                            'order.', item=str)


def configuration(cfg, controller_joints, tick_period):
    """
    Return (``JointBridgeConfig`` or None, problems): every problem names the parameter and fix.

    ``cfg``: the typed values of ``PARAMS`` (a namespace); ``controller_joints``: ``{controller:
    joints}`` from the ``CONTROLLER.joints`` parameters.
    """
    problems = []
    low = 1.0 / cfg.stream_rate_hz
    if cfg.step_duration != 0.0 and not low - 1e-9 <= cfg.step_duration <= 10.0:
        problems.append(f"parameter 'step_duration' is {cfg.step_duration!r}; allowed: 0 (learn "
                        f'it) or [{low:.6g} (one tick), 10] s')
    if cfg.gripper_closed == cfg.gripper_open:
        problems.append("parameters 'gripper_closed' and 'gripper_open' are equal; give the "
                        "finger joint's positions when closed and when open")
    limits = None
    names = [j for joints in controller_joints.values() for j in joints]
    arrays = (cfg.joint_lower, cfg.joint_upper, cfg.joint_velocity)
    try:
        check_controllers(controller_joints)
        if any(arrays):
            if cfg.robot_description:
                raise JointError('both joint_lower/upper/velocity and robot_description are '
                                 'set; give the limits one way')
            limits = limits_from_parameters(names, *arrays)
        elif cfg.robot_description:
            limits = limits_from_urdf(cfg.robot_description, names)
        else:
            raise JointError('no joint limits: set joint_lower, joint_upper and joint_velocity '
                             "(one per joint, in the controllers' order) or robot_description "
                             "(the robot's URDF)")
    except JointError as exc:
        problems.append(str(exc))
    if problems:
        return None, problems
    return JointBridgeConfig(
        tuple(controller_joints.items()), limits, GripperRange(cfg.gripper_closed,
                                                               cfg.gripper_open),
        cfg.beyond_limit, cfg.too_fast, cfg.command_timeout, cfg.future_tolerance,
        cfg.step_duration, tick_period), []


class JointBridge(Node):
    """The joint_trajectory bridge node; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('arm_bridge', **kwargs)
        params.declare(self, PARAMS)
        self.core = None
        self._params = PARAMS
        self._inbox = collections.deque()  # ('command' | 'chunk', msg, arrival)
        self._state_msg = None             # (JointState, arrival), newest only
        self._state_seen = False
        self._clock_watch = clock.ClockWatch()
        self._log = LogThrottle(self.get_logger())
        self.counters = Counters(*EVENTS, 'rejected_state', 'dropped_burst', 'clock_jumps')
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def start(self):
        """Read and check every parameter, then create the I/O; False if a problem was told."""
        cfg, problems = params.read(self, PARAMS)
        controller_joints = {}
        for controller in (cfg.controllers if not problems else ()):
            param = joints_param(controller)
            params.declare(self, (param,))
            self._params += (param,)
            controller_joints[controller], problem = params.check(
                param, self.get_parameter(param.name).value)
            problems += [problem] if problem else []
        config = None
        if not problems:
            config, problems = configuration(cfg, controller_joints, 1.0 / cfg.stream_rate_hz)
        if problems:
            report_problems(self.get_logger(), problems)
            return False
        self.cfg, self.core = cfg, JointBridgeCore(config)
        self._out = {c: self.create_publisher(JointTrajectory, f'{c}/joint_trajectory',
                                              qos.COMMAND) for c, _ in self.core.controllers}
        self._diagnostics = self.create_publisher(diagnostics.DiagnosticArray, '/diagnostics',
                                                  qos.COMMAND)
        if cfg.trajectory_points == 'step':
            self.create_subscription(JointState, 'vla/joint_command',
                                     lambda m: self._store('command', m), qos.COMMAND)
        # Chunks (trajectory_points chunk), and in both modes vla_node's hold: one without points.
        self.create_subscription(JointTrajectory, 'vla/joint_chunk',
                                 lambda m: self._store('chunk', m), qos.COMMAND)
        self.create_subscription(JointState, 'joint_states', self._on_state, qos.SENSOR)
        self.create_service(SetBool, '~/enable', self._on_enable)
        self.create_timer(1.0 / cfg.stream_rate_hz, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        step = f'{cfg.step_duration} s (fixed)' if cfg.step_duration else (
            'learned' + (' from the commands' if cfg.trajectory_points == 'step' else
                         " from each chunk's rows"))
        self.get_logger().info(
            f'started: output_mode={MODE} trajectory_points={cfg.trajectory_points} '
            f'controllers={dict(self.core.controllers)} step_duration={step} '
            f'command_timeout={cfg.command_timeout} s beyond_limit={cfg.beyond_limit} '
            f'too_fast={cfg.too_fast} gripper={cfg.gripper_closed}..{cfg.gripper_open} m')
        self.get_logger().warning(f"waiting for {self.resolve_topic_name('joint_states')}: "
                                  'nothing moves until it arrives')
        return True

    def close(self):
        """Nothing to release: the bridge owns no thread or device."""

    def _on_set_parameters(self, changes):
        _, reason = params.check_changes(self._params, changes, self.core is not None,
                                         RESTART_HINT)
        return SetParametersResult(successful=reason is None, reason=reason or '')

    def _now(self):
        now = self.get_clock().now().nanoseconds * 1e-9
        jump = self._clock_watch.read(now)
        if jump:
            self.core.clock_jumped(now, now + jump)
            self._inbox.clear()
            self._state_msg = None
            self.counters.bump('clock_jumps')
            self.get_logger().warning(f'the clock jumped back {jump:.3f} s: commands stamped '
                                      'before it are dropped')
        return now

    # ---------------------------------------------------------------- callbacks: store only
    def _store(self, kind, msg):
        if len(self._inbox) >= MAX_PENDING:
            self._inbox.popleft()
            self.counters.bump('dropped_burst', 'more commands than one tick can take')
        self._inbox.append((kind, msg, self._now()))

    def _on_state(self, msg):
        self._state_msg = (msg, self._now())

    def _on_enable(self, request, response):
        now = self._now()
        self._update_state()
        self._inbox.clear()
        self._apply(self.core.set_enabled(request.data, now))
        response.success = True
        response.message = ('enabled: commands stamped from now on are followed' if request.data
                            else 'disabled: holding the measured positions')
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------- the tick
    def _tick(self):
        now = self._now()
        self._update_state()
        while self._inbox:
            kind, msg, arrival = self._inbox.popleft()
            stamp = stamp_seconds(msg.header.stamp)
            if kind == 'command':
                if len(msg.position) != len(msg.name):
                    self._refuse('rejected_names', f'vla/joint_command has {len(msg.position)} '
                                 f'position(s) for {len(msg.name)} name(s)')
                    continue
                outcome = self.core.command(list(msg.name), list(msg.position), stamp, now,
                                            arrival)
            elif not msg.points:
                outcome = self.core.policy_hold(stamp, now)
            elif self.cfg.trajectory_points == 'step':
                continue  # the rows come one by one on vla/joint_command
            else:
                chunk = messages.trajectory_from_msg(msg)
                if any(len(p.positions) != len(chunk.joint_names) for p in chunk.points):
                    self._refuse('rejected_chunk', 'vla/joint_chunk has a point without one '
                                 'position per joint name')
                    continue
                outcome = self.core.chunk(list(chunk.joint_names),
                                          [list(p.positions) for p in chunk.points],
                                          [ns_to_seconds(p.time_from_start_ns)
                                           for p in chunk.points], stamp, now)
            self._apply(outcome)
        self._apply(self.core.tick(now))

    def _update_state(self):
        if self._state_msg is None:
            return
        msg, arrival = self._state_msg
        self._state_msg = None
        if len(msg.position) != len(msg.name):
            self._refuse('rejected_state', f'joint_states has {len(msg.position)} position(s) '
                         f'for {len(msg.name)} name(s)')
            return
        if not self._state_seen:
            self._state_seen = True
            self.get_logger().info('joint_states received')
        self.core.update_state(list(msg.name), list(msg.position), arrival)

    def _refuse(self, key, reason):
        self.counters.bump(key, reason)
        self._log.warning(key, f'nothing sent: {reason}')

    def _apply(self, outcome):
        """Count an outcome's events, log what was refused or changed, publish its trajectories."""
        if outcome is None:
            return
        error = outcome.reason if outcome.events[0] not in HOLDS else None
        for event in outcome.events:
            self.counters.bump(event, error)
        if not outcome.trajectories:
            self._log.warning(outcome.events[0], f'nothing sent: {outcome.reason}')
        elif outcome.reason and outcome.events[0] in ('sent_steps', 'sent_chunks'):
            self._log.warning('clipped', f'sent changed: {outcome.reason}')
        elif outcome.events[0] == 'policy_holds':
            self.get_logger().info('vla_node held: holding the measured positions')
        elif outcome.events[0] == 'watchdog_holds':
            self.get_logger().warning(f'watchdog: no command within command_timeout '
                                      f'{self.cfg.command_timeout} s: holding the measured '
                                      'positions')
        for controller, trajectory in outcome.trajectories:
            self._out[controller].publish(messages.trajectory_to_msg(trajectory))

    def _publish_diagnostics(self):
        now = self.get_clock().now()
        counts, last_error = self.counters.snapshot()
        fresh = self.core.measured(now.nanoseconds * 1e-9) is not None
        state = 'fresh' if fresh else ('stale' if self._state_seen else 'waiting')
        values = {'output_mode': MODE, 'trajectory_points': self.cfg.trajectory_points,
                  'enabled': self.core.enabled, 'joint_states': state,
                  'step_period_s': self.core.step_period,
                  'step_period_source': self.core.step.source, **counts,
                  'last_error': last_error}
        level, message = diagnostics.OK, 'running'
        if not fresh:
            level, message = diagnostics.WARN, f'joint_states {state}'
        elif not self.core.enabled:
            level, message = diagnostics.WARN, 'disabled'
        self._diagnostics.publish(diagnostics.array(now.to_msg(), diagnostics.status(
            f'{self.get_name()}: safety', level, message, values)))
