"""
The new dataset's statistics, and actions normalised with them as OpenVLA-OFT trains on them.

``dataset_statistics`` computes what OpenVLA's ``get_dataset_statistics`` writes (mean, std, max,
min, q01, q99 per dimension, ``np.quantile``'s default linear interpolation, over every sample
of every trajectory), plus the action mask OpenVLA's datasets carry: True for every dimension
but the gripper (the last), which stays absolute and un-normalised. ``write_statistics`` writes
``dataset_statistics.json`` with the one new key, as OFT's ``save_dataset_statistics`` does; the
policy then reads it instead of ``config.json``'s ``norm_stats``.

``normalize_actions`` is OFT's training-side ``normalize_action_and_proprio`` for actions:
``where(mask, clip(2 (a - low) / (high - low + 1e-8) - 1, -1, 1), a)``, and 0 in a normalised
dimension whose min equals its max (an unused one: un-normalising 0 gives that constant back).
OFT zeroes such a dimension even where the mask is False; its inference then returns the 0
as it is, so a gripper that was always open (1) would come back closed. Here an un-normalised
dimension keeps its raw value, which is what the policy returns. The state is normalised by the
policy's own ``Bounds.normalize`` (the inference code), so the model sees in training exactly
what it sees at run time.
"""

import json
from pathlib import Path

import numpy as np

from vla_ros.policy.backbone.configuration import DATASET_STATISTICS_FILE
from vla_ros.policy.oft.configuration import NORMALIZATIONS, RANGE_EPS

FIELDS = ('mean', 'std', 'max', 'min', 'q01', 'q99')


def array_statistics(values):
    """Return {mean, std, max, min, q01, q99} (lists of floats) of ``values`` (N, D) per column."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f'statistics need a non-empty (N, D) array, got shape {values.shape}')
    return {'mean': values.mean(0).tolist(), 'std': values.std(0).tolist(),
            'max': values.max(0).tolist(), 'min': values.min(0).tolist(),
            'q01': np.quantile(values, 0.01, axis=0).tolist(),
            'q99': np.quantile(values, 0.99, axis=0).tolist()}


def action_mask(dim):
    """Return OpenVLA's action mask: normalise every dimension but the gripper (the last)."""
    return [True] * (dim - 1) + [False]


def dataset_statistics(actions, proprio=None, num_trajectories=1):
    """
    Return one ``dataset_statistics.json`` entry: action (with its mask) and proprio statistics.

    ``actions`` (N, A) and ``proprio`` (N, P) or None: one row per training sample, raw units.
    """
    actions = np.asarray(actions, dtype=np.float64)
    entry = {'action': dict(array_statistics(actions), mask=action_mask(actions.shape[1]))}
    if proprio is not None and np.asarray(proprio).size:
        entry['proprio'] = array_statistics(proprio)
    entry['num_transitions'] = int(actions.shape[0])
    entry['num_trajectories'] = int(num_trajectories)
    return entry


def write_statistics(out_dir, unnorm_key, entry):
    """Write ``out_dir/dataset_statistics.json`` holding only ``{unnorm_key: entry}``."""
    path = Path(out_dir) / DATASET_STATISTICS_FILE
    partial = path.with_name(path.name + '.partial')
    partial.write_text(json.dumps({unnorm_key: entry}, indent=2) + '\n')
    partial.replace(path)
    return path


def read_statistics(out_dir, unnorm_key):
    """Return the entry of ``unnorm_key`` in ``out_dir/dataset_statistics.json``, or None."""
    path = Path(out_dir) / DATASET_STATISTICS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(unnorm_key)


def normalize_actions(actions, entry, normalization='q99'):
    """Return ``actions`` (..., A) normalised as OFT's training data (see the module docstring)."""
    low_key, high_key = NORMALIZATIONS[normalization]
    stats = entry['action']
    low = np.asarray(stats[low_key], dtype=np.float64)
    high = np.asarray(stats[high_key], dtype=np.float64)
    mask = np.asarray(stats.get('mask', [True] * low.size), dtype=bool)
    unused = np.asarray(stats['min'], np.float64) == np.asarray(stats['max'], np.float64)
    a = np.asarray(actions, dtype=np.float64)
    scaled = np.clip(2 * (a - low) / (high - low + RANGE_EPS) - 1, -1, 1)
    return np.where(mask, np.where(unused, 0.0, scaled), a)
