"""
The demo's trained policy, rebuilt from the few megabytes the repository ships.

``make demo`` runs a miniature OpenVLA-OFT that has learned ``sim_arm``'s reach task. Its
full checkpoint is about 20 MB, of which the untrained ``lm_head`` and the tokenizer are
regenerated exactly by ``vla_tiny_model --oft libero`` (seed 0). So ``assets/reach/`` holds:

* ``trainable.safetensors``: the parameters ``vla_finetune`` trained (fully fine-tuned: every
  backbone weight but ``lm_head``, the L1 head and the proprio projector), stored as float16
  (about 6 MB; the rebuilt checkpoint is float32, and docs/closed_loop.md's success rate is
  measured on it);
* ``run.json``: that run's settings and data options (as ``vla_finetune`` wrote them);
* ``dataset_statistics.json``: the training data's statistics, under ``sim_reach`` whatever key the
  run trained under (``run.json``'s ``trained_unnorm_key``);
* ``base.sha256``: the hash of the regenerated base's ``model.safetensors``, so a torch whose
  random generator differs fails loudly instead of loading the trained weights into a model
  whose other weights differ.

``write_demo_policy(out)`` writes the base, rebuilds the training model with the run's
settings, loads the trained parameters and saves the merged checkpoint exactly as
``vla_finetune`` saves its own (``checkpoint.save_checkpoint``), its run record in
``training_state/run.json`` (the demo reads the state layout there). ``make demo-policy`` records
the demonstrations and trains anew (docs/closed_loop.md gives the commands and their wall time);
``python -m vla_ros.training.demo_policy --ship DIR`` copies a ``vla_finetune`` output's
trained parameters back into ``assets/reach/``.
"""

import argparse
import hashlib
import json
from pathlib import Path
import shutil
import sys
import tempfile

from vla_ros.policy.errors import PolicyError

ASSETS = Path(__file__).resolve().parent / 'assets' / 'reach'
UNNORM_KEY = 'sim_reach'
PLATFORM = 'libero'
BASE_SEED = 0
SHIPPED = ('trainable.safetensors', 'run.json', 'dataset_statistics.json', 'base.sha256')


def sha256(path):
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def regenerate_base(folder):
    """Write the miniature base the policy was trained on; return (its path, its weights' hash)."""
    from vla_ros.policy.backbone.weights import WEIGHTS_FILE
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint

    base = write_tiny_oft_checkpoint(Path(folder) / 'base', PLATFORM, seed=BASE_SEED)
    return base, sha256(base / WEIGHTS_FILE)


def run_proprio(model=None):
    """
    Return the state layout (``--proprio``) of the run that trained ``model``, from its record.

    ``vla_finetune`` writes the record into its output (``training_state/run.json``), and the
    demo's checkpoint carries the shipped one; without ``model``, the shipped record itself.
    """
    from vla_ros.training.options import RUN_FILE, split_settings, STATE_DIR

    record = ASSETS / RUN_FILE if model is None else Path(model) / STATE_DIR / RUN_FILE
    try:
        return list(split_settings(json.loads(record.read_text())['config'])[1]['proprio'])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'{record}: no state layout (config "data.proprio") in a vla_finetune '
                         f'run record ({type(exc).__name__}: {exc}); pass a vla_finetune output, '
                         'or a policy that takes no state') from None


def write_demo_policy(out, force=False):
    """Write the trained reach policy's checkpoint to ``out``; return its path."""
    import torch
    from safetensors.torch import load_file

    from vla_ros.policy.oft.configuration import OFTConstants
    from vla_ros.policy.tiny import prepare_out_dir
    from vla_ros.training import checkpoint
    from vla_ros.training.model import (build_model, head_state, merged_state_dict,
                                        trainable_parameters)
    from vla_ros.training.options import RUN_FILE, split_settings, STATE_DIR, TrainConfig

    missing = [name for name in SHIPPED if not (ASSETS / name).is_file()]
    if missing:
        raise PolicyError(f'{ASSETS} lacks {missing}; regenerate it with `make demo-policy`')
    run = json.loads((ASSETS / 'run.json').read_text())
    out = prepare_out_dir(out, force)
    with tempfile.TemporaryDirectory() as tmp:
        base, digest = regenerate_base(tmp)
        if digest != (ASSETS / 'base.sha256').read_text().split()[0]:
            raise PolicyError(
                'the miniature OFT base regenerated here differs from the one the demo policy '
                'was trained on (another torch random generator?); train it anew with '
                '`make demo-policy`')
        fields, _ = split_settings(run['config'])
        fields.update(base=str(base), out=str(out), bags=(), val_bags=(), device='cpu',
                      dtype='float32')
        config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in fields.items()})
        constants = OFTConstants.for_platform(config.platform)
        model, _ = build_model(config, constants, torch.device('cpu'), torch.float32,
                               None, None, True)
        trained = load_file(str(ASSETS / 'trainable.safetensors'))
        expected_names = set(trainable_parameters(model))
        if set(trained) != expected_names:
            raise PolicyError(f'{ASSETS / "trainable.safetensors"} does not fit the model of '
                              f'run.json; regenerate it with `make demo-policy`')
        model.load_state_dict(trained, strict=False)  # float16 -> the model's float32
        dtypes = checkpoint.weight_layout(base)
        checkpoint.copy_base_files(base, out)
        weights = merged_state_dict(model.vla, list(dtypes))
        checkpoint.save_checkpoint(out, int(run['step']), weights, dtypes,
                                   head_state(model.action_head),
                                   head_state(model.proprio_projector))
    shutil.copyfile(ASSETS / 'dataset_statistics.json', out / 'dataset_statistics.json')
    (out / STATE_DIR).mkdir(exist_ok=True)  # the run record, where vla_finetune keeps it
    shutil.copyfile(ASSETS / 'run.json', out / STATE_DIR / RUN_FILE)
    return out


def ship(trained_dir):
    """Copy a ``vla_finetune`` output's trained parameters (float16) and settings to ``ASSETS``."""
    from safetensors.torch import load_file, save_file
    import torch

    from vla_ros.policy.backbone.weights import WEIGHTS_FILE
    from vla_ros.training.checkpoint import TRAINABLE_FILE
    from vla_ros.training.options import RUN_FILE, STATE_DIR

    trained_dir = Path(trained_dir)
    ASSETS.mkdir(parents=True, exist_ok=True)
    trained = load_file(str(trained_dir / STATE_DIR / TRAINABLE_FILE))
    save_file({name: value.to(torch.float16) if value.is_floating_point() else value
               for name, value in trained.items()}, str(ASSETS / 'trainable.safetensors'))
    run = json.loads((trained_dir / STATE_DIR / RUN_FILE).read_text())
    for key in ('bags', 'val_bags'):  # folder/episode, not this machine's absolute paths
        run['config'][key] = [f'{Path(b).parent.name}/{Path(b).name}'
                              for b in run['config'][key]]
    stats = json.loads((trained_dir / 'dataset_statistics.json').read_text())
    if len(stats) != 1:
        raise PolicyError(f'{trained_dir / "dataset_statistics.json"} holds {sorted(stats)}: '
                          'ship a vla_finetune output, which holds its own key only')
    # Each round trains under a key of its own (vla_finetune refuses one its base has); the
    # package ships the result under UNNORM_KEY, and the record says which key it trained under.
    (run['trained_unnorm_key'], values), = stats.items()
    (ASSETS / 'run.json').write_text(json.dumps(run, indent=1) + '\n')
    (ASSETS / 'dataset_statistics.json').write_text(
        json.dumps({UNNORM_KEY: values}, indent=2) + '\n')
    with tempfile.TemporaryDirectory() as tmp:
        (ASSETS / 'base.sha256').write_text(f'{regenerate_base(tmp)[1]}  {WEIGHTS_FILE}\n')
    return ASSETS


def main(argv=None):
    """Write the demo policy (``OUT``), or ship a trained one (``--ship DIR``)."""
    parser = argparse.ArgumentParser(prog='python -m vla_ros.training.demo_policy',
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument('out', nargs='?', help='checkpoint directory to write')
    parser.add_argument('--ship', metavar='DIR', help="copy a vla_finetune output's trained "
                        'parameters into the package assets instead')
    parser.add_argument('--force', action='store_true', help='write into a non-empty OUT')
    args = parser.parse_args(argv)
    try:
        if args.ship:
            print(f'shipped {args.ship} into {ship(args.ship)}')
        elif args.out:
            print(f'wrote the trained reach policy to {write_demo_policy(args.out, args.force)} '
                  f'(unnorm key {UNNORM_KEY})')
        else:
            parser.error('pass OUT or --ship DIR')
    except (PolicyError, OSError) as exc:
        print(f'{parser.prog}: error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
