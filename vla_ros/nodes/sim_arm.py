"""
sim_arm: a simulated arm, table scene and cameras (MuJoCo) with the interfaces of a real arm.

The physics core is ``vla_ros.sim.SimArm`` (ROS-free); this node turns messages into its commands
and its state into messages. Topics (relative names, so a namespace or remapping moves them):

================================  ===========================  ====================================
topic                             type                         notes
================================  ===========================  ====================================
``servo_node/delta_twist_cmds``   geometry_msgs/TwistStamped   in; base frame (frame_id empty or
                                                               ``base_frame``); held until
                                                               ``twist_timeout`` after its stamp
``target_pose``                   geometry_msgs/PoseStamped    in; absolute target, frame_id must
                                                               be ``base_frame``
``gripper/command``               std_msgs/Float64             in; opening in [0, 1], 1 = open
``camera/image_raw``              sensor_msgs/Image            out; rgb8, best effort depth 1,
                                                               frame_id ``sim_camera``; the
                                                               fixed third-person view
``wrist_camera/image_raw``        sensor_msgs/Image            out, when ``wrist_camera``; the
                                                               camera on the gripper: rgb8, QoS,
                                                               size and rate as above, frame_id
                                                               ``sim_wrist_camera``; each frame
                                                               has the stamp of its
                                                               ``camera/image_raw`` twin
``ee_pose``                       geometry_msgs/PoseStamped    out; end-effector pose in
                                                               ``base_frame``
``joint_states``                  sensor_msgs/JointState       out; ``gripper_x``, ``gripper_y``,
                                                               ``gripper_z`` (m),
                                                               ``gripper_roll``,
                                                               ``gripper_pitch``,
                                                               ``gripper_yaw`` (rad, R = Rz Ry
                                                               Rx): the measured end-effector
                                                               pose as 6 virtual joints; then
                                                               ``left_finger_joint``,
                                                               ``right_finger_joint``: each
                                                               finger's position in metres from
                                                               closed (0 .. 0.04, open = 0.04)
``sim/object_lifted``             std_msgs/Bool                out; the named object's bottom is
                                                               >= 5 cm above the table (10 Hz)
``sim/task``                      std_msgs/String              out; JSON, 10 Hz: the episode
                                                               (task, object, instruction,
                                                               seed), success, time_to_success,
                                                               the named object's pose... (the
                                                               fields: ``vla_ros.sim.tasks``)
``/clock``                        rosgraph_msgs/Clock          out, when ``publish_clock``
``/diagnostics``                  diagnostic_msgs/             out; 1 Hz
                                  DiagnosticArray
================================  ===========================  ====================================

With ``robot: aloha`` the node is the simulated ALOHA of ``vla_ros.nodes.sim_aloha`` instead.

Service ``~/reset`` (std_srvs/Trigger) starts a new episode from the parameters ``task`` and
``seed`` (both may change at run time and take effect there): the gripper at its start (home,
or within ``start_spread`` of it, drawn from the seed), the objects at their seeded places, the
seed's object named in the instruction. Inputs use reliable QoS (depth
10), like MoveIt Servo and ``ros2 topic pub``. A twist stamped more than ``twist_timeout``
before now is dropped as stale (a zero stamp, or one ahead of now, counts as "now"); NaN or
infinite values, a zero quaternion, and commands in another frame are rejected and counted.
Gripper openings outside [0, 1] are clipped.

Time. By default physics follows the node clock: each control tick steps it up to the node
clock's now (at most ``MAX_CATCH_UP`` per tick; a longer stall is skipped, not raced through), and
every output is stamped with the node-clock time of the state it shows. With ``publish_clock`` the
simulator is the clock: sim time starts at 0 and follows the steady clock in the same way, but
catches up at most ``SIM_TIME_CATCH_UP`` per tick (so it
never runs faster than real time, and falls behind when a stall is skipped), ``/clock`` is
published after each tick, and outputs are stamped with that sim time, which is what the node
clock of any node with ``use_sim_time`` reads.

The cameras render on their own thread with its own MjData, from a snapshot of the state taken by
the control tick when a frame is due, so rendering never stalls physics; the images carry the
stamp of their snapshot. With ``wrist_camera`` (the default) both views are drawn from the same
snapshot and published together with one stamp, so a policy taking the pair (an OpenVLA-OFT
LIBERO checkpoint: ``camera_topics: [camera/image_raw, wrist_camera/image_raw]``) sees one
instant; it doubles the camera thread's work (on 2 CPU cores with EGL's software renderer each
view takes about 5-12 ms at 320x240, 15-40 ms at 640x480). A frame (pair) still rendering when
the next is due makes that one be dropped.
/diagnostics reports ``render_time_p50_ms`` / ``p95`` for all views of a frame together and
``wrist_render_time_p50_ms`` for the wrist view alone.
"""

import json
import math
import os
import sys
import time

from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger

from vla_ros.control.concurrency import InferenceWorker, Latest, Queue
from vla_ros.control.geometry import is_finite_number
from vla_ros.control.stats import Counters, RateMeter, Window
from vla_ros.nodes import diagnostics, messages, params, qos
from vla_ros.nodes.logs import LogThrottle
from vla_ros.nodes.sim_arm_config import check_changes, PARAMS, task_problems
from vla_ros.nodes.startup import report_problems, run
from vla_ros.sim import tasks

CAMERA_FRAME = 'sim_camera'
WRIST_CAMERA_FRAME = 'sim_wrist_camera'
TASK_RATE_HZ = 10.0
# Seconds of physics one real-time tick may run to catch up with the clock. A real arm keeps
# moving while a starved process is late, so the sim catches up rather than dropping time; only a
# longer stall (a suspended process, a clock jump) is skipped.
MAX_CATCH_UP = 1.0
# With publish_clock the simulator is the clock: a stall pauses sim time for every node instead of
# being raced through.
SIM_TIME_CATCH_UP = 0.05
RENDERER_START_TIMEOUT = 60.0


class SimArmNode(Node):
    """The simulator node; see the module docstring. Call ``start`` once after construction."""

    def __init__(self, **kwargs):
        super().__init__('sim_arm', **kwargs)
        params.declare(self, PARAMS)
        self.cfg = None
        self.arm = None
        self._camera = None
        self._worker = None
        self._startup_errors = []
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._counters = Counters('ticks', 'twists', 'poses', 'gripper_commands', 'stale_twists',
                                  'rejected_nonfinite', 'rejected_frame', 'rejected_quaternion',
                                  'frames', 'frames_dropped', 'loop_errors', 'physics_resets',
                                  'catch_up_capped')
        self._render_time = Window()  # all views of a frame (one snapshot) together
        self._wrist_render_time = Window()
        self._tick_cost = Window()
        self._frame_rate = RateMeter()
        self._pacer = None  # the physics steps' time line: node clock, or sim time from 0
        self._rtf = (time.monotonic(), 0)  # (steady seconds, sim steps) at the last diagnostics
        self._rtf_value = float('nan')
        self._lifted = False
        self._monitor = None  # the episode: success latched since the last reset
        self._log = LogThrottle(self.get_logger())  # once per 5 s per kind of problem
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ---------------------------------------------------------------- start-up and shutdown
    def start(self):
        """Check parameters, build the sim and renderer, start I/O; False if a problem was said."""
        if self.get_parameter('robot').value == 'aloha':
            from vla_ros.nodes.sim_aloha import AlohaSim
            return AlohaSim(self).start()
        self.cfg, problems = params.read(self, PARAMS)
        cfg = self.cfg
        problems += [] if problems else task_problems(cfg.robot, cfg.task)
        if not problems and cfg.ee_pose_rate_hz > cfg.physics_rate_hz:
            problems.append(f"parameter 'ee_pose_rate_hz' is {cfg.ee_pose_rate_hz}; allowed: "
                            f'0 < rate <= physics_rate_hz ({cfg.physics_rate_hz}) Hz')
        if not problems:
            try:
                from vla_ros.sim import arm, camera, loop
                self._sim = (arm, camera, loop)
            except (ImportError, AttributeError, RuntimeError, OSError) as exc:
                problems.append(
                    f"cannot load MuJoCo with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
                    f"({type(exc).__name__}: {exc}); install it with pip install '.[sim]', and "
                    'pick a working OpenGL back end: MUJOCO_GL=egl (headless, needs libEGL), '
                    'glfw (a display) or osmesa (needs libOSMesa)')
        if not problems:
            self._twists = Queue()
            self._pose, self._gripper = Latest(), Latest()
            self.arm = arm.SimArm(cfg.camera_width, cfg.camera_height, cfg.max_linear_speed,
                                  cfg.max_angular_speed, cfg.twist_timeout, cfg.seed,
                                  start_spread=cfg.start_spread)
            self._monitor = tasks.EpisodeMonitor(tasks.episode(cfg.seed, cfg.task))
            views = (self.arm.camera, arm.WRIST_CAMERA) if cfg.wrist_camera else \
                (self.arm.camera,)
            problems += self._start_camera(camera, views)
        if problems:
            report_problems(self.get_logger(), problems)
            return False
        self._steady_start_ns = self._steady.now().nanoseconds
        self._pacer = loop.Pacer(
            int(round(self.arm.timestep * 1e9)),
            epoch_ns=0 if cfg.publish_clock else self.get_clock().now().nanoseconds,
            max_steps=int((SIM_TIME_CATCH_UP if cfg.publish_clock else MAX_CATCH_UP)
                          / self.arm.timestep))
        self._ee_schedule = loop.Schedule(cfg.ee_pose_rate_hz)
        self._camera_schedule = loop.Schedule(cfg.camera_rate_hz)
        self._task_schedule = loop.Schedule(TASK_RATE_HZ)
        self._pubs = {
            'image': self.create_publisher(Image, 'camera/image_raw', qos.SENSOR),
            'wrist_image': (self.create_publisher(Image, 'wrist_camera/image_raw', qos.SENSOR)
                            if cfg.wrist_camera else None),
            'ee_pose': self.create_publisher(PoseStamped, 'ee_pose', qos.COMMAND),
            'joints': self.create_publisher(JointState, 'joint_states', qos.COMMAND),
            'lifted': self.create_publisher(Bool, 'sim/object_lifted', qos.COMMAND),
            'task': self.create_publisher(String, 'sim/task', qos.COMMAND),
            'diagnostics': self.create_publisher(diagnostics.DiagnosticArray, '/diagnostics',
                                                 qos.COMMAND),
        }
        if cfg.publish_clock:
            self._pubs['clock'] = self.create_publisher(ClockMsg, '/clock', qos.CLOCK)
        self.create_subscription(TwistStamped, 'servo_node/delta_twist_cmds', self._on_twist,
                                 qos.COMMAND)
        self.create_subscription(PoseStamped, 'target_pose', self._on_pose, qos.COMMAND)
        self.create_subscription(Float64, 'gripper/command', self._on_gripper, qos.COMMAND)
        # One thread runs every callback (nodes.startup), so the tick and a reset never overlap.
        self.create_service(Trigger, '~/reset', self._on_reset)
        # With /clock published by this node, its own timers must not wait on that clock.
        loop_clock = self._steady if cfg.publish_clock else self.get_clock()
        self.create_timer(1.0 / cfg.physics_rate_hz, self._tick, clock=loop_clock)
        self.create_timer(1.0, self._publish_diagnostics, clock=loop_clock)
        self.get_logger().info(
            f'started: camera {cfg.camera_width}x{cfg.camera_height} at {cfg.camera_rate_hz} Hz '
            f'(MUJOCO_GL egl unless set), wrist camera '
            f'{"on (wrist_camera/image_raw)" if cfg.wrist_camera else "off"}, physics tick '
            f'{cfg.physics_rate_hz} Hz '
            f'({self.arm.timestep * 1e3:.1f} ms steps), ee_pose {cfg.ee_pose_rate_hz} Hz, '
            f'limits {cfg.max_linear_speed} m/s {cfg.max_angular_speed} rad/s, twist_timeout '
            f'{cfg.twist_timeout} s, base_frame {cfg.base_frame}, time '
            f'{"sim (publishing /clock)" if cfg.publish_clock else "node clock (real time)"}; '
            f'episode: {self._episode_text()}')
        return True

    def _start_camera(self, camera_module, views):
        """Create the renderer of ``views`` on the camera thread (a GL context is per-thread)."""
        self._worker = InferenceWorker(self._on_camera_error, name='sim_camera')

        def create():
            camera = camera_module.SimCamera(self.arm.model, self.cfg.camera_width,
                                             self.cfg.camera_height, views)
            camera.render(self.arm.snapshot())  # warm-up: the first frame compiles shaders
            self._camera = camera
        self._worker.submit(create)
        if self._worker.wait_idle(RENDERER_START_TIMEOUT) and self._camera is not None:
            return []
        reason = self._startup_errors[0] if self._startup_errors else \
            f'no answer within {RENDERER_START_TIMEOUT} s'
        if isinstance(reason, camera_module.RenderError):
            return [str(reason)]
        return [f'cannot start the renderer: {reason}; try MUJOCO_GL=egl (headless) or glfw']

    def _on_set_parameters(self, changes):
        reason = check_changes(self.get_parameter('robot').value, changes, self.arm is not None)
        return SetParametersResult(successful=reason is None, reason=reason or '')

    def close(self):
        """Stop the camera thread and free the renderer."""
        if self._worker is not None:
            self._worker.wait_idle(timeout=5.0)
            if self._camera is not None:
                camera, self._camera = self._camera, None
                self._worker.submit(camera.close)
                self._worker.wait_idle(timeout=5.0)
            self._worker.stop()
            self._worker = None

    # ---------------------------------------------------------------- inputs (store only)
    def _on_twist(self, msg):
        self._counters.bump('twists')
        self._twists.put((self._clock_ns(), msg))

    def _on_pose(self, msg):
        self._counters.bump('poses')
        self._pose.put(msg)

    def _on_gripper(self, msg):
        self._counters.bump('gripper_commands')
        self._gripper.put(msg)

    def _on_reset(self, request, response):
        new = {p.name: params.check(p, self.get_parameter(p.name).value)[0] for p in PARAMS
               if p.name in ('task', 'seed')}  # checked when they were set
        self.arm.reset(new['seed'])
        self._monitor = tasks.EpisodeMonitor(tasks.episode(new['seed'], new['task']))
        self._twists.take_all()
        self._pose.take()
        self._gripper.take()
        response.success = True
        response.message = f'gripper at its start and open, new episode: {self._episode_text()}'
        self.get_logger().info(f'reset: {response.message}')
        return response

    def _episode_text(self):
        ep = self._monitor.episode
        return f'{ep.task} seed {ep.seed}: {ep.instruction!r}'

    # ---------------------------------------------------------------- time
    def _now_ns(self):
        """Return the time of the physics state on the stamp time line (node clock or sim)."""
        return self._pacer.now_ns

    def _clock_ns(self):
        """Return the clock the physics follows: the node clock, or (publish_clock) sim time."""
        if self.cfg.publish_clock:
            return self._steady.now().nanoseconds - self._steady_start_ns
        return self.get_clock().now().nanoseconds

    def _advance(self):
        """
        Step the physics up to the clock it follows, applying each new twist at its stamp.

        A tick that comes late (a busy CPU) still gives every twist of a stream its own span of
        physics time, as a real arm that kept receiving them would have moved.
        """
        twists = [(self._twist_stamp(msg, received_ns), msg)
                  for received_ns, msg in self._twists.take_all()]
        for stamp_ns, msg in sorted((t for t in twists if t[0] is not None), key=lambda t: t[0]):
            self._step_to(stamp_ns)
            self._apply_twist(msg, stamp_ns)
        self._step_to(self._clock_ns())

    def _step_to(self, clock_ns):
        skips = self._pacer.skips
        self.arm.run_steps(self._pacer.advance(clock_ns))
        if self._pacer.skips != skips:
            self._counters.bump('catch_up_capped')

    def _reject(self, counter, text):
        if not self.context.ok():
            return  # shutting down (Ctrl-C): publishers are gone, nothing to report
        self._counters.bump(counter, text)
        self._log.warning(counter, text)

    # ---------------------------------------------------------------- the control loop
    def _tick(self):
        """Apply new commands, advance physics, publish what is due; never raises."""
        start = time.perf_counter()
        try:
            self._counters.bump('ticks')
            self._apply_commands()
            self._advance()
            if not np.all(np.isfinite(self.arm.data.qpos)):
                self._reject('physics_resets', 'physics diverged (non-finite state): reset')
                self.arm.reset()
            self._monitor.update(self.arm.time, self.arm.scene_state())
            now_ns = self._now_ns()
            stamp = Time(nanoseconds=now_ns).to_msg()
            if self.cfg.publish_clock:
                self._pubs['clock'].publish(ClockMsg(clock=stamp))
            if self._ee_schedule.due(now_ns):
                self._publish_state(stamp)
            if self._task_schedule.due(now_ns):
                self._publish_task()
            if self._camera_schedule.due(now_ns):
                snapshot = self.arm.snapshot()
                if not self._worker.submit(lambda: self._render(snapshot, stamp)):
                    self._counters.bump('frames_dropped')
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            self._reject('loop_errors', f'control tick failed: {type(exc).__name__}: {exc}')
        self._tick_cost.add(time.perf_counter() - start)

    def _apply_commands(self):
        pose = self._pose.take()
        if pose is not None:
            self._apply_pose(pose)
        gripper = self._gripper.take()
        if gripper is not None:
            if math.isfinite(gripper.data):
                self.arm.command_gripper(gripper.data)
            else:
                self._reject('rejected_nonfinite', f'gripper command {gripper.data} rejected: '
                             'send a finite opening in [0, 1]')

    def _twist_stamp(self, msg, received_ns):
        """
        Return a valid twist's stamp (ns, at most its arrival time), or None after rejecting it.

        Staleness is judged at arrival, as a driver that was listening would have: a tick that
        comes late does not make the twists that waited for it stale.
        """
        lin, ang = msg.twist.linear, msg.twist.angular
        if not all(map(is_finite_number, (lin.x, lin.y, lin.z, ang.x, ang.y, ang.z))):
            self._reject('rejected_nonfinite', f'twist {lin} {ang} rejected: NaN or infinite '
                         'values')
            return None
        if msg.header.frame_id not in ('', self.cfg.base_frame):
            self._reject('rejected_frame', f"twist in frame '{msg.header.frame_id}' rejected: "
                         f"send it in '{self.cfg.base_frame}' (or leave frame_id empty)")
            return None
        stamp_ns = Time.from_msg(msg.header.stamp).nanoseconds
        stamp_ns = received_ns if stamp_ns == 0 else min(stamp_ns, received_ns)  # future: now
        age = (received_ns - stamp_ns) * 1e-9
        if age > self.cfg.twist_timeout:
            self._reject('stale_twists', f'twist stamped {age:.3f} s ago dropped (twist_timeout '
                         f'{self.cfg.twist_timeout} s); stamp commands with the current time')
            return None
        return stamp_ns

    def _apply_twist(self, msg, stamp_ns):
        """Hand a checked twist to the arm; it holds until stamp + twist_timeout."""
        lin, ang = msg.twist.linear, msg.twist.angular
        age = (self._now_ns() - stamp_ns) * 1e-9  # < 0 if the physics has not reached the stamp
        self.arm.command_twist((lin.x, lin.y, lin.z), (ang.x, ang.y, ang.z), age=age)

    def _apply_pose(self, msg):
        p, q = msg.pose.position, msg.pose.orientation
        if not all(map(is_finite_number, (p.x, p.y, p.z, q.x, q.y, q.z, q.w))):
            self._reject('rejected_nonfinite', 'target_pose rejected: NaN or infinite values')
            return
        if msg.header.frame_id != self.cfg.base_frame:
            self._reject('rejected_frame', f"target_pose in frame '{msg.header.frame_id}' "
                         f"rejected: send it in '{self.cfg.base_frame}'")
            return
        if math.sqrt(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w) < 1e-6:
            self._reject('rejected_quaternion', 'target_pose rejected: zero quaternion '
                         '(identity is 0 0 0 1)')
            return
        self.arm.command_pose((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))

    # ---------------------------------------------------------------- outputs
    def _publish_state(self, stamp):
        position, quat = self.arm.ee_pose()
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.cfg.base_frame
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, position)
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = map(float, quat)
        self._pubs['ee_pose'].publish(pose)
        names, positions, velocities = self.arm.joint_state()
        joints = JointState(name=names, position=positions, velocity=velocities)
        joints.header.stamp = stamp
        self._pubs['joints'].publish(joints)

    def _publish_task(self):
        status = self._monitor.status(self.arm.time, self.arm.scene_state())
        self._lifted = bool(status['object_lifted'])  # for diagnostics, read on another thread
        self._pubs['lifted'].publish(Bool(data=self._lifted))
        self._pubs['task'].publish(String(data=json.dumps(status, sort_keys=True)))

    def _render(self, snapshot, stamp):
        """Run on the camera thread: draw the snapshot's views, publish them with one stamp."""
        camera = self._camera
        images = camera.render(snapshot)  # (scene,) or (scene, wrist), one instant
        self._render_time.add(camera.last_render_s)
        if len(images) > 1:
            self._wrist_render_time.add(camera.last_view_s[1])
        # Both built before either is sent, so the pair leaves back to back.
        outgoing = [(self._pubs['image'], messages.rgb_to_image(
            images[0], 'rgb8', stamp=stamp, frame_id=CAMERA_FRAME))]
        if len(images) > 1:
            outgoing.append((self._pubs['wrist_image'], messages.rgb_to_image(
                images[1], 'rgb8', stamp=stamp, frame_id=WRIST_CAMERA_FRAME)))
        for publisher, msg in outgoing:
            publisher.publish(msg)
        self._counters.bump('frames')
        self._frame_rate.mark(time.monotonic())

    def _on_camera_error(self, exc):
        if self._camera is None:
            self._startup_errors.append(exc)  # while creating the renderer
        else:
            self._reject('loop_errors', f'camera frame failed: {type(exc).__name__}: {exc}')

    def _publish_diagnostics(self):
        steady, steps = time.monotonic(), self._pacer.steps
        last_steady, last_steps = self._rtf
        if steady > last_steady:
            self._rtf_value = (steps - last_steps) * self.arm.timestep / (steady - last_steady)
        self._rtf = (steady, steps)
        counts, last_error = self._counters.snapshot()
        render, cost = self._render_time.summary(), self._tick_cost.summary()
        tick_s = 1.0 / self.cfg.physics_rate_hz
        values = {
            'time_source': 'sim (/clock)' if self.cfg.publish_clock else 'node clock',
            'sim_time_s': self._pacer.steps * self.arm.timestep,
            'real_time_factor': self._rtf_value,
            'tick_cost_p50_ms': cost['p50'] * 1e3,
            'tick_cost_max_ms': cost['max'] * 1e3,
            'max_real_time_factor': tick_s / cost['p50'] if cost['p50'] > 0 else float('nan'),
            'camera_rate_hz': self._frame_rate.rate(steady),
            'wrist_camera': self.cfg.wrist_camera,
            'render_time_p50_ms': render['p50'] * 1e3,  # every view of a frame together
            'render_time_p95_ms': render['p95'] * 1e3,
            'wrist_render_time_p50_ms': self._wrist_render_time.summary()['p50'] * 1e3,
            **counts,
            'object_lifted': self._lifted,
            'last_error': last_error,
        }
        level, message = diagnostics.OK, 'running'
        if last_error:
            level, message = diagnostics.WARN, last_error[:200]
        self._pubs['diagnostics'].publish(diagnostics.array(
            Time(nanoseconds=self._now_ns()).to_msg(),
            diagnostics.status(f'{self.get_name()}: simulation', level, message, values,
                               hardware_id='mujoco')))


def main(args=None):
    return run(SimArmNode, args)


if __name__ == '__main__':
    sys.exit(main())
