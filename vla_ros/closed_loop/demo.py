"""
The README's main job: a closed loop of sim_arm, vla_node and arm_bridge, on a miniature model.

    python -m vla_ros.closed_loop.demo [--policy reach|openvla|openvla_oft] [--seed N]
        [--seconds 20] [--rate HZ] [--chunk-mode MODE] [--model PATH --unnorm-key KEY]
    python -m vla_ros.closed_loop.demo --robot aloha [...]   (vla_ros.closed_loop.demo_aloha)

It writes the policy's checkpoint (unless ``--model`` names a real one), starts ``sim_arm``
(MuJoCo arm, table, objects, scene and wrist cameras) on the reach episode of ``--seed``,
``vla_node`` and ``arm_bridge`` as their own processes with ``config/vla.yaml``, as
``launch/demo.launch.py`` composes them, sends the episode's instruction ("reach the blue
block", from ``sim/task``) over ``vla/instruction`` as ``ros2 topic pub`` would, and runs for
``--seconds``. It then prints the achieved rates, the latency from image stamp to command, the
commands the bridge clamped, whether and when the task succeeded, and saves camera frames and a
plot of the end-effector path as PNG.

``--policy reach`` (the default) is the miniature OpenVLA-OFT fine-tuned by ``vla_finetune`` on
expert reach demonstrations (``vla_ros.training.demo_policy``): both cameras, the state
``[ee_position, gripper_x/y/z joints, left and right finger joints]`` from ``ee_pose`` and
``joint_states``, chunks of 8 executed as ``--chunk-mode`` says, at 10 Hz. ``--policy
openvla_oft`` is the same miniature with random weights (state ``[ee_position, ee_axis_angle,
fingers]``), ``--policy openvla`` plain OpenVLA's random miniature at 5 Hz from the scene
camera: their actions are random numbers with the right shape and range, which shows the
plumbing and the safety limits, not a skill. Point ``--model`` at openvla-7b for a real one.
"""

import argparse
from pathlib import Path
import sys
import time

import cv2
from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from vla_ros.closed_loop.processes import (DemoObserver, list_param, node_argv, start, stop,
                                           stop_like_ctrl_c)
from vla_ros.control.images import image_to_rgb
from vla_ros.control.readers import stamp_seconds
from vla_ros.sim.tasks import REACH_REGION
from vla_ros.training.demo_policy import run_proprio

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


class Observer(DemoObserver):
    """The demo's own ROS participant: records what a user would watch with ros2 topic echo."""

    def __init__(self):
        super().__init__()
        self.deltas, self.latencies, self.twists, self.path = [], [], [], []
        self.frames, self.wrist_frames = [], []
        node = self.node
        node.create_subscription(PoseStamped, 'vla/ee_delta', self._on_delta, RELIABLE)
        node.create_subscription(TwistStamped, 'servo_node/delta_twist_cmds', self.twists.append,
                                 RELIABLE)
        node.create_subscription(PoseStamped, 'ee_pose', self._on_pose, BEST_EFFORT)
        node.create_subscription(Image, 'camera/image_raw', self._newest(self.frames),
                                 qos_profile_sensor_data)
        node.create_subscription(Image, 'wrist_camera/image_raw', self._newest(self.wrist_frames),
                                 qos_profile_sensor_data)

    def _on_delta(self, msg):
        # image stamp -> command out of vla_node
        self.latencies.append(self.now() - stamp_seconds(msg.header.stamp))
        self.deltas.append(msg)

    def _on_pose(self, msg):
        p = msg.pose.position
        self.path.append((self.now(), p.x, p.y, p.z))

    @staticmethod
    def _newest(frames):
        def store(msg):
            frames.append(msg)
            del frames[:-1]  # keep only the newest
        return store


def save_frame(msg, path):
    cv2.imwrite(str(path), cv2.cvtColor(image_to_rgb(msg), cv2.COLOR_RGB2BGR))


def plot_path(path, out):
    """Save the end-effector path (top view and height over time) as PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    t, x, y, z = np.array(path).T
    fig, (top, height) = plt.subplots(1, 2, figsize=(10, 4))
    top.plot(y, x, '-')
    top.plot(y[:1], x[:1], 'go', label='start')
    top.plot(y[-1:], x[-1:], 'rs', label='end')
    top.set(xlabel='y (m)', ylabel='x (m)', title='end effector, top view (base_link)')
    top.axis('equal')
    top.legend()
    height.plot(t - t[0], z)
    height.set(xlabel='time (s)', ylabel='z (m)', title='end effector height')
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# vla_node's parameters of the OFT miniatures on sim_arm: LIBERO constants, both cameras; the
# state layout (proprio) is each policy's own.
OFT_PARAMS = ['policy:=openvla_oft', 'platform:=libero', 'center_crop:=true',
              'camera_topics:=[camera/image_raw, wrist_camera/image_raw]']
# Per policy: the miniature's unnorm key and rate, and vla_node's parameters for sim_arm. The
# trained reach policy's state layout is the one its run record names (``node_params``).
POLICIES = {
    'openvla': {'unnorm_key': 'synth_bridge', 'rate': 5.0, 'params': []},
    'openvla_oft': {'unnorm_key': 'synth_oft_libero', 'rate': 10.0, 'params': OFT_PARAMS + [
        "proprio:=[ee_position, ee_axis_angle, 'joint:left_finger_joint', "
        "'joint:right_finger_joint']"]},
    'reach': {'unnorm_key': 'sim_reach', 'rate': 10.0, 'params': OFT_PARAMS},
}


def vla_node_argv(model, unnorm_key, rate, params, remaps=()):
    """
    Return vla_node's command on ``model`` at ``rate`` Hz with ``params`` (``NAME:=VALUE``).

    ``unnorm_key`` '' leaves the key to the checkpoint (its only one): rcl refuses an empty -p.
    """
    return node_argv('vla_node', f'model_path:={model}',
                     *([f'unnorm_key:={unnorm_key}'] if unnorm_key else []),
                     f'control_rate_hz:={float(rate)}', *params, remaps=remaps)


def node_params(policy, model):
    """Return vla_node's parameters of ``policy`` on sim_arm (reach's state: ``model``'s)."""
    params = list(POLICIES[policy]['params'])
    if policy == 'reach':
        params.append(list_param('proprio', run_proprio(model)))
    return params


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=20.0, help='how long the loop runs')
    parser.add_argument('--robot', choices=('gripper', 'aloha'), default='gripper',
                        help="sim_arm's robot: gripper (default) or aloha (the bimanual ViperX, "
                        'the OpenVLA-OFT ALOHA miniature at 25 Hz, config/aloha.yaml)')
    parser.add_argument('--policy', choices=sorted(POLICIES),
                        help='the miniature policy to run (or the kind of --model): reach (the '
                        'trained one, default), openvla_oft or openvla (random weights); with '
                        '--robot aloha only openvla_oft')
    parser.add_argument('--seed', type=int, default=0, help="sim_arm's episode: the objects' "
                        'places and the one to reach')
    parser.add_argument('--rate', type=float, help='control_rate_hz of vla_node (default: 5 '
                        'for openvla, 10 for the OFT policies)')
    parser.add_argument('--chunk-mode', default='open_loop',
                        choices=('open_loop', 'receding', 'ensemble'),
                        help='how vla_node executes chunks (the OFT policies)')
    parser.add_argument('--model', help='checkpoint directory (default: a miniature one)')
    parser.add_argument('--unnorm-key', help="default: the miniature checkpoint's key")
    parser.add_argument('--instruction', help="default: the episode's, from sim/task")
    parser.add_argument('--out', default='out/demo', help='logs, frames, plot, checkpoint')
    parser.add_argument('--print-proprio', action='store_true',
                        help="print the trained reach policy's state layout (its run record's; "
                        "--model's with --model) and exit: `make demo-policy` trains with it")
    args = parser.parse_args(argv)
    if args.robot == 'aloha':
        if args.policy not in (None, 'openvla_oft'):
            parser.error('--robot aloha runs an openvla_oft policy (platform aloha)')
        from vla_ros.closed_loop.demo_aloha import RATE, UNNORM_KEY
        args.policy, args.rate = 'openvla_oft', args.rate or RATE
        # a real --model's only key, or the one named; the miniature's
        args.unnorm_key = args.unnorm_key or ('' if args.model else UNNORM_KEY)
        return args
    args.policy = args.policy or 'reach'
    preset = POLICIES[args.policy]
    args.rate = preset['rate'] if args.rate is None else args.rate
    args.unnorm_key = args.unnorm_key or preset['unnorm_key']
    return args


def summarize(obs, args, out):
    """Print the figures a user wants from a run; return True when commands flowed."""
    vla = next((v for k, v in obs.status.items() if k.startswith('vla_node')), {})
    bridge = next((v for k, v in obs.status.items() if k.startswith('arm_bridge')), {})
    sim = next((v for k, v in obs.status.items() if k.startswith('sim_arm')), {})
    times = [t for t, *_ in obs.path]
    moving = sum(1 for t in obs.twists
                 if abs(t.twist.linear.x) + abs(t.twist.linear.y) + abs(t.twist.linear.z) > 0)
    print(f'\n== {args.seconds:.0f} s closed loop: sim_arm -> vla_node -> arm_bridge -> sim_arm')
    print(f'vla_node   {args.policy}: actions: {len(obs.deltas)}, achieved '
          f'{vla.get("achieved_rate_hz", "?")} Hz (target {args.rate}); chunks '
          f'{vla.get("chunks", "?")} ({vla.get("chunks_per_s", "?")} /s); inference p50 '
          f'{vla.get("inference_latency_p50_ms", "?")} ms, p95 '
          f'{vla.get("inference_latency_p95_ms", "?")} ms; skipped '
          f'{vla.get("ticks_skipped", "?")}, stale {vla.get("ticks_stale", "?")}, skewed '
          f'{vla.get("ticks_skewed", "?")}, bad state {vla.get("ticks_bad_state", "?")}, '
          f'invalid {vla.get("invalid_actions", "?")}')
    if obs.latencies:
        p50, p95 = np.percentile(np.array(obs.latencies) * 1e3, [50, 95])
        print(f'latency    image stamp -> vla/ee_delta: p50 {p50:.1f} ms, p95 {p95:.1f} ms')
    print(f'arm_bridge stream {bridge.get("stream_rate_hz", "?")} Hz, {len(obs.twists)} twists '
          f'({moving} moving); accepted {bridge.get("accepted", "?")}; clamped: translation '
          f'{bridge.get("clamped_translation", "?")}, rotation '
          f'{bridge.get("clamped_rotation", "?")}, box {bridge.get("clamped_box", "?")}; '
          f'dropped stale {bridge.get("dropped_stale", "?")}')
    print(f'sim_arm    camera {sim.get("camera_rate_hz", "?")} Hz, real-time factor '
          f'{sim.get("real_time_factor", "?")}')
    task = obs.task
    across, above = task.get('fingertip_distance', (float('nan'), float('nan')))
    outcome = (f'succeeded after {task["time_to_success"]:.1f} s' if task.get('success')
               else f'not reached (fingertips {across * 100:.1f} cm across, {above * 100:+.1f} '
               f"cm above the object's top; success: {REACH_REGION})")
    print(f'task       {task.get("task", "?")}, seed {task.get("seed", "?")}: '
          f'{task.get("instruction", "?")!r} {outcome}')
    if len(obs.path) > 1:
        start, end = np.array(obs.path[0][1:]), np.array(obs.path[-1][1:])
        print(f'end effector moved {np.linalg.norm(end - start) * 100:.1f} cm over '
              f'{times[-1] - times[0]:.1f} s; path plot: {out / "ee_path.png"}')
        plot_path(obs.path, out / 'ee_path.png')
    return bool(obs.deltas) and moving > 0


def write_miniature(policy, out):
    """Write the checkpoint of a miniature ``policy`` under ``out`` once; return its folder."""
    model = out / {'reach': 'reach-policy', 'openvla_oft': 'tiny-oft-checkpoint',
                   'openvla': 'tiny-checkpoint'}[policy]
    from vla_ros.training.options import RUN_FILE, STATE_DIR
    # the reach policy's run record came in later: a folder written before it is written again
    if (model / 'model.safetensors').exists() and (
            policy != 'reach' or (model / STATE_DIR / RUN_FILE).is_file()):
        return model
    if policy == 'reach':
        from vla_ros.training.demo_policy import write_demo_policy
        print(f'writing the trained reach policy to {model}')
        return write_demo_policy(model, force=True)
    from vla_ros.policy.tiny import write_tiny_checkpoint, write_tiny_oft_checkpoint
    print(f'writing a miniature random-weight {policy} checkpoint to {model}')
    if policy == 'openvla_oft':
        return write_tiny_oft_checkpoint(model, 'libero', seed=0, force=True)
    return write_tiny_checkpoint(model, seed=0, force=True)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.print_proprio:  # the one line `make demo-policy` reads
        print(' '.join(run_proprio(args.model)))
        return 0
    stop_like_ctrl_c()  # a kill stops the nodes too
    if args.robot == 'aloha':
        from vla_ros.closed_loop.demo_aloha import run
        return run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = write_miniature(args.policy, out)
    try:
        vla_params = node_params(args.policy, model) + (
            [f'chunk_mode:={args.chunk_mode}'] if args.policy != 'openvla' else [])
    except ValueError as exc:
        print(f'demo: error: {exc}', file=sys.stderr)
        return 2
    print(f'starting sim_arm, vla_node (model {model}, {args.rate} Hz) and arm_bridge; logs in '
          f'{out}/')
    procs = {
        'sim_arm': start(node_argv('sim_arm', 'task:=reach', f'seed:={args.seed}'),
                         out / 'sim_arm.log'),
        'vla_node': start(vla_node_argv(model, args.unnorm_key, args.rate, vla_params),
                          out / 'vla_node.log'),
        'arm_bridge': start(node_argv('arm_bridge'), out / 'arm_bridge.log'),
    }
    obs = Observer()
    ok = False
    try:
        deadline = time.monotonic() + 120.0
        while (obs.instruction.get_subscription_count() == 0 or not obs.frames
               or 'instruction' not in obs.task):
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                print(f'{", ".join(dead) or "vla_node"} did not start; see the logs in {out}/',
                      file=sys.stderr)
                return 1
            time.sleep(0.1)
        save_frame(obs.frames[-1], out / 'frame_start.png')
        instruction = args.instruction or obs.task['instruction']
        print(f'sending instruction: {instruction!r}')
        obs.instruction.publish(String(data=instruction))
        end = time.monotonic() + args.seconds
        saved_middle = False
        while time.monotonic() < end:
            time.sleep(0.5)
            if not saved_middle and time.monotonic() > end - args.seconds / 2:
                save_frame(obs.frames[-1], out / 'frame_middle.png')
                saved_middle = True
            pose = np.round(obs.path[-1][1:], 3) if obs.path else '-'
            print(f'  t={args.seconds - (end - time.monotonic()):5.1f} s  actions '
                  f'{len(obs.deltas):4d}  ee {pose}', flush=True)
        save_frame(obs.frames[-1], out / 'frame_end.png')
        wrist = ''
        if obs.wrist_frames:
            save_frame(obs.wrist_frames[-1], out / 'wrist_end.png')
            wrist = ', wrist_end.png'
        ok = summarize(obs, args, out)
        print(f'camera frames: {out}/frame_start.png, frame_middle.png, frame_end.png{wrist}')
    finally:
        obs.close()
        codes = {name: stop(proc) for name, proc in procs.items()}
        print('stopped: ' + ', '.join(f'{k} exit {v}' for k, v in codes.items()))
    if not ok:
        print('no motion commands flowed through the loop; see the logs', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
