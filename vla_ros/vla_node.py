"""
vla_node: an OpenVLA policy at a fixed control rate, from camera and instruction topics.

A lifecycle node. ``configure`` validates parameters, loads the policy, warms it up and creates
the publishers; ``activate`` starts the subscriptions and the control timer; ``deactivate`` stops
them; ``cleanup`` frees the model. With ``autostart`` (the default) the node configures and
activates itself, so plain ``ros2 run`` works.

Threads: the executor serves subscriptions, services, parameters and the timer; the forward pass
runs on the ``InferenceWorker`` thread. Callbacks only store the newest message.
"""

import dataclasses
import importlib
import math
import sys
import threading
import time

from geometry_msgs.msg import PoseStamped
import numpy as np
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from vla_ros import conversions, diagnostics, qos
from vla_ros.node_params import declare, NodeParam, read
from vla_ros.runtime import (Counters, image_age_status, InferenceWorker, Latest, LogThrottle,
                             MAX_INSTRUCTION_CHARS, RateMeter, Window)

PARAMS = (
    NodeParam('model_path', '', 'Local directory of an HF-format OpenVLA checkpoint (required).'),
    NodeParam('unnorm_key', '', 'Dataset statistics to unnormalise with; empty only when the '
              'checkpoint has exactly one.'),
    NodeParam('device', 'auto', "'auto' (first CUDA device, else CPU), 'cpu', 'cuda', 'cuda:N'."),
    NodeParam('dtype', 'auto', "'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', "
              "'bfloat16', 'float16'."),
    NodeParam('quantization', '', "'' (none), '8bit' or '4bit' (bitsandbytes, CUDA only)."),
    NodeParam('control_rate_hz', 5.0, 'Fixed rate of the control loop, Hz (> 0).'),
    NodeParam('max_image_age', 0.5, 'Seconds; an older newest image means no action this tick.'),
    NodeParam('image_transport', 'raw', "'raw' (sensor_msgs/Image) or 'compressed'."),
    NodeParam('center_crop', False, 'Center crop (0.9 area) used by fine-tunes trained with '
              'image augmentation.'),
    NodeParam('action_frame', 'base_link', 'frame_id of the published deltas.'),
    NodeParam('gripper_open_is_one', True, 'Publish vla/gripper with 1 = open (OpenVLA); false '
              'publishes 1 - g.'),
    NodeParam('instruction', '', 'Current instruction; empty = idle. Settable at run time.'),
    NodeParam('autostart', True, 'Configure and activate at start, so plain ros2 run works.'),
    NodeParam('policy', 'openvla', "'openvla', or 'module:callable' returning a policy object "
              '(custom policies and tests).'),
)
# Parameters that may change while configured; the rest need cleanup + configure.
RUNTIME_PARAMS = {'instruction', 'max_image_age', 'autostart'}


@dataclasses.dataclass(frozen=True)
class Frame:
    """The newest camera message and its stamp in seconds on the node clock's time base."""

    msg: object
    stamp_s: float


def load_policy(cfg):
    """Build the policy object named by ``cfg.policy`` (raises with a clear message)."""
    if cfg.policy == 'openvla':
        from vla_ros.policy import OpenVLAPolicy
        factory = OpenVLAPolicy.from_pretrained
    else:
        module_name, _, attr = cfg.policy.partition(':')
        if not module_name or not attr:
            raise ValueError(f"parameter 'policy' is {cfg.policy!r}; use 'openvla' or "
                             "'package.module:callable'")
        factory = getattr(importlib.import_module(module_name), attr)
    kwargs = {'device': cfg.device, 'dtype': cfg.dtype, 'center_crop': cfg.center_crop}
    if cfg.quantization:
        kwargs['quantization'] = cfg.quantization
    return factory(cfg.model_path, **kwargs)


def validate(cfg):
    """Return a list of problems with the configuration, each naming the parameter and fix."""
    problems = []
    if not cfg.model_path:
        problems.append("parameter 'model_path' is required: set it to a local OpenVLA "
                        'checkpoint directory (-p model_path:=/models/openvla-7b)')
    if not (cfg.control_rate_hz > 0 and math.isfinite(cfg.control_rate_hz)):
        problems.append(f"parameter 'control_rate_hz' is {cfg.control_rate_hz}; it must be a "
                        'finite number > 0 (e.g. 5.0)')
    if not (cfg.max_image_age > 0):
        problems.append(f"parameter 'max_image_age' is {cfg.max_image_age}; it must be > 0 s")
    if cfg.image_transport not in ('raw', 'compressed'):
        problems.append(f"parameter 'image_transport' is {cfg.image_transport!r}; use 'raw' or "
                        "'compressed'")
    if cfg.quantization not in ('', '8bit', '4bit'):
        problems.append(f"parameter 'quantization' is {cfg.quantization!r}; use '', '8bit' or "
                        "'4bit'")
    return problems


class VlaNode(LifecycleNode):
    """The policy node; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('vla_node', **kwargs)
        declare(self, PARAMS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.cfg = None
        self.policy = None
        self.unnorm_key = None
        self._configured = False
        self._image = Latest()
        self._instruction = Latest()
        # A chunk's remaining actions, published one per tick, and the instruction generation
        # they belong to; anything from an older generation is dropped. Guarded by _lock.
        self._lock = threading.Lock()
        self._generation = 0
        self._queue = []  # [(action values, stamp)]
        self._enabled = True
        self._worker = None
        self._latency = Window()
        self._image_age = Window()
        self._period_error = Window(size=1000)  # |tick interval - period|, s
        self._last_tick = None
        self._tick_rate = RateMeter()
        self._action_rate = RateMeter()
        self._counters = Counters('ticks', 'actions', 'missed', 'skipped', 'stale', 'idle',
                                  'disabled',
                                  'invalid_actions', 'bad_images', 'future_stamps',
                                  'bad_instructions', 'model_errors')
        self._log = LogThrottle(self.get_logger())  # once per 5 s per kind of problem
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._io_group = ReentrantCallbackGroup()
        self._loop_subs = []
        self._loop_timers = []
        self._out = {}
        self._own_services = []
        self._instruction.put('')
        self._set_instruction(self.get_parameter('instruction').value)

    # ---------------------------------------------------------------- lifecycle transitions
    def on_configure(self, state):
        self.cfg = read(self, PARAMS)
        problems = validate(self.cfg)
        if problems:
            for problem in problems:
                self.get_logger().error(problem)
            return TransitionCallbackReturn.FAILURE
        try:
            self.policy = load_policy(self.cfg)
            self.unnorm_key = self.policy.resolve_unnorm_key(self.cfg.unnorm_key or None)
            # Warm-up: the first control tick must not pay for lazy initialisation.
            self.policy.predict(np.full((224, 224, 3), 128, np.uint8), 'warm up',
                                unnorm_key=self.unnorm_key)
        except Exception as exc:  # noqa: B902 - start-up fails loudly with the policy's message
            self.get_logger().error(f'cannot load the policy: {exc}')
            self._free_policy()
            return TransitionCallbackReturn.FAILURE
        self._out = {
            'ee_delta': self.create_publisher(PoseStamped, 'vla/ee_delta', qos.COMMAND),
            'gripper': self.create_publisher(Float64, 'vla/gripper', qos.COMMAND),
            'action': self.create_publisher(Float64MultiArray, 'vla/action', qos.COMMAND),
            'diagnostics': self.create_publisher(diagnostics.DiagnosticArray, '/diagnostics',
                                                 qos.COMMAND),
        }
        self._own_services = [
            self.create_service(SetBool, '~/enable', self._on_enable,
                                callback_group=self._io_group),
            self._create_reset_service(),
        ]
        self._worker = InferenceWorker(self._on_worker_error)
        self._configured = True
        self.get_logger().info(
            f'configured: model={self.cfg.model_path} policy={self.cfg.policy} '
            f'device={getattr(self.policy, "device", self.cfg.device)} '
            f'dtype={getattr(self.policy, "dtype", self.cfg.dtype)} '
            f'rate={self.cfg.control_rate_hz} Hz unnorm_key={self.unnorm_key} '
            f'image_topic={self._image_topic()} transport={self.cfg.image_transport} '
            f'max_image_age={self.cfg.max_image_age} s')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        if self.cfg.image_transport == 'compressed':
            self._loop_subs.append(self.create_subscription(
                CompressedImage, self._image_topic(), self._on_image, qos.SENSOR,
                callback_group=self._io_group))
        else:
            self._loop_subs.append(self.create_subscription(
                Image, self._image_topic(), self._on_image, qos.SENSOR,
                callback_group=self._io_group))
        # Raw bytes, decoded here strictly, so that invalid UTF-8 is a counted bad input instead
        # of an instruction with replacement characters.
        self._loop_subs.append(self.create_subscription(
            String, 'vla/instruction', self._on_instruction, qos.COMMAND, raw=True,
            callback_group=self._io_group))
        self._loop_timers = [
            self.create_timer(1.0 / self.cfg.control_rate_hz, self._tick,
                              callback_group=self._timer_group),
            self.create_timer(1.0, self._publish_diagnostics, callback_group=self._io_group),
        ]
        self.get_logger().info('active: waiting for images and an instruction')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state):
        self._stop_loop()
        self.get_logger().info('inactive: publishing nothing')
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
        self._drop_pending()  # whatever is still inferring is dropped when it finishes
        if self._worker is not None:
            self._worker.wait_idle(timeout=30.0)
        self._image.clear()

    def release(self):
        """Stop the loop and the worker and free the policy; safe to call in any state."""
        if self._configured:
            self._teardown()

    def _teardown(self):
        self._stop_loop()
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        for pub in self._out.values():
            self.destroy_publisher(pub)
        for srv in self._own_services:
            self.destroy_service(srv)
        self._out, self._own_services = {}, []
        self._free_policy()
        self._configured = False

    def _free_policy(self):
        if self.policy is not None and hasattr(self.policy, 'close'):
            self.policy.close()
        self.policy = None

    # ---------------------------------------------------------------- inputs
    def _image_topic(self):
        base = self.resolve_topic_name('camera/image_raw')
        return base + '/compressed' if self.cfg.image_transport == 'compressed' else base

    def _on_image(self, msg):
        stamp = msg.header.stamp
        self._image.put(Frame(msg, stamp.sec + stamp.nanosec * 1e-9))

    def _on_instruction(self, raw):
        try:
            text = conversions.string_from_cdr(raw)
        except conversions.ConversionError as exc:
            self._reject_instruction(str(exc))
            self._log.warning('instruction_text', f'{exc}; idle until a valid instruction arrives')
            return
        self._set_instruction(text)

    def _set_instruction(self, text):
        """Install a new instruction; return an error string when it is refused (then idle)."""
        if len(text) > MAX_INSTRUCTION_CHARS:
            reason = (f'instruction of {len(text)} characters refused (limit '
                      f'{MAX_INSTRUCTION_CHARS}); send one short sentence')
            self._log.warning('instruction_length',
                              f'{reason}; idle until a valid instruction arrives')
            return self._reject_instruction(reason)
        text = text.strip()
        if text != self._instruction.get():
            self._drop_pending(instruction=text)
            self.get_logger().info(f'instruction: {text!r}' if text else 'idle: no instruction')
        return None

    def _reject_instruction(self, reason):
        """Count a refused instruction and go idle (the caller logs, one throttled line each)."""
        self._counters.bump('bad_instructions', reason)
        self._drop_pending(instruction='')
        return reason

    def _on_set_parameters(self, params):
        for param in params:
            if self._configured and param.name not in RUNTIME_PARAMS:
                return SetParametersResult(
                    successful=False,
                    reason=f"'{param.name}' takes effect only at configure: deactivate, cleanup, "
                           'set it, then configure and activate')
            if param.name == 'instruction':
                if param.type_ != Parameter.Type.STRING:
                    return SetParametersResult(successful=False,
                                               reason="'instruction' must be a string")
                error = self._set_instruction(param.value)
                if error:
                    return SetParametersResult(successful=False, reason=error)
            if param.name == 'max_image_age' and self.cfg is not None:
                value = float(param.value)
                if not value > 0:
                    return SetParametersResult(successful=False,
                                               reason="'max_image_age' must be > 0 s")
                self.cfg.max_image_age = value
        return SetParametersResult(successful=True)

    def _drop_pending(self, instruction=None):
        """Forget queued actions and anything still inferring; optionally set the instruction."""
        with self._lock:
            self._queue = []
            self._generation += 1
            if instruction is not None:
                self._instruction.put(instruction)

    # ---------------------------------------------------------------- services
    def _on_enable(self, request, response):
        self._enabled = bool(request.data)
        if not self._enabled:
            self._drop_pending()
            # One hold: a zero delta stamped now, so a bridge stops at once.
            pose = PoseStamped()
            pose.header.stamp = self.get_clock().now().to_msg()
            pose.header.frame_id = self.cfg.action_frame
            pose.pose.orientation.w = 1.0
            self._out['ee_delta'].publish(pose)
        response.success = True
        response.message = 'enabled' if self._enabled else 'disabled: published a zero delta'
        self.get_logger().info(response.message)
        return response

    def _create_reset_service(self):
        def on_reset(request, response):
            self._drop_pending(instruction='')
            response.success = True
            response.message = 'instruction and queued actions cleared: idle'
            self.get_logger().info(response.message)
            return response
        return self.create_service(Trigger, '~/reset', on_reset, callback_group=self._io_group)

    # ---------------------------------------------------------------- the control loop
    def _tick(self):
        now = self.get_clock().now().nanoseconds * 1e-9
        self._tick_rate.mark(now)
        self._counters.bump('ticks')
        period = 1.0 / self.cfg.control_rate_hz
        if self._last_tick is not None:
            interval = now - self._last_tick
            self._period_error.add(abs(interval - period))
            if interval > 1.5 * period:
                self._counters.bump('missed')
        self._last_tick = now
        instruction = self._instruction.get()
        if not self._enabled:
            self._counters.bump('disabled')
            return
        if not instruction:
            self._counters.bump('idle')
            return
        if self._worker.busy:
            self._counters.bump('skipped')
            return
        with self._lock:
            queued = self._queue.pop(0) if self._queue else None
            generation = self._generation
        if queued is not None:
            self._publish(*queued)
            return
        frame = self._image.get()
        if frame is None:
            self._counters.bump('stale')
            return
        age = now - frame.stamp_s
        status = image_age_status(age, self.cfg.max_image_age)
        if status == 'future':
            self._counters.bump('future_stamps', f'image stamped {-age:.3f} s in the future')
            self._log.warning('future', f'image stamped {-age:.3f} s in the future of the node '
                              'clock; check the camera clock or use_sim_time')
            return
        if status == 'stale':
            self._counters.bump('stale')
            self._log.warning('stale', f'newest image is {age:.2f} s old (max_image_age '
                              f'{self.cfg.max_image_age} s); holding until a fresh one arrives')
            return
        self._image_age.add(age)
        self._worker.submit(lambda: self._infer(frame, instruction, generation))

    def _infer(self, frame, instruction, generation):
        """Run on the worker thread: convert, predict, publish (never raises out)."""
        try:
            if self.cfg.image_transport == 'compressed':
                rgb = conversions.compressed_to_rgb(frame.msg)
            else:
                rgb = conversions.image_to_rgb(frame.msg)
        except conversions.ConversionError as exc:
            self._counters.bump('bad_images', str(exc))
            self._log.warning('image', f'image refused: {exc}')
            return
        # Compute time is measured on a steady clock: under use_sim_time the node clock may stand
        # still while the model works.
        start = time.perf_counter()
        action = self.policy.predict(rgb, instruction, unnorm_key=self.unnorm_key)
        self._latency.add(time.perf_counter() - start)
        if not action.valid:
            self._counters.bump('invalid_actions', 'the model produced a non-action token')
            self._log.warning('invalid', f'invalid action from the model (tokens '
                              f'{list(action.token_ids)}); nothing published')
            return
        values = np.atleast_2d(np.asarray(action.values, dtype=np.float64))
        if not np.all(np.isfinite(values)):
            self._counters.bump('invalid_actions', 'the model produced a non-finite action')
            return
        stamp = frame.msg.header.stamp
        with self._lock:
            if generation != self._generation or not self._enabled:
                return  # the instruction changed, or the node was disabled, while inferring
            self._queue = [(row, stamp) for row in values[1:]]
        self._publish(values[0], stamp)

    def _publish(self, values, stamp):
        try:
            pose, gripper, raw = conversions.action_to_messages(
                values, stamp, self.cfg.action_frame,
                gripper_open_is_one=self.cfg.gripper_open_is_one)
        except conversions.ConversionError as exc:
            self._counters.bump('invalid_actions', str(exc))
            self._log.warning('action', f'action refused: {exc}')
            return
        self._out['ee_delta'].publish(pose)
        self._out['gripper'].publish(gripper)
        self._out['action'].publish(raw)
        self._counters.bump('actions')
        self._action_rate.mark(self.get_clock().now().nanoseconds * 1e-9)

    def _on_worker_error(self, exc):
        self._counters.bump('model_errors', f'{type(exc).__name__}: {exc}')
        self._log.error('policy', f'policy error, nothing published: {type(exc).__name__}: {exc}')

    def _publish_diagnostics(self):
        now = self.get_clock().now()
        now_s = now.nanoseconds * 1e-9
        counts, last_error = self._counters.snapshot()
        latency = self._latency.summary()
        age = self._image_age.summary()
        period_error = self._period_error.summary()
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
            **{f'ticks_{k}' if k in ('missed', 'skipped', 'stale', 'idle', 'disabled') else k: v
               for k, v in counts.items()},
            'enabled': self._enabled,
            'instruction': self._instruction.get()[:200],
            'unnorm_key': self.unnorm_key,
            'last_error': last_error,
        }
        level, message = diagnostics.OK, 'running'
        if last_error:
            level, message = diagnostics.WARN, last_error[:200]
        self._out['diagnostics'].publish(diagnostics.array(
            now.to_msg(), diagnostics.status(f'{self.get_name()}: control loop', level, message,
                                             values, hardware_id=self.cfg.model_path)))


def main(args=None):
    rclpy.init(args=args)
    node = VlaNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.get_parameter('autostart').value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('configure failed (see the errors above); exiting')
                code = 1
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('activate failed; exiting')
                code = 1
        if code == 0:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.release()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
