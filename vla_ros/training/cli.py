"""
vla_finetune: fine-tune an OpenVLA(-OFT) checkpoint on rosbag2 recordings with OFT's recipe.

    vla_finetune BAG [BAG ...] --base PATH --out DIR --unnorm-key NEW
                 --camera-topics FRONT WRIST --proprio ENTRY ... [--rate HZ]
                 [--val-bags BAG ... | --val-fraction F] [--steps N] [--batch-size B]
                 [--full | --lora-only] [--lora-rank R] [--resume] [--stats-only] ...

The bags are read with vla_eval's step semantics and data options (``recordings.options``: the
same flags, ``--camera-topics``, ``--proprio``, ``--rate``, the topic options), and the model
sees the policy's own preprocessing. Every check that needs no model runs first, so bad input
fails in a second with one line, ``vla_finetune: error: ...`` naming the problem and the fix,
exit status 2.

Data parallel: ``accelerate launch [--multi_gpu] [--num_processes N] -m vla_ros.training.cli
BAG ... --out DIR`` (``--batch-size`` is per process).
"""

import argparse
import math
from pathlib import Path
import random
import sys

from vla_ros.recordings.bags import RecordingError
from vla_ros.recordings.options import add_data_arguments, data_fields, DataOptions
from vla_ros.training.options import FinetuneError, LORA_TARGETS, TrainConfig

PROG = 'vla_finetune'
USAGE = ('%(prog)s BAG [BAG ...] --base PATH --out DIR --unnorm-key NEW\n'
         '       [--platform libero|bridge] [--camera-topics T [T ...]] [--compressed]\n'
         '       [--proprio ENTRY [ENTRY ...]] [--rate HZ] [--center-crop [--image-aug]]\n'
         '       [--aux-object W]\n'
         '       [--val-bags BAG [BAG ...] | --val-fraction F] [--steps N] [--batch-size B]\n'
         '       [--lr LR] [--warmup-steps N] [--decay-after N] [--full | --lora-only]\n'
         '       [--lora-rank R] [--lora-alpha A] [--lora-target all|llm] [--val-every N]\n'
         '       [--save-every N] [--resume] [--stats-only] [--seed S] [--device D]\n'
         '       [--read-workers N]\n'
         '       [topic options: --ee-pose-topic, --joint-states-topic, --instruction-topic,\n'
         '        --action-topic]')


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, usage=USAGE,
        description='Fine-tune an OpenVLA or OpenVLA-OFT checkpoint on rosbag2 recordings with '
        "OpenVLA-OFT's recipe (L1 regression head, proprio projector, LoRA on the backbone or "
        'full fine-tuning), and write the new dataset statistics under a new unnorm key. The '
        'output folder loads with OpenVLAOFTPolicy and vla_node as it is.',
        epilog='Samples: steps at --rate on bag log time; the newest frame of every camera and '
        'the newest state logged at or before each step; target = the recorded action of the '
        'step and of the next chunk_len - 1 steps. Exit status: 0 ok, 2 bad input.')
    parser.add_argument('bags', nargs='+', metavar='BAG',
                        help='rosbag2 directory (or .db3/.mcap file) of demonstrations')
    parser.add_argument('--base', '--model', dest='base', required=True, metavar='PATH',
                        help='the checkpoint to start from (OpenVLA-OFT, or OpenVLA: new heads)')
    parser.add_argument('--out', required=True, metavar='DIR',
                        help='output checkpoint directory (new or empty, unless --resume)')
    parser.add_argument('--unnorm-key', required=True, metavar='NEW',
                        help="the new dataset statistics' key (not one the base has)")
    parser.add_argument('--platform', choices=('libero', 'bridge', 'aloha'), default='libero',
                        help="OFT's constants preset: chunk length, action and state size, "
                        'images (default libero: 8, 7, 8, 2)')
    data = parser.add_argument_group('data (as vla_eval and vla_node)')
    add_data_arguments(data, training=True)
    data.add_argument('--center-crop', action='store_true',
                      help="the policy's 0.9-area center crop (then run vla_node with "
                      'center_crop true too)')
    data.add_argument('--image-aug', action='store_true',
                      help="OFT's training augmentation, fresh at every draw of a training "
                      'sample: a random square crop of 0.9 of the area resized back to 224, then '
                      'random brightness, contrast, saturation and hue (needs --center-crop)')
    data.add_argument('--aux-object', type=float, default=0.0, metavar='W',
                      help="also train a head that regresses the named object's position "
                      "(the simulator's sim/task, in every training bag) from the action "
                      'slots, its L1 loss weighted W (default 0: off); the policy never runs '
                      'that head')
    data.add_argument('--val-bags', nargs='+', default=[], metavar='BAG',
                      help='held-out bags for the validation L1')
    data.add_argument('--val-fraction', type=float, default=0.0, metavar='F',
                      help='hold out this fraction of the bags (seeded by --seed; at least one '
                      'when F > 0) instead of --val-bags (default 0: no validation)')
    train = parser.add_argument_group('training')
    train.add_argument('--steps', type=int, default=1000, metavar='N',
                       help='optimizer steps to train to (default 1000)')
    train.add_argument('--batch-size', type=int, default=8, metavar='B',
                       help='samples per step and process (default 8, as OFT)')
    train.add_argument('--lr', type=float, default=5e-4, help='learning rate (default 5e-4, OFT)')
    train.add_argument('--weight-decay', type=float, default=0.01, metavar='W',
                       help='AdamW weight decay (default 0.01, torch and OFT)')
    train.add_argument('--warmup-steps', type=int, default=0, metavar='N',
                       help='warm the learning rate up from 10%% over N steps (default 0)')
    train.add_argument('--decay-after', type=int, default=0, metavar='N',
                       help='divide the learning rate by 10 from step N (default 0: never)')
    mode = train.add_mutually_exclusive_group()
    mode.add_argument('--full', action='store_true',
                      help='train every backbone weight (small models) instead of LoRA')
    mode.add_argument('--lora-only', action='store_true',
                      help="train only LoRA; keep the base's L1 head and proprio projector")
    train.add_argument('--lora-rank', type=int, default=32, metavar='R',
                       help='LoRA rank (default 32, OFT)')
    train.add_argument('--lora-alpha', type=float, default=None, metavar='A',
                       help='LoRA alpha (default min(rank, 16), OFT)')
    train.add_argument('--lora-dropout', type=float, default=0.0, metavar='P',
                       help='LoRA dropout (default 0)')
    train.add_argument('--lora-target', choices=LORA_TARGETS, default='all',
                       help="all: every linear layer of the backbone (OFT's all-linear); llm: "
                       'the language model only (default all)')
    train.add_argument('--val-every', type=int, default=100, metavar='N',
                       help='validation L1 every N steps (default 100; 0: at the end only)')
    train.add_argument('--save-every', type=int, default=500, metavar='N',
                       help='checkpoint and training state every N steps (default 500; 0: at '
                       'the end only)')
    train.add_argument('--resume', action='store_true',
                       help='continue the run in --out from its last save (same command, a '
                       'larger --steps allowed)')
    train.add_argument('--stats-only', action='store_true',
                       help='write only DIR/dataset_statistics.json of the training bags')
    train.add_argument('--seed', type=int, default=0, metavar='S',
                       help='seed of the sample order, the split and new weights (default 0)')
    train.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                       help='auto: CUDA when there is a GPU (accelerate picks it)')
    train.add_argument('--dtype', default='auto', choices=('auto', 'float32', 'bfloat16'),
                       help='the frozen weights: auto = float32 on CPU and for --full, else '
                       'bfloat16 (trained weights are float32, bf16 autocast on CUDA)')
    train.add_argument('--read-workers', type=int, default=0, metavar='N',
                       help='processes that read and preprocess the bags (default 0: one per '
                       'CPU core of this process; 1: in this process)')
    return parser


def split_bags(bags, val_bags, fraction, seed):
    """Return (training bags, validation bags): --val-bags, or a seeded --val-fraction."""
    if val_bags or not fraction:
        return list(bags), list(val_bags)
    count = min(len(bags) - 1, max(1, round(fraction * len(bags))))
    if count < 1:
        raise FinetuneError(f'--val-fraction {fraction:g} needs at least 2 bags (1 given); pass '
                            'more bags, or --val-bags')
    order = sorted(bags)
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [b for b in bags if b not in held], [b for b in bags if b in held]


def config_from_args(args):
    """Validate the arguments argparse cannot; return (``TrainConfig``, ``DataOptions``)."""
    for flag, value, low in (('--steps', args.steps, 1), ('--batch-size', args.batch_size, 1),
                             ('--lora-rank', args.lora_rank, 1),
                             ('--warmup-steps', args.warmup_steps, 0),
                             ('--decay-after', args.decay_after, 0),
                             ('--val-every', args.val_every, 0),
                             ('--save-every', args.save_every, 0),
                             ('--read-workers', args.read_workers, 0)):
        if value < low:
            raise FinetuneError(f'{flag} {value} must be >= {low}')
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise FinetuneError(f'--lr {args.lr} must be a positive number, e.g. 5e-4')
    if not (math.isfinite(args.aux_object) and args.aux_object >= 0):
        raise FinetuneError(f'--aux-object {args.aux_object} must be a weight >= 0, e.g. 0.5')
    if not 0 <= args.val_fraction < 1:
        raise FinetuneError(f'--val-fraction {args.val_fraction} must be in [0, 1)')
    if args.val_bags and args.val_fraction:
        raise FinetuneError('pass --val-bags or --val-fraction, not both')
    if args.image_aug and not args.center_crop:
        raise FinetuneError('--image-aug trains on random 0.9-area crops, which the policy sees '
                            'centred only with --center-crop; pass --center-crop too')
    options = DataOptions(**data_fields(args))
    absolute = [str(Path(b).resolve()) for b in args.bags]
    val = [str(Path(b).resolve()) for b in args.val_bags]
    bags, val = split_bags(absolute, val, args.val_fraction, args.seed)
    mode = 'full' if args.full else 'lora_only' if args.lora_only else 'lora'
    alpha = args.lora_alpha if args.lora_alpha is not None else float(min(args.lora_rank, 16))
    config = TrainConfig(
        base=str(Path(args.base).resolve()), out=str(Path(args.out).resolve()),
        unnorm_key=args.unnorm_key, bags=tuple(bags), val_bags=tuple(val),
        platform=args.platform, center_crop=args.center_crop, image_aug=args.image_aug,
        aux_object=args.aux_object, mode=mode,
        lora_rank=args.lora_rank, lora_alpha=alpha, lora_dropout=args.lora_dropout,
        lora_target=args.lora_target, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        decay_after=args.decay_after, val_every=args.val_every, save_every=args.save_every,
        seed=args.seed, device=args.device, dtype=args.dtype, read_workers=args.read_workers)
    if not config.unnorm_key.strip():
        raise FinetuneError('--unnorm-key is empty; name your dataset, e.g. my_robot_reach')
    return config, options


def report(config, summary, stats_only):
    """Print what was written and how to use it, and the steps that were no sample."""
    for key, bags in (('skipped', 'training'), ('val_skipped', 'validation')):
        if summary.get(key):
            print(f'{PROG}: {sum(summary[key].values())} steps of the {bags} bags were no sample: '
                  + ', '.join(f'{count} {reason}' for reason, count in summary[key].items()))
    if stats_only:
        print(f"{PROG}: wrote {summary['statistics']} ({summary['samples']} samples, key "
              f'{config.unnorm_key!r})')
        return
    val = '' if summary['val_l1'] is None else f", validation L1 {summary['val_l1']:.4f}"
    print(f"{PROG}: trained to step {summary['step']} ({summary['steps_trained']} steps in "
          f"{summary['seconds']:.1f} s, {summary['s_per_step']:.3f} s/step); training loss "
          f"{summary['first_loss']:.4f} -> {summary['last_loss']:.4f}{val}")
    print(f'{PROG}: wrote {config.out}: load it with OpenVLAOFTPolicy.from_pretrained(out, '
          f"platform='{config.platform}') or vla_node -p policy:=openvla_oft -p platform:="
          f'{config.platform} -p model_path:={config.out} -p unnorm_key:={config.unnorm_key}')


def main(argv=None):
    """Console entry point of ``vla_finetune``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from vla_ros.policy.errors import PolicyError
    from vla_ros.training.finetune import finetune

    try:
        config, options = config_from_args(args)
        summary = finetune(config, options, resume=args.resume, stats_only=args.stats_only)
    except (FinetuneError, RecordingError, PolicyError) as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 2
    if summary['main']:
        report(config, summary, args.stats_only)
    return 0


if __name__ == '__main__':
    sys.exit(main())
