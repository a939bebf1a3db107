"""
vla_eval: offline evaluation of an OpenVLA or OpenVLA-OFT checkpoint on rosbag2 recordings.

    vla_eval BAG [BAG ...] --model PATH [--unnorm-key K] [--image-topic T] [--compressed]
             [--instruction-topic T | --instruction TEXT] [--reference action|ee_pose|none]
             [--rate HZ] --out DIR [--write-bag] ...
    vla_eval BAG ... --model PATH --policy openvla_oft --platform libero
             --camera-topics FRONT WRIST --proprio ee_position ee_axis_angle joint:L joint:R
             [--chunk-mode open_loop|receding|ensemble] [--execute-steps N] --out DIR

The cameras, state, chunk and age options have vla_node's parameter names and defaults, and the
steps are decided by the node's own control core (``evaluate``), so a bag evaluated here with the
node's configuration gives what the node publishes on the same inputs.

Every bag is checked before the model loads, so bad input fails in a second with one line,
``vla_eval: error: ...`` naming the problem and the fix, and exit status 2.

Scale: ``accelerate launch --num_processes N -m vla_ros.evaluation.cli BAG ... --out DIR`` (or the
``vla_eval`` script path) splits the bags across the processes (GPUs, machines), each rank
evaluates its share, and rank 0 gathers the per-step records and writes every output; the
metrics equal a single-process run's. ``accelerate launch`` starts several processes through
torchrun only with ``--multi_gpu`` (on a CPU-only machine too; vla_eval then runs on CPU with
gloo), or with ``--cpu --mpirun_hostfile``; ``--cpu`` alone starts one process. With several CPU
processes on one machine and no ``OMP_NUM_THREADS``, each process gets cores / local processes
torch threads, so they do not oversubscribe the CPU (accelerate and torchrun set
``OMP_NUM_THREADS=1`` by default). A plain run is one process with no distributed setup.
"""

import argparse
import contextlib
import json
import math
import os
from pathlib import Path
import sys

from vla_ros.control.action_layout import ACTION_DIM
from vla_ros.control.chunks import MODES
from vla_ros.evaluation.evaluate import (check_bag, check_policy, EvalError, EvalOptions,
                                         evaluate_bag, REFERENCES)
from vla_ros.recordings.bags import Bag, RecordingError, topic_name
from vla_ros.recordings.options import add_data_arguments, data_fields

PROG = 'vla_eval'
POLICIES = ('openvla', 'openvla_oft')
USAGE = ('%(prog)s BAG [BAG ...] --model PATH [--unnorm-key K]\n'
         '       [--image-topic T | --camera-topics T [T ...]] [--compressed]\n'
         '       [--instruction-topic T | --instruction TEXT] [--reference action|ee_pose|none]\n'
         '       [--rate HZ] --out DIR [--write-bag] [--device D] [--dtype D] [--center-crop]\n'
         '       [--quantization 8bit|4bit] [--policy openvla|openvla_oft] [--platform P]\n'
         '       [--action-head H] [--chunk-mode M] [--execute-steps N] [--ensemble-decay K]\n'
         '       [--proprio ENTRY [ENTRY ...]] [--ee-pose-topic T] [--joint-states-topic T]\n'
         '       [--action-topic T] [--gripper-topic T] [--max-image-age S]\n'
         '       [--max-camera-skew S] [--max-proprio-age S]')


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, usage=USAGE,
        description='Evaluate an OpenVLA or OpenVLA-OFT checkpoint offline on rosbag2 '
        'recordings (sqlite3 or MCAP) with the same conversions, preprocessing, policy and '
        'control core as vla_node. Writes DIR/metrics.json, DIR/<bag>.png and DIR/summary.md.',
        epilog='Steps run at --rate on bag log time from the first to the last image of the '
        'primary camera; each uses the newest image of every camera, state and instruction '
        'logged at or before it, as vla_node does under `ros2 bag play --clock`. Offline the '
        'model takes no time: each prediction is committed at its step (latency 0). '
        'Exit status: 0 ok, 2 bad input.')
    parser.add_argument('bags', nargs='+', metavar='BAG',
                        help='rosbag2 directory (or a .db3/.mcap file)')
    parser.add_argument('--model', required=True, metavar='PATH',
                        help='local OpenVLA (HF format) or OpenVLA-OFT checkpoint directory')
    parser.add_argument('--unnorm-key', default='', metavar='K',
                        help='dataset statistics to unnormalise with (needed when the '
                        'checkpoint has several)')
    add_data_arguments(parser)
    parser.add_argument('--reference', choices=REFERENCES, default='action',
                        help='reference actions: a recorded --action-topic (default), ee_pose '
                        'relabelled BridgeData-style (needs --gripper-topic), or none')
    parser.add_argument('--out', required=True, metavar='DIR', help='output directory')
    parser.add_argument('--write-bag', action='store_true',
                        help="also write DIR/predictions_<bag>/: the predictions on vla_node's "
                        'topics (vla/ee_delta, vla/gripper, vla/action, vla/action_chunk) for '
                        '`ros2 bag play`')
    parser.add_argument('--device', default='auto', metavar='D',
                        help="'auto' (each process's CUDA device, else CPU), 'cpu', 'cuda:N'")
    parser.add_argument('--dtype', default='auto', metavar='D',
                        help="'auto' (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, "
                        'float16')
    parser.add_argument('--quantization', choices=('8bit', '4bit'), default=None,
                        help='bitsandbytes weight quantization (CUDA only), as the '
                        'quantization parameter of vla_node')
    parser.add_argument('--center-crop', action='store_true',
                        help='the 0.9-area center crop of fine-tunes trained with augmentation')
    parser.add_argument('--gripper-topic', default='', metavar='T',
                        help='std_msgs/Float64 gripper state, 1 = open (for --reference ee_pose)')
    parser.add_argument('--policy', choices=POLICIES, default='openvla',
                        help='the policy family (default openvla)')
    parser.add_argument('--platform', choices=('libero', 'aloha', 'bridge'), default='libero',
                        help='OpenVLA-OFT: the constants preset (default libero)')
    parser.add_argument('--action-head', choices=('auto', 'l1', 'discrete'), default='auto',
                        help='OpenVLA-OFT: the action head (default auto)')
    parser.add_argument('--chunk-mode', choices=MODES, default='open_loop',
                        help="how chunks are executed, as vla_node's chunk_mode (default "
                        'open_loop)')
    parser.add_argument('--execute-steps', type=int, default=0, metavar='N',
                        help='actions of each chunk to execute; 0 = the whole chunk (default)')
    parser.add_argument('--ensemble-decay', type=float, default=0.01, metavar='K',
                        help='ensemble: weight exp(-K * j) of the j-th oldest chunk (default '
                        '0.01)')
    parser.add_argument('--max-image-age', type=float, default=0.5, metavar='S',
                        help='as vla_node: a step whose image header stamp is older than this '
                        '(bag time) is stale, not predicted; 0 turns the age checks off '
                        '(default 0.5)')
    parser.add_argument('--max-camera-skew', type=float, default=0.05, metavar='S',
                        help='as vla_node: a step whose cameras are stamped further apart is '
                        'skewed, not predicted (default 0.05; inf turns the check off)')
    parser.add_argument('--max-proprio-age', type=float, default=0.2, metavar='S',
                        help='as vla_node: a step whose state is older is stale (default 0.2; '
                        '0 turns the check off)')
    return parser


def options_from_args(args):
    """Validate the arguments that argparse cannot and return ``EvalOptions``."""
    if not (math.isfinite(args.max_image_age) and args.max_image_age >= 0):
        raise EvalError(f'--max-image-age {args.max_image_age} must be >= 0 s (0: no check)')
    if args.reference == 'ee_pose' and not args.gripper_topic:
        raise EvalError('--reference ee_pose needs the gripper state: pass --gripper-topic T '
                        '(std_msgs/Float64, 1 = open)')
    if not (math.isfinite(args.max_proprio_age) and args.max_proprio_age >= 0):
        raise EvalError(f'--max-proprio-age {args.max_proprio_age} must be >= 0 s (0: no '
                        'check)')
    return EvalOptions(
        **data_fields(args), reference=args.reference,
        gripper_topic=topic_name(args.gripper_topic) if args.gripper_topic else '',
        max_image_age=args.max_image_age, max_camera_skew=args.max_camera_skew,
        max_proprio_age=args.max_proprio_age, chunk_mode=args.chunk_mode,
        execute_steps=args.execute_steps, ensemble_decay=args.ensemble_decay)


def bag_names(paths):
    """Return unique output names for the bags: the directory name, then _2, _3 on clashes."""
    names, seen = [], set()
    for path in paths:
        base = path.stem if path.is_file() else path.resolve().name
        name, n = base, 1
        while name in seen:
            n += 1
            name = f'{base}_{n}'
        seen.add(name)
        names.append(name)
    return names


def _process_state(device):
    """Return accelerate's PartialState (one plain process unless started by a launcher)."""
    from accelerate import PartialState
    import torch

    use_cpu = os.environ.get('ACCELERATE_USE_CPU', '').lower() in ('1', 'true', 'yes')
    cpu = use_cpu or device == 'cpu' or (device == 'auto' and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.num_processes > 1 and state.device.type == 'cpu' and 'OMP_NUM_THREADS' not in \
            os.environ:
        local = int(os.environ.get('LOCAL_WORLD_SIZE', state.num_processes))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))
    return state


def _load_policy(args, device):
    from vla_ros.policy import PolicyError
    from vla_ros.policy.loading import load_policy

    # The function and arguments vla_node loads with, so the policy is the one the node runs.
    try:
        return load_policy(args.model, args.policy, args.unnorm_key, device, args.dtype,
                           args.center_crop, args.quantization, args.platform, args.action_head)
    except PolicyError as exc:
        raise EvalError(f'cannot load --model {args.model!r}: {exc}') from None


def run(args):
    """Check every bag, load the policy, evaluate this process's bags, write (rank 0)."""
    from vla_ros.evaluation.report import check_outputs, prepare_out_dir

    options = options_from_args(args)
    out_dir = prepare_out_dir(args.out)
    paths = [Path(p) for p in args.bags]
    with contextlib.ExitStack() as opened:  # each bag is opened once: checked, then evaluated
        bags = []
        for path in paths:
            bags.append(opened.enter_context(Bag(path)))
            check_bag(bags[-1], options)
        names = bag_names(paths)
        check_outputs(out_dir, names, args.write_bag)  # nothing the run needs fails after it
        return _run(args, options, out_dir, bags, names)


def _run(args, options, out_dir, bags, names):
    from vla_ros.evaluation.report import write_outputs

    state = _process_state(args.device)
    device = str(state.device) if args.device == 'auto' and state.num_processes > 1 \
        else args.device
    policy, key = _load_policy(args, device)  # warmed up, as vla_node's
    check_policy(policy, options)
    if args.write_bag and policy.action_dim != ACTION_DIM:
        raise EvalError(f'--write-bag writes end-effector deltas (vla/ee_delta, vla/gripper); '
                        f'the policy predicts {policy.action_dim}-D joint positions: drop '
                        '--write-bag (metrics.json and the plots hold the predictions)')
    rank = f'[{state.process_index}/{state.num_processes}] ' if state.num_processes > 1 else ''
    payloads = []
    with state.split_between_processes(list(range(len(bags)))) as mine:
        for i in sorted(set(range(len(bags))) - set(mine)):
            bags[i].close()  # another process evaluates it
        if state.num_processes > 1:
            print(f'{PROG}: process {state.process_index}/{state.num_processes} on '
                  f'{policy.device}: bags {", ".join(names[i] for i in mine) or "none"}',
                  file=sys.stderr, flush=True)
        for i in mine:
            try:
                result = evaluate_bag(bags[i], policy, key, options, name=names[i],
                                      desc=f'{rank}{names[i]}')
                payloads.append(json.dumps({'index': i, 'result': result.to_json()}))
            except (EvalError, RecordingError) as exc:
                payloads.append(json.dumps({'index': i, 'error': str(exc)}))
            finally:
                bags[i].close()
    if state.num_processes > 1:
        from accelerate.utils import gather_object
        payloads = gather_object(payloads)  # JSON text only crosses the process boundary
    records = sorted((json.loads(p) for p in payloads), key=lambda p: p['index'])
    errors = [r['error'] for r in records if 'error' in r]
    status = 2 if errors else 0
    if state.is_main_process:
        if errors:
            for error in errors:
                print(f'{PROG}: error: {error}', file=sys.stderr)
        else:
            try:
                problems = _write(args, options, policy, key, records, out_dir, write_outputs)
            except EvalError as exc:  # reported here, so the other ranks still finish below
                problems = [str(exc)]
            for problem in problems:
                print(f'{PROG}: error: {problem}', file=sys.stderr)
            status = 2 if problems else 0
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()
    return status


def action_names_of(policy, args):
    """Return a name per action dimension: the deltas', a joint platform's entries, or a0 ..."""
    from vla_ros.control.joints import PRESETS
    joints = PRESETS.get(args.platform) if args.policy == 'openvla_oft' else None
    if policy.action_dim != ACTION_DIM and joints and len(joints) == policy.action_dim:
        return joints
    return policy.action_labels


def _write(args, options, policy, key, records, out_dir, write_outputs):
    import numpy as np

    from vla_ros.evaluation.evaluate import BagResult

    results = [BagResult.from_json(r['result']) for r in records]
    stats = policy.config.action_stats(key)
    action_range = np.asarray(stats['q99'], np.float64) - np.asarray(stats['q01'], np.float64)
    config = {
        'model': str(args.model), 'unnorm_key': key, 'dtype': str(policy.dtype).split('.')[-1],
        'quantization': args.quantization,
        'center_crop': bool(args.center_crop), 'image_topic': options.cameras()[0],
        'camera_topics': list(options.cameras()),
        'transport': 'compressed' if options.compressed else 'raw',
        'policy': args.policy, 'platform': args.platform if args.policy == 'openvla_oft' else None,
        'action_head': policy.head_kind,
        'chunk_len': policy.chunk_len, 'chunk_mode': options.chunk_mode,
        'execute_steps': options.execute_steps, 'ensemble_decay': options.ensemble_decay,
        'proprio': list(options.proprio), 'action_frame': options.action_frame,
        'state_topics': {
            role: topic for role, topic in options.topics().items()
            if role in ('pose', 'joints')},
        'max_camera_skew_s': options.max_camera_skew,
        'max_proprio_age_s': options.max_proprio_age,
        'latency': 'none: each prediction is committed at its step time',
        'instruction': options.instruction or None,
        'instruction_topic': None if options.instruction else options.instruction_topic,
        'reference': options.reference, 'reference_topics': {
            role: topic for role, topic in options.topics().items()
            if role in ('action', 'ee_pose', 'gripper')},
        'rate_hz': options.rate, 'max_image_age_s': options.max_image_age,
        'action_range': action_range.tolist(), 'step_time': 'bag log time',
        'action_names': list(action_names_of(policy, args)),
        'bags': [r.path for r in results],
    }
    data, written = write_outputs(out_dir, results, action_range, config,
                                  write_bag=args.write_bag)
    overall = data['overall']
    print(f"{PROG}: {len(results)} bag(s), {overall['counts']['steps']} steps, "
          f"{overall['counts']['predicted']} predicted, {overall['metrics']['steps_compared']} "
          f'compared; wrote {out_dir / "metrics.json"}, {out_dir / "summary.md"} and '
          f'{len(results)} plot(s)')
    chunks = {r.name: r.counts()['chunks'] for r in results}
    for name, count in written.items():
        print(f'{PROG}: wrote {out_dir / ("predictions_" + name)} ({count} actions, '
              f'{chunks[name]} chunks)')
    for result in results:
        counts = result.counts()
        refused = counts['bad_image']
        if refused:
            print(f'{PROG}: bag {result.name}: the image of {refused} of {len(result.status)} '
                  f'steps was refused: {result.bad_image_reason}', file=sys.stderr)
        for status in ('skewed', 'bad_state'):
            if counts[status]:
                print(f'{PROG}: bag {result.name}: {counts[status]} of {len(result.status)} '
                      f'steps {status.replace("_", " ")}, the first: '
                      f'{result.reasons.get(status, "")}', file=sys.stderr)
    return not_a_result(data, options, results)


def not_a_result(data, options, results):
    """Return why the metrics measure nothing (nothing predicted or compared), or []."""
    counts, metrics = data['overall']['counts'], data['overall']['metrics']
    if counts['predicted'] == 0:
        reasons = {}
        for result in results:
            for status, detail in result.reasons.items():
                reasons.setdefault(status, detail)
        first = '; '.join(f'first {status}: {detail}' for status, detail in reasons.items()
                          if status in ('stale', 'future', 'skewed', 'bad_state'))
        return [f"nothing was predicted in {counts['steps']} steps: {counts['idle']} idle (no "
                f"instruction), {counts['stale'] + counts['future']} with a stale or future "
                f'image or state (--max-image-age {options.max_image_age:g} s, '
                f"--max-proprio-age {options.max_proprio_age:g} s), {counts['skewed']} with "
                f'cameras skewed (--max-camera-skew {options.max_camera_skew:g} s), '
                f"{counts['bad_state']} without a usable state, {counts['bad_image']} with "
                f"a refused image, {counts['bad_instructions']} refused instructions"
                f"{' (' + first + ')' if first else ''}; metrics of nothing are not a result: "
                'fix the recording or the options above']
    if options.reference == 'none' or metrics['steps_compared'] > 0:
        return []
    messages = sum(r.reference_messages for r in results)
    valid = counts['predicted'] - counts['invalid']
    if options.reference == 'action':
        where = (f"{options.topics()['action']} has {messages} message(s); a step's reference is "
                 "the first one logged in [its image's log time, the next step's time) that "
                 "is not an earlier step's or logged with a newer image")
        fix = 'check --action-topic and --rate, or pass --reference ee_pose or none'
    else:
        where = (f"{options.topics()['ee_pose']} and {options.topics()['gripper']} have "
                 f"{messages} message(s); a step's reference needs a pose at it and at the next "
                 'step, and a gripper state')
        fix = 'check --ee-pose-topic, --gripper-topic and --rate, or pass --reference none'
    return [f'no step could be compared with a reference: {where}; {counts["predicted"]} steps '
            f'were predicted, {valid} of them valid, {counts["no_reference"]} without a '
            f'reference; {fix}']


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (EvalError, RecordingError) as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
