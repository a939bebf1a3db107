"""
Benchmark vla_node's control loop on this machine (a script, not a test).

    python -m vla_ros.bench.node [--seconds 60] [--rate 10]

1. Per-tick overhead excluding the forward pass, in-process: image conversion, the policy's
   preprocessing, building the three output messages and publishing them, for 640x480 rgb8 and
   1280x720 bgr8 (goal: p50 <= 2 ms).
2. Period error of the fixed-rate loop: vla_node runs as its own process on a miniature
   checkpoint with a 20 Hz camera for ``--seconds``; its /diagnostics report the tick interval
   error p50/p99 and the missed ticks (goal: p99 <= 2 ms, 0 missed).
"""

import argparse
import json
from pathlib import Path
import sys
import tempfile
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from vla_ros.control.formats import image_to_rgb
from vla_ros.nodes import diagnostics, messages, qos
from vla_ros.nodes.demo import executable, start, stop
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


def period_error(model, seconds, rate, out):
    """Run vla_node + a camera for ``seconds``; return its last diagnostics values."""
    node = start([executable('vla_node'), '--ros-args', '-p', f'model_path:={model}',
                  '-p', 'unnorm_key:=synth_bridge', '-p', f'control_rate_hz:={rate}',
                  '-p', 'instruction:=pick up the red cup'], out / 'vla_node.log')
    camera = start([executable('camera_stream'), '--rate', '20'],
                   out / 'camera.log')
    client = rclpy.create_node('bench_period')
    latest = {}

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.endswith('control loop'):
                latest.update(diagnostics.values_of(status))
    client.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, RELIABLE)
    probe = client.create_publisher(String, 'vla/instruction', RELIABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        deadline = time.monotonic() + 120.0
        while probe.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # let the loop settle, then measure a fresh window
        start_counts = dict(latest)
        time.sleep(seconds)
        return start_counts, dict(latest)
    finally:
        executor.shutdown()
        client.destroy_node()
        stop(camera)
        stop(node)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=60.0)
    parser.add_argument('--rate', type=float, default=10.0)
    parser.add_argument('--json', help='write the figures to this file')
    args = parser.parse_args(argv)
    from vla_ros.policy.loading import load_policy
    from vla_ros.policy.tiny import write_tiny_checkpoint
    rclpy.init()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_checkpoint(Path(tmp) / 'tiny', seed=0)
        policy, _ = load_policy(model, unnorm_key='synth_bridge', device='cpu', dtype='float32')
        print('per-tick overhead excluding the forward pass (ms; goal p50 <= 2)')
        print(f'{"frame":<16}{"part":<12}{"p50":>8}{"p95":>8}{"p99":>8}')
        for label, parts in tick_overhead(policy):
            for name, samples in parts.items():
                p50, p95, p99 = percentiles(samples)
                print(f'{label:<16}{name:<12}{p50:8.3f}{p95:8.3f}{p99:8.3f}')
                results[f'overhead/{label}/{name}_p50_ms'] = p50
        before, after = period_error(model, args.seconds, args.rate, Path(tmp))
    rclpy.try_shutdown()
    missed = int(after.get('ticks_missed', -1)) - int(before.get('ticks_missed', 0))
    skipped = int(after.get('ticks_skipped', -1)) - int(before.get('ticks_skipped', 0))
    print(f'\nvla_node at {args.rate} Hz for {args.seconds:.0f} s, miniature model, 20 Hz camera:')
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
