"""
The demo on the simulated ALOHA: ``python -m vla_ros.closed_loop.demo --robot aloha``.

    python -m vla_ros.closed_loop.demo --robot aloha [--seconds 20] [--seed N]
        [--model PATH --unnorm-key KEY] [--instruction TEXT]

It writes the miniature OpenVLA-OFT ALOHA checkpoint (``vla_tiny_model --oft aloha``: random
weights, 14-D joint actions in chunks of 25, three cameras, 14-D state) unless ``--model`` names
a real one, starts ``sim_arm`` (``robot: aloha``, ``task: transfer_cube`` on ``--seed``),
``vla_node`` and ``arm_bridge`` (``output_mode: joint_trajectory``) as their own processes with
``config/vla.yaml`` and ``config/aloha.yaml`` over it, as ``launch/aloha_demo.launch.py``
composes them, sends the instruction, and runs for ``--seconds``. It then prints vla_node's rate
(target 25 Hz) and inference latency, the joint commands and chunks, the trajectories the bridge
sent to each arm's controller and what it clipped, dropped or refused, the trajectories sim_arm
took or refused, how far the joints moved and the task's stage, and saves the three cameras'
last frames as PNG. The miniature's actions are random joint targets within its statistics:
they show the plumbing and the joint-space safety, and they do not transfer the cube.
"""

from pathlib import Path
import sys
import time

import cv2
import numpy as np
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from vla_ros.closed_loop.processes import DemoObserver, node_argv, start, stop
from vla_ros.control.images import image_to_rgb
from vla_ros.control.readers import stamp_seconds

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
CAMERAS = ('cam_high', 'cam_left_wrist', 'cam_right_wrist')  # sim_arm's, vla_node's order
CONTROLLERS = ('left_arm_controller', 'right_arm_controller')
RATE = 25.0  # config/aloha.yaml's control_rate_hz
UNNORM_KEY = 'synth_oft_aloha'  # the miniature's
# sim/task of transfer_cube carries no instruction; OFT ALOHA's are short task descriptions.
INSTRUCTION = 'transfer the cube'
NOT_A_SKILL = ("random weights: its joint targets are noise within the miniature's statistics, "
               'not a transfer (a trained OFT ALOHA checkpoint goes in --model)')


class AlohaObserver(DemoObserver):
    """The demo's participant: what a user would watch with ros2 topic echo, on ALOHA's topics."""

    def __init__(self):
        super().__init__()
        self.commands, self.latencies, self.chunks = [], [], 0
        self.trajectories = dict.fromkeys(CONTROLLERS, 0)
        self.frames = dict.fromkeys(CAMERAS)
        self.first_joints, self.joints, self.joint_names = None, None, []
        self.max_motion = None  # per joint, the largest |position - first position|
        node = self.node
        node.create_subscription(JointState, 'vla/joint_command', self._on_command, RELIABLE)
        node.create_subscription(JointTrajectory, 'vla/joint_chunk', self._on_chunk, RELIABLE)
        for controller in CONTROLLERS:
            node.create_subscription(JointTrajectory, f'{controller}/joint_trajectory',
                                     self._counter(controller), RELIABLE)
        node.create_subscription(JointState, 'joint_states', self._on_joints, BEST_EFFORT)
        for camera in CAMERAS:
            node.create_subscription(Image, f'{camera}/image_raw', self._newest(camera),
                                     qos_profile_sensor_data)

    def _on_command(self, msg):
        now = self.now()
        self.latencies.append(now - stamp_seconds(msg.header.stamp))  # image stamp -> command
        self.commands.append(now)

    def _on_chunk(self, msg):
        self.chunks += 1

    def _counter(self, controller):
        def count(msg):
            self.trajectories[controller] += 1
        return count

    def _on_joints(self, msg):
        positions = np.array(msg.position, dtype=np.float64)
        if self.first_joints is None or len(positions) != len(self.first_joints):
            self.first_joints, self.joint_names = positions, list(msg.name)
            self.max_motion = np.zeros_like(positions)
        self.joints = positions
        np.maximum(self.max_motion, np.abs(positions - self.first_joints), out=self.max_motion)

    def _newest(self, camera):
        def store(msg):
            self.frames[camera] = msg
        return store

    def of(self, node):
        """Return the newest /diagnostics values of ``node`` (by its status name's prefix)."""
        return next((v for k, v in self.status.items() if k.startswith(node)), {})


def write_miniature(out):
    """Write the miniature OFT ALOHA checkpoint under ``out`` once; return its folder."""
    model = out / 'tiny-oft-aloha-checkpoint'
    if (model / 'model.safetensors').exists():
        return model
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    print(f'writing a miniature random-weight OpenVLA-OFT ALOHA checkpoint to {model}')
    return write_tiny_oft_checkpoint(model, 'aloha', seed=0, force=True)


def save_frame(msg, path):
    cv2.imwrite(str(path), cv2.cvtColor(image_to_rgb(msg), cv2.COLOR_RGB2BGR))


def vla_node_argv(model, args):
    """Return vla_node's command: config/aloha.yaml, ``model`` and the demo's options."""
    return node_argv('vla_node', f'model_path:={model}',
                     *([f'unnorm_key:={args.unnorm_key}'] if args.unnorm_key else []),
                     f'control_rate_hz:={float(args.rate)}', f'chunk_mode:={args.chunk_mode}',
                     robot='aloha')


def counts(values, names):
    """Return 'name n, ...' of the counters ``names`` in a diagnostics dict."""
    return ', '.join(f'{name} {values.get(name, "?")}' for name in names)


def joint_motion(obs):
    """Return the joint motion line: the joint that moved most, and the grippers' fingers."""
    if obs.max_motion is None:
        return 'no joint_states received'
    arm = [i for i, n in enumerate(obs.joint_names) if not n.endswith('finger')]
    fingers = [i for i, n in enumerate(obs.joint_names) if n.endswith('left_finger')]
    most = max(arm, key=lambda i: obs.max_motion[i])
    moved = sum(1 for i in arm if obs.max_motion[i] > 0.01)
    finger = max(obs.max_motion[i] for i in fingers) if fingers else float('nan')
    return (f'{moved} of {len(arm)} arm joints moved more than 0.01 rad, most '
            f'{obs.joint_names[most]} {obs.max_motion[most]:.3f} rad; fingers up to '
            f'{finger * 1000:.1f} mm')


def summarize(obs, args):
    """Print the figures of the run; return True when commands flowed and the arms moved."""
    vla, bridge, sim = obs.of('vla_node'), obs.of('arm_bridge'), obs.of('sim_arm')
    gaps = np.diff(obs.commands) * 1e3
    print(f'\n== {args.seconds:.0f} s closed loop: sim_arm (aloha) -> vla_node -> arm_bridge '
          '-> the two arm controllers')
    print(f'vla_node   openvla_oft aloha: joint commands {len(obs.commands)}, achieved '
          f'{vla.get("achieved_rate_hz", "?")} Hz (target {args.rate}), tick rate '
          f'{vla.get("tick_rate_hz", "?")} Hz; chunks {obs.chunks} on vla/joint_chunk; '
          f'inference p50 {vla.get("inference_latency_p50_ms", "?")} ms, p95 '
          f'{vla.get("inference_latency_p95_ms", "?")} ms; ' + counts(vla, (
              'ticks_skipped', 'ticks_stale', 'ticks_skewed', 'ticks_bad_state',
              'invalid_actions')))
    if len(gaps):
        print(f'commands   every p50 {np.percentile(gaps, 50):.1f} ms (25 Hz: 40 ms); image '
              f'stamp -> vla/joint_command p50 {np.percentile(obs.latencies, 50) * 1e3:.0f} ms')
    sent = ', '.join(f'{c} {n}' for c, n in obs.trajectories.items())
    print(f'arm_bridge trajectories sent: {sent} ({counts(bridge, ("sent_chunks", "sent_steps"))}'
          '); clipped: ' + counts(bridge, ('clipped_limit', 'clipped_velocity')) + '; refused: '
          + counts(bridge, ('refused_beyond_limit', 'refused_too_fast', 'refused_bug',
                            'rejected_nan', 'rejected_unknown_joint', 'rejected_missing_joint'))
          + '; dropped: ' + counts(bridge, ('dropped_stale', 'dropped_chunk_passed',
                                            'dropped_no_state'))
          + f'; watchdog holds {bridge.get("watchdog_holds", "?")}')
    print(f'sim_arm    trajectories taken {sim.get("trajectories", "?")}, refused '
          f'{sim.get("refused_trajectories", "?")}; cameras {sim.get("camera_rate_hz", "?")} Hz '
          f'(render p50 {sim.get("render_time_p50_ms", "?")} ms), real-time factor '
          f'{sim.get("real_time_factor", "?")}')
    print(f'joints     {joint_motion(obs)}')
    task = obs.task
    outcome = (f'succeeded after {task["time_to_success"]:.1f} s' if task.get('success') else
               f'not transferred (stage {task.get("stage", "?")} of {task.get("max_stage", 4)})')
    print(f'task       {task.get("task", "?")}, seed {task.get("seed", "?")}: {outcome}'
          + ('' if args.model else f'; the miniature has {NOT_A_SKILL}'))
    moved = obs.max_motion is not None and float(obs.max_motion.max()) > 0.01
    return bool(obs.commands) and sum(obs.trajectories.values()) > 0 and moved


def run(args):
    """Run the ALOHA demo with the parsed ``args`` (demo.py's); return the exit status."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or write_miniature(out)
    print(f'starting sim_arm (aloha), vla_node (model {model}, {args.rate} Hz) and arm_bridge '
          f'(joint_trajectory) with config/aloha.yaml; logs in {out}/')
    procs = {
        'sim_arm': start(node_argv('sim_arm', f'seed:={args.seed}', robot='aloha'),
                         out / 'sim_arm.log'),
        'vla_node': start(vla_node_argv(model, args), out / 'vla_node.log'),
        'arm_bridge': start(node_argv('arm_bridge', robot='aloha'), out / 'arm_bridge.log'),
    }
    obs = AlohaObserver()
    ok = False
    try:
        deadline = time.monotonic() + 120.0
        while (obs.instruction.get_subscription_count() == 0 or None in obs.frames.values()
               or 'stage' not in obs.task):
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                print(f'{", ".join(dead) or "vla_node"} did not start; see the logs in {out}/',
                      file=sys.stderr)
                return 1
            time.sleep(0.1)
        save_frame(obs.frames['cam_high'], out / 'cam_high_start.png')
        instruction = args.instruction or obs.task.get('instruction') or INSTRUCTION
        print(f'sending instruction: {instruction!r}')
        obs.instruction.publish(String(data=instruction))
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            time.sleep(0.5)
            print(f'  t={args.seconds - (end - time.monotonic()):5.1f} s  joint commands '
                  f'{len(obs.commands):4d}  trajectories {sum(obs.trajectories.values()):3d}  '
                  f'stage {obs.task.get("stage", "-")}', flush=True)
        for camera, msg in obs.frames.items():
            save_frame(msg, out / f'{camera}_end.png')
        ok = summarize(obs, args)
        print(f'camera frames: {out}/cam_high_start.png, '
              + ', '.join(f'{camera}_end.png' for camera in CAMERAS))
    finally:
        obs.close()
        codes = {name: stop(proc) for name, proc in procs.items()}
        print('stopped: ' + ', '.join(f'{k} exit {v}' for k, v in codes.items()))
    if not ok:
        print('no joint commands flowed through the loop to moving arms; see the logs',
              file=sys.stderr)
        return 1
    return 0
