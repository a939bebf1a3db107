"""
sim_arm with ``robot: aloha``: the simulated bimanual ALOHA, its joints driven as JTC drives them.

The physics core is ``vla_ros.sim.aloha.SimAloha`` (ROS-free). ``AlohaSim`` runs it inside the
``sim_arm`` node (``SimArmNode.start`` hands over to it), sharing that node's parameters, camera
thread, clock and time line, parameter checks and diagnostics. Topics (relative names):

==========================================  ================================  ====================
topic                                       type                              notes
==========================================  ================================  ====================
``left_arm_controller/joint_trajectory``    trajectory_msgs/JointTrajectory   in; JTC's topic:
``right_arm_controller/joint_trajectory``                                     6 joints +
                                                                              ``left_finger`` (m)
``joint_states``                            sensor_msgs/JointState            out; all 16 joints
                                                                              by MJCF name
``cam_high/image_raw``                      sensor_msgs/Image                 out; rgb8, the MJCF
``cam_left_wrist/image_raw``                                                  cameras top,
``cam_right_wrist/image_raw``                                                 left_wrist,
                                                                              right_wrist; one
                                                                              stamp per triple
``sim/task``                                std_msgs/String                   out; JSON, 10 Hz
                                                                              (``task_status``)
``/clock``, ``/diagnostics``                as sim_arm's
==========================================  ================================  ====================

A trajectory is taken at its arrival (physics is stepped up to that instant first, so stamp 0
means then) if JTC would take it (``control.trajectory.jtc_refusal``; positions must also be
finite); otherwise it is dropped, counted in ``refused_trajectories`` and logged (throttled).
``~/reset`` (std_srvs/Trigger) starts a new episode from the parameters ``task`` and ``seed``:
arms at the start pose, the cube at the seed's place. Image size and rates: ``camera_width``,
``camera_height``, ``camera_rate_hz``; ``joint_states`` at ``ee_pose_rate_hz``.
"""

import json
import time

import numpy as np
from rclpy.time import Time
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_ros.control.concurrency import Queue
from vla_ros.control.stats import Counters
from vla_ros.nodes import diagnostics, messages, params, qos
from vla_ros.nodes.sim_arm_config import PARAMS, task_problems
from vla_ros.nodes.startup import report_problems

TASK_RATE_HZ = 10.0
MAX_CATCH_UP = 1.0  # s of physics a tick may run to catch up (sim_arm's rule)
SIM_TIME_CATCH_UP = 0.05


class AlohaSim:
    """The ALOHA robot of a ``SimArmNode``; see the module docstring. ``start`` once."""

    def __init__(self, node):
        self.node = node
        node._counters = Counters('ticks', 'trajectories', 'refused_trajectories', 'frames',
                                  'frames_dropped', 'loop_errors', 'physics_resets',
                                  'catch_up_capped')
        self._inbox = Queue()
        self._pubs = {}

    def start(self):
        """Check parameters, build the sim and renderer, start I/O; False if a problem was said."""
        node = self.node
        node.cfg, problems = params.read(node, PARAMS)
        cfg = node.cfg
        problems += [] if problems else task_problems('aloha', cfg.task)
        if not problems:
            try:
                from vla_ros.sim import aloha, camera, loop
            except (ImportError, AttributeError, RuntimeError, OSError) as exc:
                problems.append(f'cannot load MuJoCo ({type(exc).__name__}: {exc}); install it '
                                "with pip install '.[sim]' and pick MUJOCO_GL=egl, glfw or osmesa")
        if not problems:
            try:
                node.arm = aloha.SimAloha(cfg.camera_width, cfg.camera_height, cfg.seed,
                                          cfg.task)
            except aloha.SceneMissing as exc:
                problems.append(str(exc))
        if not problems:
            self.sim = node.arm
            problems += node._start_camera(camera, tuple(aloha.CAMERAS.values()))
        if problems:
            report_problems(node.get_logger(), problems)
            return False
        node._steady_start_ns = node._steady.now().nanoseconds
        node._pacer = loop.Pacer(
            self.sim.step_ns, epoch_ns=0 if cfg.publish_clock else node._clock_ns(),
            max_steps=int((SIM_TIME_CATCH_UP if cfg.publish_clock else MAX_CATCH_UP)
                          / self.sim.timestep))
        self.sim.now_ns = node._pacer.now_ns
        self._state_schedule = loop.Schedule(cfg.ee_pose_rate_hz)
        self._camera_schedule = loop.Schedule(cfg.camera_rate_hz)
        self._task_schedule = loop.Schedule(TASK_RATE_HZ)
        self._pubs = {
            'joints': node.create_publisher(JointState, 'joint_states', qos.COMMAND),
            'task': node.create_publisher(String, 'sim/task', qos.COMMAND),
            'images': [node.create_publisher(Image, f'{topic}/image_raw', qos.SENSOR)
                       for topic in aloha.CAMERAS],
        }
        node._pubs = {'diagnostics': node.create_publisher(
            diagnostics.DiagnosticArray, '/diagnostics', qos.COMMAND)}
        if cfg.publish_clock:
            self._pubs['clock'] = node.create_publisher(ClockMsg, '/clock', qos.CLOCK)
        for controller in aloha.CONTROLLERS:
            node.create_subscription(
                JointTrajectory, f'{controller}/joint_trajectory',
                lambda msg, c=controller: self._inbox.put((node._clock_ns(), c, msg)),
                qos.COMMAND)
        # One thread runs every callback (nodes.startup), so the tick and a reset never overlap.
        node.create_service(Trigger, '~/reset', self._on_reset)
        loop_clock = node._steady if cfg.publish_clock else node.get_clock()
        node.create_timer(1.0 / cfg.physics_rate_hz, self._tick, clock=loop_clock)
        node.create_timer(1.0, node._publish_diagnostics, clock=loop_clock)
        node.get_logger().info(
            f'started: robot aloha ({", ".join(aloha.CONTROLLERS)}), cameras '
            f'{", ".join(aloha.CAMERAS)} {cfg.camera_width}x{cfg.camera_height} at '
            f'{cfg.camera_rate_hz} Hz, physics tick {cfg.physics_rate_hz} Hz '
            f'({self.sim.timestep * 1e3:.1f} ms steps), joint_states {cfg.ee_pose_rate_hz} Hz, '
            f'time {"sim (publishing /clock)" if cfg.publish_clock else "node clock"}; episode: '
            f'{cfg.task} seed {cfg.seed}')
        return True

    # ---------------------------------------------------------------- the control loop
    def _tick(self):
        """Take new trajectories at their arrival, advance physics, publish; never raises."""
        node, sim = self.node, self.sim
        start = time.perf_counter()
        try:
            node._counters.bump('ticks')
            for received_ns, controller, msg in sorted(self._inbox.take_all(),
                                                       key=lambda item: item[0]):
                self._step_to(received_ns)
                self._take(controller, msg)
            self._step_to(node._clock_ns())
            if not np.all(np.isfinite(sim.data.qpos)):
                node._reject('physics_resets', 'physics diverged (non-finite state): reset')
                sim.reset()
            stage = sim.update_success()
            node._lifted = stage in (2, 4)  # the cube held off the table (diagnostics)
            now_ns = node._pacer.now_ns
            stamp = Time(nanoseconds=now_ns).to_msg()
            if 'clock' in self._pubs:
                self._pubs['clock'].publish(ClockMsg(clock=stamp))
            if self._state_schedule.due(now_ns):
                names, positions, velocities = sim.joint_state()
                msg = JointState(name=names, position=positions, velocity=velocities)
                msg.header.stamp = stamp
                self._pubs['joints'].publish(msg)
            if self._task_schedule.due(now_ns):
                self._pubs['task'].publish(String(data=json.dumps(sim.task_status(),
                                                                  sort_keys=True)))
            if self._camera_schedule.due(now_ns):
                snapshot = sim.snapshot()
                if not node._worker.submit(lambda: self._render(snapshot, stamp)):
                    node._counters.bump('frames_dropped')
        except (ValueError, RuntimeError, FloatingPointError) as exc:
            node._reject('loop_errors', f'control tick failed: {type(exc).__name__}: {exc}')
        node._tick_cost.add(time.perf_counter() - start)

    def _step_to(self, clock_ns):
        """Step the physics up to ``clock_ns`` on the pacer's time line (sim_arm's rule)."""
        pacer, skips = self.node._pacer, self.node._pacer.skips
        steps = pacer.advance(clock_ns)
        self.sim.now_ns = pacer.now_ns - steps * pacer.step_ns  # a skipped stall moves it on
        self.sim.run_steps(steps)
        if pacer.skips != skips:
            self.node._counters.bump('catch_up_capped')

    def _take(self, controller, msg):
        self.node._counters.bump('trajectories')
        try:
            why = self.sim.take(controller, messages.trajectory_from_msg(msg))
        except (TypeError, ValueError) as exc:
            why = f'unreadable ({type(exc).__name__}: {exc})'
        if why:
            self.node._reject('refused_trajectories', f'{controller}/joint_trajectory refused '
                              f'(as joint_trajectory_controller would refuse it): {why}')

    def _render(self, snapshot, stamp):
        """Run on the camera thread: draw the three views, publish them with one stamp."""
        node = self.node
        camera = node._camera
        images = camera.render(snapshot)  # (top, left_wrist, right_wrist), one instant
        node._render_time.add(camera.last_render_s)
        outgoing = [(publisher, messages.rgb_to_image(image, 'rgb8', stamp=stamp,
                                                      frame_id=f'sim_{view}'))
                    for publisher, image, view in zip(self._pubs['images'], images,
                                                      camera.cameras)]
        for publisher, msg in outgoing:
            publisher.publish(msg)
        node._counters.bump('frames')
        node._frame_rate.mark(time.monotonic())

    def _on_reset(self, request, response):
        node = self.node
        new = {p.name: params.check(p, node.get_parameter(p.name).value)[0] for p in PARAMS
               if p.name in ('task', 'seed')}  # checked when they were set
        problems = task_problems('aloha', new['task'])
        if problems:
            response.success, response.message = False, problems[0]
            return response
        self.sim.task = new['task']
        self.sim.reset(new['seed'])
        self._inbox.take_all()
        response.success = True
        response.message = (f'arms at the start pose, new episode: {new["task"]} seed '
                            f'{new["seed"]}, cube at '
                            f'{[round(v, 3) for v in self.sim.cube_position()]}')
        node.get_logger().info(f'reset: {response.message}')
        return response
