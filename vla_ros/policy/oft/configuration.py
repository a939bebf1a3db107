"""
OpenVLA-OFT's constants and statistics: what a platform fixes and how actions and state scale.

OFT's own code picks its constants at import time from the command line (``prismatic/vla/
constants.py``); here they are an explicit ``platform`` with keyword overrides:

==========  =====  ==========  ===========  =============  ======
platform    chunk  action dim  proprio dim  normalisation  images
==========  =====  ==========  ===========  =============  ======
``libero``  8      7           8            q01 / q99      2
``aloha``   25     14          14           min / max      3
``bridge``  5      7           7            q01 / q99      1
==========  =====  ==========  ===========  =============  ======

Statistics come from ``dataset_statistics.json`` (which replaces ``config.json``'s
``norm_stats``): ``action`` and ``proprio`` entries with q01/q99 or min/max and an optional mask.
Both scalings add ``1e-8`` to the range, exactly as OFT's ``_unnormalize_actions`` and
``normalize_proprio`` do.
"""

import dataclasses

import numpy as np

from vla_ros.policy.errors import CheckpointError, ConfigError, InputError

PLATFORMS = {
    'libero': {'chunk_len': 8, 'action_dim': 7, 'proprio_dim': 8, 'normalization': 'q99',
               'num_images': 2},
    'aloha': {'chunk_len': 25, 'action_dim': 14, 'proprio_dim': 14, 'normalization': 'minmax',
              'num_images': 3},
    'bridge': {'chunk_len': 5, 'action_dim': 7, 'proprio_dim': 7, 'normalization': 'q99',
               'num_images': 1},
}
NORMALIZATIONS = {'q99': ('q01', 'q99'), 'minmax': ('min', 'max')}
RANGE_EPS = 1e-8  # OFT adds it to every range (not in OpenVLA)
PLACEHOLDER_ID = 1  # OFT fills the action slots with ones (the <s> id), then zeroes them
STOP_ID = 2


@dataclasses.dataclass(frozen=True)
class OFTConstants:
    """The constants of one OFT deployment (see the module docstring)."""

    chunk_len: int
    action_dim: int
    proprio_dim: int
    normalization: str
    num_images: int
    platform: str = ''

    @classmethod
    def for_platform(cls, platform, **overrides):
        """Return the preset of ``platform`` with ``overrides`` (None values keep the preset)."""
        if platform not in PLATFORMS:
            raise ConfigError(f'platform={platform!r} is not known; use one of '
                              f'{", ".join(PLATFORMS)} (and keyword overrides for the rest).')
        unknown = set(overrides) - set(PLATFORMS[platform])
        if unknown:
            raise ConfigError(f'unknown OFT constant(s) {sorted(unknown)}; the overrides are '
                              f'{", ".join(PLATFORMS[platform])}.')
        values = dict(PLATFORMS[platform])
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ('chunk_len', 'action_dim', 'proprio_dim', 'num_images'):
            value = values[name]
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0
                    and (value > 0 or name == 'proprio_dim')):
                raise ConfigError(f'{name}={value!r} must be a positive integer.')
        if values['normalization'] not in NORMALIZATIONS:
            raise ConfigError(f"normalization={values['normalization']!r}: use 'q99' (q01/q99 "
                              "bounds, LIBERO and Bridge) or 'minmax' (min/max bounds, ALOHA).")
        return cls(platform=platform, **values)

    @property
    def num_action_slots(self):
        """K = chunk length x action dim: the placeholder positions in the sequence."""
        return self.chunk_len * self.action_dim


@dataclasses.dataclass(frozen=True)
class Bounds:
    """One statistics entry scaled OFT's way: low, high (float64) and mask (bool)."""

    low: np.ndarray
    high: np.ndarray
    mask: np.ndarray

    @classmethod
    def from_stats(cls, entry, normalization, where):
        """Read ``entry`` (an ``action`` or ``proprio`` dict) for ``normalization``."""
        low_key, high_key = NORMALIZATIONS[normalization]
        if not isinstance(entry, dict) or low_key not in entry or high_key not in entry:
            raise CheckpointError(f'{where} has no {low_key}/{high_key}; the statistics must be '
                                  'as OpenVLA-OFT fine-tuning writes them '
                                  '(dataset_statistics.json).')
        low = np.asarray(entry[low_key], dtype=np.float64)
        high = np.asarray(entry[high_key], dtype=np.float64)
        mask = np.asarray(entry.get('mask', np.ones_like(low, dtype=bool)), dtype=bool)
        if not (low.ndim == 1 and low.shape == high.shape == mask.shape and low.size):
            raise CheckpointError(f'{where}: {low_key}, {high_key} and mask need one entry per '
                                  f'dimension (got {low.shape}, {high.shape}, {mask.shape}).')
        return cls(low, high, mask)

    @property
    def dim(self):
        return int(self.low.shape[0])

    def unnormalize(self, normalized):
        """
        Return actions (float64) from ``normalized``, as OFT's ``_unnormalize_actions``.

        ``where(mask, 0.5 * (n + 1) * (high - low + 1e-8) + low, n)``; a float32 ``n`` (the L1
        head's) computes ``0.5 * (n + 1)`` in float32 before the float64 product, as numpy does
        in the reference.
        """
        n = np.asarray(normalized)
        scaled = (n + n.dtype.type(1)) * n.dtype.type(0.5)
        values = scaled * (self.high - self.low + RANGE_EPS) + self.low
        return np.where(self.mask, values, n.astype(np.float64))

    def normalize(self, values):
        """Return OFT's normalised state: clip(where(mask, 2 (p - low) / range - 1, p), -1, 1)."""
        p = np.asarray(values, dtype=np.float64)
        scaled = 2 * (p - self.low) / (self.high - self.low + RANGE_EPS) - 1
        return np.clip(np.where(self.mask, scaled, p), -1, 1)


def dataset_bounds(norm_stats, key, constants, source):
    """Return ``(action Bounds, proprio Bounds or None)`` of ``norm_stats[key]``, checked."""
    entry = norm_stats[key]
    where = f'{source}: [{key!r}]'
    action = Bounds.from_stats(entry.get('action'), constants.normalization, f'{where}.action')
    if action.dim != constants.action_dim:
        raise CheckpointError(f'{where}.action has {action.dim} dimensions, but action_dim is '
                              f'{constants.action_dim} (platform {constants.platform!r}); pick '
                              'the platform the checkpoint was trained for, or set action_dim.')
    proprio = None
    if constants.proprio_dim and isinstance(entry.get('proprio'), dict):
        proprio = Bounds.from_stats(entry['proprio'], constants.normalization,
                                    f'{where}.proprio')
        if proprio.dim != constants.proprio_dim:
            raise CheckpointError(f'{where}.proprio has {proprio.dim} dimensions, but '
                                  f'proprio_dim is {constants.proprio_dim}.')
    return action, proprio


def check_proprio(proprio, dim):
    """Return ``proprio`` as float64 (dim,), or raise ``InputError`` naming the problem."""
    try:
        values = np.asarray(proprio, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f'proprio must be {dim} numbers, got {type(proprio).__name__}.') from None
    if values.shape != (dim,):
        raise InputError(f'proprio has {values.size} values; this checkpoint expects '
                         f"{dim} (proprio_dim), in the dataset's raw units.")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(f'proprio has non-finite values at {bad.tolist()}: '
                         f'{values[bad].tolist()}; send the measured state.')
    return values
