"""
vla_node: an OpenVLA-family policy at a fixed rate, from camera, state and instruction topics.

A lifecycle node. ``configure`` checks the parameters, loads the policy, warms it up and creates
the publishers; ``activate`` starts the subscriptions and the control timer; ``deactivate`` holds
and stops them; ``cleanup`` frees the model. With ``autostart`` (the default) the node configures
and activates itself, so plain ``ros2 run`` works. A lifecycle request the current state has no
transition for is answered ``success=False`` (``lifecycle``). The instruction survives a
reconfigure: the node follows the newest one it was given (topic, parameter, or none after
``~/reset``), and the ``instruction`` parameter always shows it.

An adapter around ``vla_ros.control.core.ControlCore``, which makes every decision: callbacks
store the newest image of every camera and the state (``observations``) and pass instructions to
the core, the timer asks the core what the tick does (infer, publish the next row of a chunk,
or why not), the ``InferenceWorker`` thread predicts (``core.infer``) and commits the chunk, and
the core's ``emit`` publishes, under the core's lock. ``vla_eval`` drives the same core offline.
Plain OpenVLA is a policy with one camera, no state and one-row chunks. ``action_space`` only
picks the messages an emitted row becomes: end-effector deltas (vla/ee_delta, vla/gripper) or
joint targets (vla/joint_command, and vla/joint_chunk with an open-loop chunk's first row).
"""

import functools
import os
import sys
import threading

from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_ros.control import images, readers
from vla_ros.control.concurrency import InferenceWorker
from vla_ros.control.core import ControlCore, infer
from vla_ros.control.stats import Counters, RateMeter, Window
from vla_ros.nodes import diagnostics, messages, params, qos
from vla_ros.nodes.lifecycle import refuse_invalid_transitions
from vla_ros.nodes.logs import LogThrottle
from vla_ros.nodes.observations import ObservationInputs
from vla_ros.nodes.startup import report_problems, run
from vla_ros.nodes.vla_node_config import layout_problems, load, PARAM, PARAMS, policy_problems

RESTART_HINT = 'deactivate, cleanup, set it, then configure and activate (or restart the node)'
# Tick verdicts -> the diagnostics counter they bump (actions are counted as they go out).
VERDICT_COUNTERS = {'disabled': 'ticks_disabled', 'idle': 'ticks_idle', 'busy': 'ticks_skipped',
                    'stale': 'ticks_stale', 'skewed': 'ticks_skewed',
                    'bad_state': 'ticks_bad_state'}
# Tick verdicts whose age checks passed (every camera fresh): a stale outage is over.
FRESH_VERDICTS = ('ready', 'skewed', 'bad_state')


class VlaNode(LifecycleNode):
    """The policy node; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('vla_node', **kwargs)
        params.declare(self, PARAMS)
        self.cfg = None
        self.policy = None
        self.unnorm_key = None
        self._configured = False
        self._publish_lock = threading.Lock()
        self.core = ControlCore(self._emit)
        self.inputs = None  # ObservationInputs, from activate
        self._worker = None
        self._latency, self._image_age = Window(), Window()
        self._period_error = Window(size=1000)  # |tick interval - period|, s
        self._last_tick = None
        self._tick_rate, self._action_rate = RateMeter(), RateMeter()
        self._chunk_rate = RateMeter()
        self._counters = Counters('ticks', 'actions', 'chunks', 'holds', 'ticks_missed',
                                  *VERDICT_COUNTERS.values(), 'future_stamps', 'invalid_actions',
                                  'bad_images', 'bad_instructions', 'model_errors',
                                  'clock_jumps')
        self._no_action = ''  # why the last tick without an action had none
        self._outage = False  # an input is stale: said once, until the inputs are fresh again
        self._log = LogThrottle(self.get_logger())  # once per 5 s per kind of problem
        self._loop_subs, self._loop_timers = [], []
        self._out, self._own_services, self._diagnostics_timer = {}, [], None
        initial, problem = params.check(PARAM['instruction'],
                                        self.get_parameter('instruction').value)
        if not problem:
            self._instruct(initial, from_parameter=True)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        refuse_invalid_transitions(self, functools.partial(self._log.warning, 'lifecycle'))

    # ---------------------------------------------------------------- start-up and lifecycle
    def start(self):
        """Configure and activate when ``autostart``; return False if that failed (reported)."""
        autostart, problem = params.check(PARAM['autostart'],
                                          self.get_parameter('autostart').value)
        if problem:
            report_problems(self.get_logger(), [problem])
            return False
        if not autostart:
            self.get_logger().info('autostart is false: waiting for a lifecycle manager')
            return True
        return (self.trigger_configure() == TransitionCallbackReturn.SUCCESS
                and self.trigger_activate() == TransitionCallbackReturn.SUCCESS)

    def on_configure(self, state):
        cfg, problems = params.read(self, PARAMS)
        if not problems:
            problems = layout_problems(cfg, self.resolve_topic_name)
        if not problems:
            # torch and the models only now: a bad parameter is reported in a second, not five.
            from vla_ros.policy import PolicyError
            try:
                self.policy, self.unnorm_key = load(cfg, os.environ)
            except (PolicyError, OSError, RuntimeError) as exc:
                problems.append(f'cannot load the policy: {exc}')
            except Exception as exc:  # noqa: B902 - start-up fails loudly, whatever loading raised
                problems.append(f'cannot load the policy {cfg.policy!r} from {cfg.model_path}: '
                                f'{type(exc).__name__}: {exc}; check the checkpoint folder and '
                                "the 'policy' parameter (an unexpected error: please report it)")
            else:
                problems += policy_problems(cfg, self.policy)
        if problems:
            report_problems(self.get_logger(), problems, 'configure failed')
            if self.policy is not None:
                self.policy.close()
            self.policy = None
            return TransitionCallbackReturn.FAILURE
        self.cfg = cfg
        # A disable and the instruction survive cleanup and configure: the node follows the newest
        # instruction it was given (or stays idle after a reset), never its start-up one again.
        previous = self.core
        self.core = ControlCore(self._emit, cfg.max_image_age, 1.0 / cfg.control_rate_hz,
                                cfg.chunk_mode, cfg.execute_steps, cfg.ensemble_decay,
                                cfg.max_camera_skew, cfg.max_proprio_age)
        if not previous.enabled:
            self.core.set_enabled(False, self._now())
        self.core.set_instruction(previous.instruction)
        self._show_instruction()
        # One action's topics: end-effector deltas, or joint targets (action_space).
        outputs = (('ee_delta', PoseStamped, 'vla/ee_delta'), ('gripper', Float64, 'vla/gripper'))
        if cfg.action_space == 'joint_position':
            outputs = (('joint_command', JointState, 'vla/joint_command'),
                       ('joint_chunk', JointTrajectory, 'vla/joint_chunk'))
        self._out = {
            **{key: self.create_publisher(kind, topic, qos.COMMAND)
               for key, kind, topic in outputs},
            'action': self.create_publisher(Float64MultiArray, 'vla/action', qos.COMMAND),
            'chunk': self.create_publisher(Float64MultiArray, 'vla/action_chunk', qos.COMMAND),
            'diagnostics': self.create_publisher(diagnostics.DiagnosticArray, '/diagnostics',
                                                 qos.COMMAND),
        }
        self._own_services = [
            self.create_service(SetBool, '~/enable', self._on_enable),
            self.create_service(Trigger, '~/reset', self._on_reset),
        ]
        # From configure on, not only while active: a deactivated node still says how it is.
        self._diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics)
        self._worker = InferenceWorker(self._on_worker_error)
        self._configured = True
        self.get_logger().info(
            f'configured: model={self._source} policy={self.cfg.policy} '
            f'device={self.policy.device or self.cfg.device} '
            f'dtype={self.policy.dtype or self.cfg.dtype} '
            f'rate={self.cfg.control_rate_hz} Hz unnorm_key={self.unnorm_key} '
            f'cameras={list(self.cfg.camera_topics)} transport={self.cfg.image_transport} '
            f'proprio={list(self.cfg.proprio)} action_space={self.cfg.action_space} '
            f'action_joints={list(self.cfg.action_joints)} chunk_mode={self.cfg.chunk_mode} '
            f'execute_steps={self.cfg.execute_steps} max_image_age={self.cfg.max_image_age} s '
            f'instruction={self.core.instruction!r}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        self.inputs = ObservationInputs(self, self.cfg.camera_topics,
                                        self.cfg.image_transport == 'compressed',
                                        self.cfg.proprio, self.cfg.max_camera_skew,
                                        self.cfg.action_frame)
        self._loop_subs = [
            *self.inputs.subscriptions,
            # Raw bytes, decoded here strictly: invalid UTF-8 is a counted bad input instead of
            # an instruction with replacement characters.
            self.create_subscription(String, 'vla/instruction', self._on_instruction,
                                     qos.COMMAND, raw=True),
        ]
        self._loop_timers = [self.create_timer(1.0 / self.cfg.control_rate_hz, self._tick)]
        self.get_logger().info(f'active: waiting for images on {", ".join(self.inputs.topics)} '
                               'and an instruction')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state):
        # The same hold as enable: false. The commit gate keeps a prediction still running (a
        # hung policy) from following it, so the executor need not wait for the worker.
        self.core.hold(self._now())
        self._stop_loop()
        self.get_logger().info('inactive: published a hold, publishing nothing further')
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state):
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state):
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _stop_loop(self):
        for timer in self._loop_timers:
            self.destroy_timer(timer)
        for sub in self._loop_subs:
            self.destroy_subscription(sub)
        self._loop_timers, self._loop_subs = [], []
        if self.inputs is not None:
            self.inputs.clear()

    def close(self):
        """Stop the loop and the worker and free the policy; safe to call in any state."""
        if self._configured:
            self._teardown()

    def _teardown(self):
        self._stop_loop()
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        with self._publish_lock:
            for pub in self._out.values():
                self.destroy_publisher(pub)
            self._out = {}
        for srv in self._own_services:
            self.destroy_service(srv)
        self._own_services = []
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self.policy is not None:
            self.policy.close()
        self.policy = None
        self._configured = False

    # ---------------------------------------------------------------- inputs
    def _now(self):
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_instruction(self, raw):
        try:
            self._instruct(readers.string_from_cdr(raw))
        except images.ConversionError as exc:
            self._report_instruction(self.core.refuse_instruction(str(exc)), 'undecodable')

    def _instruct(self, text, from_parameter=False):
        return self._report_instruction(self.core.set_instruction(text), 'too_long',
                                        from_parameter)

    def _report_instruction(self, update, kind, from_parameter=False):
        """
        Log and count an instruction update; return the refusal reason ('' if accepted).

        The ``instruction`` parameter then shows what the node follows; an update made by
        setting the parameter itself leaves that to rclpy.
        """
        if update.refused:
            self._counters.bump('bad_instructions', update.refused)
            self._log.warning(f'instruction_{kind}', f'{update.refused}; idle until a valid '
                              'instruction arrives')
        elif update.changed:
            self.get_logger().info(f'instruction: {update.text!r}' if update.text
                                   else 'idle: no instruction')
        if not from_parameter:
            self._show_instruction()
        return update.refused

    def _show_instruction(self):
        """Set the ``instruction`` parameter to the instruction the node follows ('' = idle)."""
        text = self.core.instruction
        if self.get_parameter('instruction').value != text:
            self.set_parameters([Parameter('instruction', Parameter.Type.STRING, text)])

    def _show_instruction_once(self):
        """Run ``_show_instruction`` from the executor, after the parameter set under way."""
        timer = None

        def once():
            self.destroy_timer(timer)
            self._show_instruction()
        timer = self.create_timer(0.0, once)

    def _on_set_parameters(self, changes):
        values, reason = params.check_changes(PARAMS, changes, self._configured, RESTART_HINT)
        if reason is None and 'instruction' in values:
            reason = self._instruct(values['instruction'], from_parameter=True) or None
            if self.core.instruction != values['instruction']:  # refused (idle) or stripped:
                self._show_instruction_once()  # the parameter must say what the node follows
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        if 'max_image_age' in values:
            self.core.max_image_age = values['max_image_age']
            if self.cfg is not None:
                self.cfg.max_image_age = values['max_image_age']
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- services
    def _on_enable(self, request, response):
        self.core.set_enabled(request.data, self._now())
        response.success = True
        hold = ('published a hold (zero delta)' if 'ee_delta' in self._out
                else 'published a hold (vla/joint_chunk without points)')
        response.message = 'enabled' if request.data else f'disabled: {hold}'
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, request, response):
        self.core.reset()
        self._show_instruction()
        response.success = True
        response.message = 'instruction and queued actions cleared: idle'
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------- the control loop
    def _tick(self):
        now = self._now()
        self._tick_rate.mark(now)
        self._counters.bump('ticks')
        period = 1.0 / self.cfg.control_rate_hz
        if self._last_tick is not None and now >= self._last_tick:
            interval = now - self._last_tick
            self._period_error.add(abs(interval - period))
            if interval > 1.5 * period:
                self._counters.bump('ticks_missed')
        self._last_tick = now
        tick = self.core.tick(now, self.inputs.observation(), busy=self._worker.busy)
        if tick.clock_jump_s:
            self._counters.bump('clock_jumps')
            self._outage = True  # this line says it: no action until images on the new time
            self.get_logger().warning(
                f'the clock jumped back {tick.clock_jump_s:.3f} s (use_sim_time: a bag played '
                'with --loop?): dropped the actions timed on the old time; acting again on '
                'images stamped on the new time')
        if tick.verdict in VERDICT_COUNTERS:
            self._counters.bump(VERDICT_COUNTERS[tick.verdict])
        if tick.detail:
            self._no_action = tick.detail  # which camera, or what about the state
        if tick.verdict == 'ready':
            self._image_age.add(tick.age_s)
            core, policy = self.core, self.policy  # a reconfigure replaces both
            self._worker.submit(lambda: self._infer(core, policy, tick.ticket))
        elif tick.verdict == 'future':
            self._counters.bump('future_stamps', tick.detail)
            self._log.warning('future', f'{tick.detail}: check the camera clock or use_sim_time')
        elif tick.verdict in ('skewed', 'bad_state'):
            self._log.warning(tick.verdict, f'no action: {tick.detail}')
        if tick.verdict == 'stale':
            if not self._outage:
                self._outage = True
                self.get_logger().warning(f'no action: {tick.detail} (said once until the '
                                          'inputs are fresh again)')
        elif tick.verdict in FRESH_VERDICTS:
            self._outage = False

    def _decode(self, msg):
        if self.cfg.image_transport == 'compressed':
            return images.compressed_to_rgb(msg)
        return images.image_to_rgb(msg)

    def _infer(self, core, policy, ticket):
        """
        Run on the worker thread: predict and commit (a policy error goes to the handler).

        The commit goes to the core that issued the ticket: a hold there (deactivate) refuses
        it, even when the prediction ends after a reconfigure built a new core.
        """
        prediction = infer(policy, ticket, self._decode, self.unnorm_key)
        if not self.context.ok():
            return  # Ctrl-C shut ROS down during the prediction: nothing to publish or log
        if prediction.status == 'bad_image':
            self._counters.bump('bad_images', prediction.detail)
            self._log.warning('image', f'image refused: {prediction.detail}')
            return
        self._latency.add(prediction.latency_s)
        if prediction.status == 'invalid':
            self._counters.bump('invalid_actions', prediction.detail)
            self._log.warning('invalid', f'invalid action: {prediction.detail}; nothing '
                              'published')
            return
        core.commit(ticket, prediction.rows, self._now())

    def _emit(self, emission):
        """Publish what the core emits (called under the core's lock: quick, never raises)."""
        with self._publish_lock:
            if not self._out or not self.context.ok():
                return  # cleaned up, or shut down (Ctrl-C shuts the context down first)
            if emission.kind == 'hold':
                # Stamped now: a zero delta with the identity rotation, or (joint targets have
                # no zero) a vla/joint_chunk without points: the bridge holds the measured
                # positions and follows nothing stamped before it.
                now = self.get_clock().now().to_msg()
                if 'ee_delta' in self._out:
                    pose = PoseStamped()
                    pose.header.stamp, pose.header.frame_id = now, self.cfg.action_frame
                    pose.pose.orientation.w = 1.0
                    self._out['ee_delta'].publish(pose)
                else:
                    hold = JointTrajectory(joint_names=list(self.cfg.action_joints))
                    hold.header.stamp = now
                    self._out['joint_chunk'].publish(hold)
                self._counters.bump('holds')
                return
            if emission.kind == 'chunk':
                try:
                    self._out['chunk'].publish(messages.chunk_to_multiarray(emission.values))
                except images.ConversionError as exc:  # infer passes only finite chunks
                    self._counters.bump('invalid_actions', str(exc))
                    return
                self._counters.bump('chunks')
                self._chunk_rate.mark(self._now())
                return
            stamp = emission.source.frames[0].msg.header.stamp
            try:
                if self.cfg.action_space == 'joint_position':
                    # the chunk's points are timed from the image's stamp, its header's
                    out = messages.joint_action_to_messages(
                        self.cfg.action_joints, emission.values, stamp, emission.plan,
                        1.0 / self.cfg.control_rate_hz,
                        max(0.0, emission.time_s - readers.stamp_seconds(stamp)))
                else:
                    out = zip(('ee_delta', 'gripper', 'action'), messages.action_to_messages(
                        emission.values, stamp, self.cfg.action_frame,
                        gripper_open_is_one=self.cfg.gripper_open_is_one))
            except images.ConversionError as exc:
                self._counters.bump('invalid_actions', str(exc))
                return
            for key, msg in out:
                self._out[key].publish(msg)
        self._counters.bump('actions')
        self._action_rate.mark(self._now())

    def _on_worker_error(self, exc):
        if not self.context.ok():
            return  # a publish that raced Ctrl-C's shutdown: not the policy's error
        self._counters.bump('model_errors', f'{type(exc).__name__}: {exc}')
        self._log.error('policy', f'policy error, nothing published: {type(exc).__name__}: {exc}')

    @property
    def _source(self):
        return self.cfg.model_path or self.cfg.server_uri  # the checkpoint, or the server

    def _publish_diagnostics(self):
        now = self.get_clock().now()
        now_s = now.nanoseconds * 1e-9
        counts, last_error = self._counters.snapshot()
        latency, age = self._latency.summary(), self._image_age.summary()
        period_error = self._period_error.summary()
        state = self._state_machine.current_state[1]  # 'active', 'inactive'
        values = {
            'target_rate_hz': self.cfg.control_rate_hz,
            'achieved_rate_hz': self._action_rate.rate(now_s),
            'tick_rate_hz': self._tick_rate.rate(now_s),
            'inference_latency_p50_ms': latency['p50'] * 1e3,
            'inference_latency_p95_ms': latency['p95'] * 1e3,
            'inference_latency_max_ms': latency['max'] * 1e3,
            'tick_period_error_p50_ms': period_error['p50'] * 1e3,
            'tick_period_error_p99_ms': period_error['p99'] * 1e3,
            'image_age_at_use_ms': age['last'] * 1e3,
            'image_age_at_use_p95_ms': age['p95'] * 1e3,
            'chunks_per_s': self._chunk_rate.rate(now_s),
            'chunk_step': self.core.chunk_step,
            **{f'age_ms {topic}': value * 1e3
               for topic, value in (self.inputs.ages(now_s) if self.inputs else {}).items()},
            **counts,
            'enabled': self.core.enabled,
            'lifecycle_state': state,
            'instruction': self.core.instruction[:200],
            'unnorm_key': self.unnorm_key,
            'last_error': last_error,
            'last_no_action_reason': self._no_action[:200],
            # A remote policy's timing split and failures; the policy goes at cleanup.
            **(self.policy.diagnostics() if self.policy is not None else {}),
        }
        level, message = diagnostics.OK, 'running' if state == 'active' else state
        if last_error:
            level, message = diagnostics.WARN, last_error[:200]
        with self._publish_lock:
            if self._out:
                self._out['diagnostics'].publish(diagnostics.array(
                    now.to_msg(), diagnostics.status(f'{self.get_name()}: control loop', level,
                                                     message, values,
                                                     hardware_id=self._source)))


def main(args=None):
    return run(VlaNode, args)


if __name__ == '__main__':
    sys.exit(main())
