"""
Benchmark: vla_eval's throughput (steps/s) against bare ``predict()`` on the same frames.

    python -m vla_ros.bench.eval [--model PATH --unnorm-key K] [--steps 40] [--width 640]
        [--height 480] [--transport raw|compressed] [--storage sqlite3|mcap]
        [--camera-rate HZ] [--repeats 3] [--json PATH]

A bag is written with ``--steps`` control steps of synthetic 640x480 frames
(``vla_ros.sim.scenes.scene``) and one instruction. *bare*: a loop of ``policy.predict`` over the
frames the steps use, already decoded in memory (the ideal). *vla_eval*: ``evaluate_bag`` on the
bag: read, deserialise, convert, predict, bookkeeping. The model is loaded and warm in both. The
runs alternate (bare, vla_eval, bare, ...) so machine load hits both alike; the medians and the
fastest runs are compared. Goal: vla_eval >= 90 % of bare. By default the camera runs at the
control rate (every frame is a step); a faster ``--camera-rate`` adds the cost of reading frames
no step uses.

Without ``--model`` the miniature checkpoint (``vla_tiny_model``) is written to a temporary
directory; its ``predict`` is fast (tens of ms on CPU), so the pipeline's overhead shows most.
"""

import argparse
import json
from pathlib import Path
import sys
import tempfile
import time

import numpy as np

INSTRUCTION = 'pick up the red cup'
NS = 1_000_000_000


def write_bench_bag(path, steps, rate, camera_rate, width, height, transport, storage):
    """Write the benchmark bag; return the frames (RGB) of the steps, in order."""
    from builtin_interfaces.msg import Time

    from vla_ros.control.images import compressed_to_rgb
    from vla_ros.nodes import messages
    from vla_ros.recordings.bags import BagWriter, typestore
    from vla_ros.sim.scenes import scene

    t0 = 1000 * NS
    n_frames = int(round((steps - 1) * camera_rate / rate)) + 1
    topic = '/camera/image_raw' + ('/compressed' if transport == 'compressed' else '')
    scenes = [scene(i, width, height) for i in range(8)]
    frames = []
    with BagWriter(path, storage) as writer:
        writer.write('/vla/instruction', t0, typestore().types['std_msgs/msg/String'](
            data=INSTRUCTION))
        for i in range(n_frames):
            log_ns = t0 + int(round(i * NS / camera_rate))
            stamp = Time(sec=log_ns // NS, nanosec=log_ns % NS)
            rgb = scenes[i % len(scenes)]
            if transport == 'compressed':
                msg = messages.rgb_to_compressed(rgb, 'jpeg', stamp=stamp)
                rgb = compressed_to_rgb(msg)  # the frame the policy will see
            else:
                msg = messages.rgb_to_image(rgb, 'rgb8', stamp=stamp)
            writer.write(topic, log_ns, msg)
            frames.append((log_ns, rgb))
    return frames


def run(args):
    from vla_ros.evaluation.evaluate import EvalOptions, evaluate_bag
    from vla_ros.policy.loading import load_policy

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from vla_ros.policy.tiny import write_tiny_checkpoint
            model = str(write_tiny_checkpoint(tmp / 'tiny', seed=0))
        frames = write_bench_bag(tmp / 'bag', args.steps, args.rate, args.camera_rate,
                                 args.width, args.height, args.transport, args.storage)
        period = NS / args.rate
        t0 = frames[0][0]
        # The frame each step uses: the newest at or before t0 + k / rate.
        times = np.array([t for t, _ in frames])
        used = [frames[int(np.searchsorted(times, t0 + round(k * period), 'right')) - 1][1]
                for k in range(args.steps)]
        policy, key = load_policy(model, unnorm_key=args.unnorm_key, device=args.device,
                                  dtype=args.dtype)
        options = EvalOptions(compressed=args.transport == 'compressed', reference='none',
                              rate=args.rate)
        bare_s, eval_s, bare_cpu, eval_cpu, in_predict = [], [], [], [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            for rgb in used:
                policy.predict(rgb, INSTRUCTION, unnorm_key=key)
            bare_s.append(time.perf_counter() - wall)
            bare_cpu.append(time.process_time() - cpu)
            wall, cpu = time.perf_counter(), time.process_time()
            result = evaluate_bag(tmp / 'bag', policy, key, options, progress=False)
            eval_s.append(time.perf_counter() - wall)
            eval_cpu.append(time.process_time() - cpu)
            in_predict.append(float(np.nansum(result.latency_s)))
            assert result.counts()['predicted'] == args.steps, result.counts()
    bare = args.steps / float(np.median(bare_s))
    evaluated = args.steps / float(np.median(eval_s))
    return {'steps': args.steps, 'frames': len(frames), 'width': args.width,
            'height': args.height, 'transport': args.transport, 'storage': args.storage,
            'device': str(policy.device), 'dtype': str(policy.dtype), 'repeats': args.repeats,
            'bare_steps_per_s': bare, 'vla_eval_steps_per_s': evaluated,
            'ratio': evaluated / bare,
            'overhead_ms_per_step': (float(np.median(eval_s)) - float(np.median(bare_s)))
            / args.steps * 1e3,
            # The fastest runs: the least disturbed by other load on a shared machine.
            'best_ratio': min(bare_s) / min(eval_s),
            # Time inside predict() / wall time of the same vla_eval run: the share of its
            # throughput left to the model, measured within one run, so load elsewhere hits the
            # numerator and the denominator alike.
            'predict_share': float(np.median(np.array(in_predict) / np.array(eval_s))),
            'overhead_outside_predict_ms_per_step': float(np.median(
                (np.array(eval_s) - np.array(in_predict)) / args.steps * 1e3)),
            # CPU seconds of this process (all threads): steadier than wall time on a busy box.
            'cpu_ratio': float(np.median(bare_cpu)) / float(np.median(eval_cpu)),
            'bare_s': bare_s, 'vla_eval_s': eval_s, 'bare_cpu_s': bare_cpu,
            'vla_eval_cpu_s': eval_cpu}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--model', default=None, help='checkpoint (default: a miniature one)')
    parser.add_argument('--unnorm-key', default='synth_bridge')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--dtype', default='auto')
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--rate', type=float, default=5.0, help='control rate, Hz')
    parser.add_argument('--camera-rate', type=float, default=None,
                        help='camera frames per second in the bag (default: --rate)')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--transport', choices=('raw', 'compressed'), default='raw')
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', default=None, help='also write the result to this file')
    args = parser.parse_args(argv)
    if args.camera_rate is None:
        args.camera_rate = args.rate
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    print(f"frames {result['width']}x{result['height']} {result['transport']} "
          f"({result['storage']}), {result['steps']} steps from {result['frames']} frames, "
          f"{result['device']} {result['dtype']}, median of {result['repeats']}")
    print(f"bare predict():  {result['bare_steps_per_s']:8.2f} steps/s")
    print(f"vla_eval:        {result['vla_eval_steps_per_s']:8.2f} steps/s")
    print(f"ratio:           {result['ratio'] * 100:8.1f} %  (goal >= 90 %), overhead "
          f"{result['overhead_ms_per_step']:.2f} ms/step")
    print(f"best-run ratio:  {result['best_ratio'] * 100:8.1f} %  (fastest bare / fastest "
          'vla_eval)')
    print(f"predict share:   {result['predict_share'] * 100:8.1f} %  of vla_eval's wall time is "
          f"inside predict(); {result['overhead_outside_predict_ms_per_step']:.2f} ms/step "
          'outside it')
    print(f"CPU-time ratio:  {result['cpu_ratio'] * 100:8.1f} %  (bare CPU s / vla_eval CPU s)")
    print('runs (wall s): bare ' + ' '.join(f'{v:.2f}' for v in result['bare_s'])
          + ' | vla_eval ' + ' '.join(f'{v:.2f}' for v in result['vla_eval_s']))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
