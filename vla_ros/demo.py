"""
The README's main job: vla_node on a miniature checkpoint, fed by a synthetic camera.

    python -m vla_ros.demo [--seconds 8] [--rate 5] [--model PATH --unnorm-key KEY]

It writes a miniature random-weight checkpoint (unless ``--model`` names a real one), starts
``vla_node`` and a test camera stream as their own processes, sends an instruction over
``vla/instruction`` as ``ros2 topic pub`` would, prints the actions as they arrive and the achieved
rate, then stops everything. The miniature model's actions are random numbers with the right
shape and range: the demo shows the plumbing, not a skill.
"""

import argparse
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray, String

from vla_ros import diagnostics

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def executable(name):
    """Return the path of an installed console script (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def start(argv, log_path):
    log = open(log_path, 'wb')
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def stop(proc, timeout=10.0):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=8.0, help='how long to run')
    parser.add_argument('--rate', type=float, default=5.0, help='control_rate_hz of vla_node')
    parser.add_argument('--model', help='checkpoint directory (default: a miniature one)')
    parser.add_argument('--unnorm-key', default='synth_bridge')
    parser.add_argument('--instruction', default='pick up the red cup')
    parser.add_argument('--out', default='out/demo', help='logs and the miniature checkpoint')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from vla_ros.policy.tiny import write_tiny_checkpoint
        model = out / 'tiny-checkpoint'
        if not (model / 'model.safetensors').exists():
            print(f'writing a miniature random-weight checkpoint to {model}')
            write_tiny_checkpoint(model, seed=0)
    print(f'starting vla_node (model {model}, {args.rate} Hz) and a 20 Hz test camera; logs in '
          f'{out}/')
    node = start([executable('vla_node'), '--ros-args', '-p', f'model_path:={model}',
                  '-p', f'unnorm_key:={args.unnorm_key}', '-p', f'control_rate_hz:={args.rate}'],
                 out / 'vla_node.log')
    camera = start([sys.executable, '-m', 'vla_ros.camera_stream', '--rate', '20'],
                   out / 'camera_stream.log')
    rclpy.init()
    client = rclpy.create_node('vla_demo')
    received, diags = [], []
    client.create_subscription(Float64MultiArray, 'vla/action',
                               lambda m: received.append((time.monotonic(), m)), RELIABLE)
    client.create_subscription(DiagnosticArray, '/diagnostics', diags.append, RELIABLE)
    publisher = client.create_publisher(String, 'vla/instruction', RELIABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    threading.Thread(target=executor.spin, daemon=True).start()
    code = 0
    try:
        deadline = time.monotonic() + 120.0
        while publisher.get_subscription_count() == 0:
            if node.poll() is not None or time.monotonic() > deadline:
                print(f'vla_node did not start; see {out}/vla_node.log', file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f'sending instruction: {args.instruction!r}')
        publisher.publish(String(data=args.instruction))
        end = time.monotonic() + args.seconds
        shown = 0
        print('      t (s)      dx       dy       dz     droll   dpitch    dyaw   gripper')
        while time.monotonic() < end:
            time.sleep(0.05)
            for t, msg in received[shown:]:
                print(f'{t - received[0][0]:10.2f} ' + ' '.join(f'{v:8.4f}' for v in msg.data))
            shown = len(received)
        times = [t for t, _ in received]
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        print(f'{len(received)} actions in {args.seconds:.1f} s; achieved {rate:.2f} Hz '
              f'(control_rate_hz {args.rate})')
        for msg in diags[-1:]:
            values = diagnostics.values_of(msg.status[0])
            print('vla_node diagnostics: ' + ', '.join(
                f'{k}={values[k]}' for k in ('achieved_rate_hz', 'inference_latency_p50_ms',
                                             'inference_latency_p95_ms', 'ticks_skipped',
                                             'ticks_stale', 'invalid_actions') if k in values))
        if not received:
            print('no actions arrived', file=sys.stderr)
            code = 1
    finally:
        executor.shutdown()
        client.destroy_node()
        rclpy.try_shutdown()
        stop(camera)
        node_code = stop(node)
        print(f'stopped (vla_node exit status {node_code})')
    return code


if __name__ == '__main__':
    sys.exit(main())
