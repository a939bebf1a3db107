"""
Benchmark vla_node's control loop on this machine (a script, not a test).

    python -m vla_ros.bench.node [--seconds 60] [--rate 10]
    python -m vla_ros.bench.node --policy openvla_oft [--platform libero] [--seconds 60]
        [--rate 20]
    python -m vla_ros.bench.node --policy openvla_oft --platform aloha [--seconds 60]

1. Per-tick overhead excluding the forward pass, in-process: image conversion, the policy's
   preprocessing, building the three output messages and publishing them, for 640x480 rgb8 and
   1280x720 bgr8 (goal: p50 <= 2 ms). With ``--policy openvla_oft``, the miniature checkpoint of
   ``--platform`` (``OFT_SETUPS``): the timer's tick (the newest frames, the state assembled
   from ee_pose and joint_states, the control core's decision, one action published: LIBERO's
   deltas, or ALOHA's joint command and, at a chunk's first row, its joint chunk) and, per
   chunk, what runs on the worker besides the forward pass (every image converted and
   preprocessed TF-exact, the chunk published). LIBERO: two 640x480 cameras, an 8-D state,
   receding; ALOHA: three 640x480 cameras, the 14-D state from joint_states, open-loop chunks
   of 25 at 25 Hz.
2. Period error of the fixed-rate loop: vla_node runs as its own process on a miniature
   checkpoint with 20 Hz cameras (OFT: a 30 Hz camera_stream per camera and the state at 50 Hz;
   ALOHA with config/aloha.yaml) for ``--seconds``; its /diagnostics report the tick interval
   error p50/p99 and the missed ticks (goal: p99 <= 2 ms, 0 missed).
"""

import argparse
import dataclasses
import json
from pathlib import Path
import sys
import tempfile
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from vla_ros.closed_loop.processes import (executable, list_param, node_argv, Participant,
                                           start, stop)
from vla_ros.control.images import image_to_rgb
from vla_ros.control.joints import ALOHA_ARM, PRESETS
from vla_ros.control.readers import stamp_seconds
from vla_ros.nodes import diagnostics, messages, qos
from vla_ros.sim.scenes import scene

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def percentiles(samples_s):
    p50, p95, p99 = np.percentile(np.asarray(samples_s) * 1e3, [50, 95, 99])
    return p50, p95, p99


def tick_overhead(policy, iterations=200):
    """Time conversion + preprocessing + message building + publishing, per frame size."""
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64, Float64MultiArray
    node = rclpy.create_node('bench_tick')
    pubs = [node.create_publisher(PoseStamped, 'vla/ee_delta', qos.COMMAND),
            node.create_publisher(Float64, 'vla/gripper', qos.COMMAND),
            node.create_publisher(Float64MultiArray, 'vla/action', qos.COMMAND)]
    action = np.array([0.01, -0.02, 0.003, 0.05, -0.04, 0.1, 1.0])
    rows = []
    for width, height, encoding in ((640, 480, 'rgb8'), (1280, 720, 'bgr8')):
        msg = messages.rgb_to_image(scene(0, width, height), encoding,
                                    stamp=node.get_clock().now().to_msg())
        parts = {'convert': [], 'preprocess': [], 'publish': [], 'total': []}
        for i in range(iterations + 20):
            t0 = time.perf_counter()
            rgb = image_to_rgb(msg)
            t1 = time.perf_counter()
            policy.image_processor(rgb)
            t2 = time.perf_counter()
            for pub, out in zip(pubs, messages.action_to_messages(
                    action, msg.header.stamp, 'base_link')):
                pub.publish(out)
            t3 = time.perf_counter()
            if i >= 20:
                for name, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    parts[name].append(value)
        rows.append((f'{width}x{height} {encoding}', parts))
    node.destroy_node()
    return rows


ALOHA_HOME = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0)  # one ViperX arm's joints, near its start pose


@dataclasses.dataclass(frozen=True)
class OftSetup:
    """One OFT platform's bench: its miniature, inputs, chunk mode, default rate, action space."""

    unnorm_key: str
    cameras: tuple  # image topics, primary first
    proprio: tuple  # vla_node's proprio entries
    chunk_mode: str
    rate: float
    row: tuple  # a plausible action row, in the policy's order
    joints: tuple = ()  # joint_position: the action_joints; () = ee_delta
    robot: str = 'gripper'  # node_argv's: 'aloha' runs vla_node with config/aloha.yaml
    center_crop: bool = False


OFT_SETUPS = {
    # Two cameras and an 8-D state from ee_pose and joint_states; receding: the miniature is
    # slower than the period here, and a tick never waits for it.
    'libero': OftSetup('synth_oft_libero', ('camera/image_raw', 'wrist_camera/image_raw'),
                       ('ee_position', 'ee_axis_angle', 'joint:left_finger_joint',
                        'joint:right_finger_joint'), 'receding', 10.0,
                       (0.01, -0.02, 0.003, 0.05, -0.04, 0.1, 1.0)),
    # config/aloha.yaml: three cameras, the 14-D state from joint_states, joint targets in
    # open-loop chunks of 25 at 25 Hz.
    'aloha': OftSetup('synth_oft_aloha', ('cam_high/image_raw', 'cam_left_wrist/image_raw',
                                          'cam_right_wrist/image_raw'), ('aloha',), 'open_loop',
                      25.0, ALOHA_HOME[:6] + (0.5,) + ALOHA_HOME[:6] + (0.5,),
                      PRESETS['aloha'], 'aloha', center_crop=True),
}


def still_state(setup, stamp):
    """Return {message type: message} of a still robot's state for ``setup``, stamped."""
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    pose, joints = PoseStamped(), JointState()
    pose.header.stamp = joints.header.stamp = stamp
    pose.header.frame_id = 'base_link'
    pose.pose.position.x, pose.pose.position.z, pose.pose.orientation.w = 0.4, 0.3, 1.0
    if setup.joints:  # ALOHA: every joint by its MJCF name, the fingers half open
        joints.name = [name for side in ('left', 'right') for name in (
            *(f'vx300s_{side}/{j}' for j in ALOHA_ARM), f'vx300s_{side}/left_finger',
            f'vx300s_{side}/right_finger')]
        joints.position = [*ALOHA_HOME, 0.038, -0.038] * 2
    else:
        joints.name, joints.position = ['left_finger_joint', 'right_finger_joint'], [0.02, 0.02]
    return {PoseStamped: pose, JointState: joints}


def tick_overhead_oft(policy, setup, iterations=200):
    """Time the OFT tick (state, core, one action) and the per-chunk work outside the model."""
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64, Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    from vla_ros.control.core import ControlCore
    from vla_ros.nodes.observations import ObservationInputs
    node = rclpy.create_node('bench_tick_oft')
    outputs = ({'joint_command': JointState, 'joint_chunk': JointTrajectory} if setup.joints
               else {'ee_delta': PoseStamped, 'gripper': Float64})
    out = {key: node.create_publisher(kind, f'vla/{key}', qos.COMMAND) for key, kind in
           {**outputs, 'action': Float64MultiArray, 'action_chunk': Float64MultiArray}.items()}
    period = 1.0 / setup.rate

    def emit(emission):  # as vla_node's _emit, by the action space
        if emission.kind == 'chunk':
            out['action_chunk'].publish(messages.chunk_to_multiarray(emission.values))
        elif emission.kind == 'action':
            stamp = emission.source.frames[0].msg.header.stamp
            if setup.joints:
                sent = messages.joint_action_to_messages(setup.joints, emission.values, stamp,
                                                         emission.plan, period)
            else:
                sent = zip(('ee_delta', 'gripper', 'action'),
                           messages.action_to_messages(emission.values, stamp, 'base_link'))
            for key, msg in sent:
                out[key].publish(msg)

    inputs = ObservationInputs(node, setup.cameras, False, setup.proprio, 0.05, 'base_link')
    core = ControlCore(emit, max_image_age=None, period=period, chunk_mode=setup.chunk_mode,
                       max_camera_skew=0.05, max_proprio_age=None)
    instruction = 'put the bowl on the plate'
    core.set_instruction(instruction)
    stamp = node.get_clock().now().to_msg()
    frames = [messages.rgb_to_image(scene(i, 640, 480), stamp=stamp)
              for i in range(len(setup.cameras))]
    state = still_state(setup, stamp)
    for i, (kind, _, callback) in enumerate(inputs.callbacks):
        callback(frames[i] if i < len(frames) else state[kind])  # as the subscriptions would
    chunk = np.tile(setup.row, (policy.chunk_len, 1))
    # open_loop asks for a chunk once per chunk_len ticks: enough ticks for a quarter as many
    ticks = max(iterations, iterations * policy.chunk_len // 4
                if setup.chunk_mode == 'open_loop' else 0)
    parts = {'tick': [], 'convert': [], 'preprocess': [], 'publish chunk': []}
    start = now = stamp_seconds(stamp)  # ages are not checked: frames stay usable
    for i in range(ticks + 20):
        t0 = time.perf_counter()
        tick = core.tick(now, inputs.observation())  # every tick publishes one row
        t1 = time.perf_counter()
        if tick.ticket is not None:
            rgbs = [image_to_rgb(frame.msg) for frame in tick.ticket.observation.frames]
            t2 = time.perf_counter()
            policy.inputs(rgbs, instruction, tick.ticket.observation.state.values,
                          policy.unnorm_keys[0])
            t3 = time.perf_counter()
            core.commit(tick.ticket, chunk, now)
            t4 = time.perf_counter()
            if i >= 20:
                for name, value in (('convert', t2 - t1), ('preprocess', t3 - t2),
                                    ('publish chunk', t4 - t3)):
                    parts[name].append(value)
        if i >= 20:
            parts['tick'].append(t1 - t0)
        now = start + (i + 1) * period  # the next tick publishes the chunk's next row
    size = len(inputs.observation().state.values)
    node.destroy_node()
    return [(f'{len(frames)}x 640x480 rgb8 + {size}-D state', parts)]


def period_error(model, seconds, rate, out, setup=None):
    """Run vla_node, cameras (and state) for ``seconds``; return diagnostics before, after."""
    if setup is None:  # plain OpenVLA: one 20 Hz camera
        params, robot = ['unnorm_key:=synth_bridge'], 'gripper'
        cameras = [start([executable('camera_stream'), '--rate', '20'], out / 'camera.log')]
    else:  # 30 Hz cameras, the state at 50 Hz
        params, robot = [f'unnorm_key:={setup.unnorm_key}', f'chunk_mode:={setup.chunk_mode}'], \
            setup.robot
        if robot == 'gripper':  # what config/aloha.yaml sets for ALOHA
            params += ['policy:=openvla_oft', list_param('camera_topics', setup.cameras),
                       list_param('proprio', setup.proprio)]
        cameras = [start([executable('camera_stream'), '--rate', '30', '--ros-args', '-r',
                          f'camera/image_raw:={topic}', '-r', f'__node:=camera_{i}'],
                         out / f'camera_{i}.log') for i, topic in enumerate(setup.cameras)]
    node = start(node_argv('vla_node', f'model_path:={model}', *params,
                           f'control_rate_hz:={float(rate)}', 'instruction:=pick up the red cup',
                           robot=robot), out / 'vla_node.log')
    participant = Participant('bench_period')
    client = participant.node
    if setup is not None:
        state_publishers(client, setup)
    latest = {}

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.endswith('control loop'):
                latest.update(diagnostics.values_of(status))
    client.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, RELIABLE)
    probe = client.create_publisher(String, 'vla/instruction', RELIABLE)
    try:
        deadline = time.monotonic() + 120.0
        while probe.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # let the loop settle, then measure a fresh window
        start_counts = dict(latest)
        time.sleep(seconds)
        return start_counts, dict(latest)
    finally:
        participant.close()
        for camera in cameras:
            stop(camera)
        stop(node)


def state_publishers(node, setup, rate=50.0):
    """Publish a still robot's ee_pose and joint_states at ``rate`` from ``node``."""
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    topics = {PoseStamped: 'ee_pose', JointState: 'joint_states'}
    pubs = {kind: node.create_publisher(kind, topic, qos.SENSOR) for kind, topic in topics.items()}

    def publish():
        for kind, msg in still_state(setup, node.get_clock().now().to_msg()).items():
            pubs[kind].publish(msg)
    node.create_timer(1.0 / rate, publish)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=60.0)
    parser.add_argument('--rate', type=float,
                        help="control_rate_hz (default: 10; the OFT platform's: aloha 25)")
    parser.add_argument('--policy', choices=('openvla', 'openvla_oft'), default='openvla')
    parser.add_argument('--platform', choices=sorted(OFT_SETUPS), default='libero',
                        help='openvla_oft: the miniature and inputs of this platform')
    parser.add_argument('--json', help='write the figures to this file')
    args = parser.parse_args(argv)
    from vla_ros.policy.loading import load_policy
    from vla_ros.policy.tiny import write_tiny_checkpoint, write_tiny_oft_checkpoint
    setup = OFT_SETUPS[args.platform] if args.policy == 'openvla_oft' else None
    args.rate = args.rate or (setup.rate if setup else 10.0)
    rclpy.init()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if setup:
            model = write_tiny_oft_checkpoint(Path(tmp) / 'tiny', args.platform, seed=0)
            policy, _ = load_policy(model, 'openvla_oft', setup.unnorm_key, 'cpu', 'float32',
                                    center_crop=setup.center_crop, platform=args.platform)
        else:
            model = write_tiny_checkpoint(Path(tmp) / 'tiny', seed=0)
            policy, _ = load_policy(model, unnorm_key='synth_bridge', device='cpu',
                                    dtype='float32')
        print('per-tick overhead excluding the forward pass (ms; goal p50 <= 2)')
        print(f'{"frame":<30}{"part":<15}{"p50":>9}{"p95":>9}{"p99":>9}')
        rows = tick_overhead_oft(policy, setup) if setup else tick_overhead(policy)
        for label, parts in rows:
            for name, samples in parts.items():
                p50, p95, p99 = percentiles(samples)
                print(f'{label:<30}{name:<15}{p50:9.3f}{p95:9.3f}{p99:9.3f}')
                results[f'overhead/{label}/{name}_p50_ms'] = p50
        before, after = period_error(model, args.seconds, args.rate, Path(tmp), setup)
    rclpy.try_shutdown()
    missed = int(after.get('ticks_missed', -1)) - int(before.get('ticks_missed', 0))
    skipped = int(after.get('ticks_skipped', -1)) - int(before.get('ticks_skipped', 0))
    which = f'{args.policy} {args.platform}' if setup else args.policy
    print(f'\nvla_node at {args.rate} Hz for {args.seconds:.0f} s, miniature {which}:')
    for key in ('tick_period_error_p50_ms', 'tick_period_error_p99_ms', 'achieved_rate_hz',
                'inference_latency_p50_ms', 'inference_latency_p95_ms'):
        print(f'  {key} = {after.get(key)}')
        results[key] = after.get(key)
    print(f'  missed ticks = {missed}, skipped ticks = {skipped} (goal: 0 missed, p99 <= 2 ms)')
    results.update(missed_ticks=missed, skipped_ticks=skipped)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
