"""
Write a miniature random-weight checkpoint: ``vla_tiny_model OUT_DIR [--seed N] [--oft PLATFORM]``.

It has the structure and files of the conformance checkpoint (config.json with its three synthetic
norm_stats keys and ``timm_override_kwargs``, generation and preprocessor configs, the synthetic
Llama-2-layout tokenizer, ``model.safetensors`` with the released key names), shipped in
``vla_ros/policy/assets/tiny/``, and fresh weights from ``torch.Generator().manual_seed(seed)``.

With plain random weights the model mostly emits non-action tokens, which the policy rightly
reports as invalid. So the 256 action rows of ``lm_head`` are scaled up, step by step, until
every greedy token on a set of synthetic scenes is an action token (no EOS), while different
images still give different actions.

With ``--oft libero`` (or ``bridge``, ``aloha``) the folder is an OpenVLA-OFT checkpoint as OFT's
fine-tuning writes it: the same backbone, plus ``action_head--0_checkpoint.pt`` (the L1 regression
head), ``proprio_projector--0_checkpoint.pt`` and a ``dataset_statistics.json`` whose one key
(``synth_oft_<platform>``) holds action and proprio statistics. LIBERO and Bridge: q01/q99 in
this package's end-effector units (metres, radians, gripper 1 = open). ALOHA: min/max of 14
absolute joint positions (``control.joints.PRESETS['aloha']``'s order: each arm's six joints in
rad, then its gripper normalised 0 closed .. 1 open), for action and state alike, around the
simulated ViperX's start pose. The head's output layer is scaled so its normalised actions stay
inside [-1, 1], as a trained head's do.
"""

import argparse
import json
import math
from pathlib import Path
import shutil
import sys

import numpy as np
import torch

from vla_ros.policy.actions import action_token_range
from vla_ros.policy.backbone.configuration import DATASET_STATISTICS_FILE, OpenVLAConfig, read_json
from vla_ros.policy.backbone.modeling import OpenVLAModel
from vla_ros.policy.backbone.processing import ImageProcessor, PromptTokenizer
from vla_ros.policy.backbone.weights import materialize_buffers, WEIGHTS_FILE
from vla_ros.policy.errors import ConfigError, PolicyError
from vla_ros.sim.scenes import scene

ASSETS = Path(__file__).resolve().parent / 'assets' / 'tiny'
ASSET_FILES = ('config.json', 'generation_config.json', 'preprocessor_config.json',
               'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json')
CALIBRATION_INSTRUCTIONS = ('pick up the red cup', 'move the blue block to the left of the bowl',
                            'open the top drawer')
_SQRT3 = math.sqrt(3.0)
# q and k of the miniature's 2 layers three times wider: sharper attention, so the text matters to
# its actions. Random models for benchmarks keep 1: 32 such layers are chaotic in bf16 (its
# logits differ from float32's by about 1 std, against 0.02 at 1).
TINY_QK_GAIN = 3.0


def _init_range(name, shape, hidden_size, qk_gain=1.0):
    """(center, half width) of the uniform init of one tensor; unit-variance linears."""
    leaf = name.rsplit('.', 1)[-1]
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if leaf == 'scale_factor':
        return 0.5, 0.4
    if leaf == 'bias':
        return 0.0, 0.1
    if len(shape) == 1:  # LayerNorm / RMSNorm weights
        return 1.0, 0.3
    if leaf in ('cls_token', 'reg_token', 'latent') or name.endswith('embed_tokens.weight'):
        return 0.0, 1.0
    if leaf == 'pos_embed':
        return 0.0, 0.5
    if name.endswith('lm_head.weight'):
        return 0.0, _SQRT3 / math.sqrt(hidden_size)
    if name.endswith(('q_proj.weight', 'k_proj.weight')):
        return 0.0, qk_gain * _SQRT3 / math.sqrt(fan_in)
    return 0.0, _SQRT3 / math.sqrt(fan_in)


def init_weights(model, seed):
    """Fill every parameter of ``model`` from a seeded generator, in state-dict order."""
    generator = torch.Generator().manual_seed(int(seed))
    hidden = model.llama_config.hidden_size
    with torch.no_grad():
        for name, param in model.named_parameters():
            center, half_width = _init_range(name, tuple(param.shape), hidden, TINY_QK_GAIN)
            noise = torch.rand(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(noise.mul_(2).sub_(1).mul_(half_width).add_(center))


def calibrate_action_rows(policy, images, instructions, unnorm_key, start=1.5, step=1.2,
                          margin=1.3, max_steps=40):
    """
    Scale lm_head's action rows until every calibration prediction is valid and image-dependent.

    Once there, one more factor ``margin`` is applied if predictions still vary with the image,
    so that unseen images are valid too. Returns the final scale; raises ``RuntimeError`` if
    ``max_steps`` are not enough.
    """
    config = policy.config
    low, high = action_token_range(config.vocab_for_decoding, config.n_action_bins)
    rows = policy.model.language_model.lm_head.weight[low:high + 1]  # (256, C), a view
    base = rows.detach().clone()

    def set_scale(value):
        with torch.no_grad():
            rows.copy_(base * value)

    def check():
        actions = [[policy.predict(image, text, unnorm_key=unnorm_key) for image in images]
                   for text in instructions]
        valid = all(a.valid for row in actions for a in row)
        varies = all(len({a.token_ids.tobytes() for a in row}) > 1 for row in actions)
        return valid, varies

    scale = start
    set_scale(scale)
    for _ in range(max_steps):
        valid, varies = check()
        if valid and varies:
            set_scale(scale * margin)
            if all(check()):
                return scale * margin
            set_scale(scale)
            return scale
        scale *= step
        set_scale(scale)
    raise RuntimeError(f'calibration of the action rows did not converge (scale {scale:.2f}); '
                       'try another --seed.')


def prepare_out_dir(out_dir, force=False):
    """Create ``out_dir``; refuse a non-empty one unless ``force``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f'{out_dir} exists and is not a directory; choose another OUT_DIR.')
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f'{out_dir} is not empty; choose another OUT_DIR or pass --force to '
                          'overwrite the checkpoint files in it.')
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_checkpoint(out_dir, config_overrides=None, seed=0, calibrate=True, force=False):
    """
    Write a random-weight checkpoint built from the tiny assets with ``config_overrides``.

    ``config_overrides`` replaces top-level config.json keys (None values delete them), e.g.
    ``{'timm_override_kwargs': None}`` for full-size towers. Returns the directory.
    """
    from safetensors.torch import save_file

    from vla_ros.policy.openvla.policy import OpenVLAPolicy

    out_dir = prepare_out_dir(out_dir, force)
    (out_dir / DATASET_STATISTICS_FILE).unlink(missing_ok=True)  # a stale one would replace ours
    for name in ASSET_FILES:
        shutil.copyfile(ASSETS / name, out_dir / name)
    if config_overrides:
        raw = read_json(out_dir / 'config.json')
        for key, value in config_overrides.items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
        (out_dir / 'config.json').write_text(json.dumps(raw, indent=2, sort_keys=True) + '\n')
    config = OpenVLAConfig.from_pretrained(out_dir)
    with torch.device('meta'):  # skip the libraries' own (slow, discarded) initialisation
        model = OpenVLAModel(config)
    model.to_empty(device='cpu')
    materialize_buffers(model, 'cpu')
    init_weights(model, seed)
    if calibrate:
        policy = OpenVLAPolicy(model, config, ImageProcessor.from_pretrained(out_dir),
                               PromptTokenizer.from_pretrained(out_dir), 'cpu', torch.float32)
        images = [scene(i, 224, 224, seed=int(seed), noise=8) for i in range(6)]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and immune to contention
        try:
            calibrate_action_rows(policy, images, CALIBRATION_INSTRUCTIONS,
                                  policy.unnorm_keys[0])
        finally:
            torch.set_num_threads(threads)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    partial = out_dir / (WEIGHTS_FILE + '.partial')
    save_file(state, str(partial), metadata={'format': 'pt'})
    partial.replace(out_dir / WEIGHTS_FILE)
    return out_dir


def write_tiny_checkpoint(out_dir, seed=0, force=False):
    """Write the miniature checkpoint (about 20 MB) to ``out_dir``; return its path."""
    return write_checkpoint(out_dir, seed=seed, force=force)


# The synthetic dataset of the OFT miniature: small end-effector deltas (m, rad), gripper 0..1
# (1 = open), and a state of ee_position, ee_axis_angle and two finger joints (m).
OFT_ACTION_STATS = {'q01': [-0.02, -0.02, -0.02, -0.05, -0.05, -0.05, 0.0],
                    'q99': [0.02, 0.02, 0.02, 0.05, 0.05, 0.05, 1.0],
                    'mask': [True] * 7}
OFT_PROPRIO_STATS = {'q01': [0.2, -0.3, 0.0, -3.2, -3.2, -3.2, 0.0, 0.0],
                     'q99': [0.7, 0.3, 0.6, 3.2, 3.2, 3.2, 0.04, 0.04]}
# ALOHA's: one ViperX arm's waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate (rad)
# about ACT's start pose (0, -0.96, 1.16, 0, -0.3, 0), and its gripper (0 closed .. 1 open);
# left arm then right arm, for the actions (absolute targets) and the state alike.
# Every statistic OFT's fine-tuning writes (the backbone's config reads q01/q99 too).
ALOHA_ARM_MIN = [-0.6, -1.4, 0.6, -0.6, -0.9, -0.8, 0.0]
ALOHA_ARM_MAX = [0.6, -0.3, 1.5, 0.6, 0.5, 0.8, 1.0]


def aloha_statistics():
    """Return min, max, q01, q99, mean, std of ALOHA's 14 dimensions (both arms alike)."""
    low, high = np.array(ALOHA_ARM_MIN * 2), np.array(ALOHA_ARM_MAX * 2)
    span = high - low
    stats = {'min': low, 'max': high, 'q01': low + 0.01 * span, 'q99': high - 0.01 * span,
             'mean': (low + high) / 2, 'std': span / 4}
    return {key: [round(float(v), 6) for v in values] for key, values in stats.items()}


def oft_statistics(platform, constants):
    """Return the miniature's ``dataset_statistics.json`` entry for ``platform``."""
    if platform == 'aloha':
        action = dict(aloha_statistics(), mask=[True] * constants.action_dim)
        proprio = aloha_statistics()
    else:
        action = OFT_ACTION_STATS
        proprio = {key: values[:constants.proprio_dim] for key, values in
                   OFT_PROPRIO_STATS.items()}
    if len(action['mask']) != constants.action_dim:
        raise ConfigError(f'--oft {platform}: the miniature has no statistics for '
                          f'{constants.action_dim}-D actions')
    return {'action': action, 'proprio': proprio, 'num_transitions': 1000,
            'num_trajectories': 10}


def write_tiny_oft_checkpoint(out_dir, platform='libero', seed=0, force=False):
    """Write the miniature OpenVLA-OFT checkpoint (see the module docstring); return its path."""
    from vla_ros.policy.oft.configuration import OFTConstants
    from vla_ros.policy.oft.modeling import ACTION_HEAD, L1RegressionHead, ProprioProjector

    constants = OFTConstants.for_platform(platform)
    stats = {f'synth_oft_{platform}': oft_statistics(platform, constants)}
    out_dir = write_checkpoint(out_dir, seed=seed, calibrate=False, force=force)
    width = OpenVLAConfig.from_pretrained(out_dir).llama_config().hidden_size
    generator = torch.Generator().manual_seed(int(seed) + 1)
    head = L1RegressionHead(width, constants.action_dim, constants.chunk_len)
    projector = ProprioProjector(width, constants.proprio_dim)
    with torch.no_grad():
        for module in (head, projector):
            for name, param in module.named_parameters():
                center, half_width = _init_range(name, tuple(param.shape), width)
                noise = torch.rand(param.shape, generator=generator, dtype=torch.float32)
                param.copy_(noise.mul_(2).sub_(1).mul_(half_width).add_(center))
        head.model.fc2.weight.mul_(0.3)  # normalised actions mostly inside [-1, 1]
    (out_dir / DATASET_STATISTICS_FILE).write_text(json.dumps(stats, indent=2) + '\n')
    for name, module in ((ACTION_HEAD, head), ('proprio_projector', projector)):
        state = {f'module.{k}': v for k, v in module.state_dict().items()}  # as DDP saves it
        torch.save(state, out_dir / f'{name}--0_checkpoint.pt')
    return out_dir


def main(argv=None):
    """Console entry point of ``vla_tiny_model``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog='vla_tiny_model',
        description='Write a miniature random-weight OpenVLA checkpoint (same structure and '
                    'files as openvla-7b, tiny sizes) for demos and tests.')
    parser.add_argument('out_dir', metavar='OUT_DIR', help='directory to write (new or empty)')
    parser.add_argument('--seed', type=int, default=0, help='random seed of the weights')
    parser.add_argument('--oft', metavar='PLATFORM', choices=('libero', 'bridge', 'aloha'),
                        help='write an OpenVLA-OFT checkpoint of this platform (libero: two '
                        'cameras, 8-D state, chunks of 8; bridge: one camera, chunks of 5; '
                        'aloha: three cameras, 14-D joint state, chunks of 25 joint targets)')
    parser.add_argument('--force', action='store_true',
                        help='write into a non-empty OUT_DIR, overwriting checkpoint files')
    args = parser.parse_args(argv)
    try:
        if args.oft:
            path = write_tiny_oft_checkpoint(args.out_dir, args.oft, args.seed, args.force)
        else:
            path = write_tiny_checkpoint(args.out_dir, seed=args.seed, force=args.force)
    except (PolicyError, OSError, RuntimeError) as err:
        print(f'vla_tiny_model: error: {err}', file=sys.stderr)
        return 1
    if args.oft:
        print(f'vla_tiny_model: wrote a miniature OpenVLA-OFT {args.oft} checkpoint (seed '
              f'{args.seed}) to {path}; unnorm key: synth_oft_{args.oft}')
        return 0
    print(f'vla_tiny_model: wrote a miniature OpenVLA checkpoint (seed {args.seed}) to {path}; '
          'unnorm keys: synth_bridge, synth_kitchen, synth_nomask')
    return 0


if __name__ == '__main__':
    sys.exit(main())
