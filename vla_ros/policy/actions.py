"""
From generated token ids to actions, exactly as OpenVLA's ``predict_action`` computes them.

- ``vocab_for_decoding`` = text vocab_size - pad_to_multiple_of = 32064 - 64 = 32000.
- id t -> bin index ``clip(32000 - t - 1, 0, 254)`` -> ``bin_centers[index]`` (normalised action).
- un-normalise with the dataset's q01/q99 and mask, in float64, in the reference's order:
  ``mask ? ((0.5 * (n + 1)) * (q99 - q01)) + q01 : n``.

The reference decodes the last ``action_dim`` ids of prompt + generated. When EOS came early those
include prompt ids (':' 284, '▁' 29871) and the EOS id, which it silently turns into +-0.996.
The values here are the same, but ``Action.valid`` is False and ``Action.reason`` says why.
"""

import dataclasses

import numpy as np

N_ACTION_BINS = 256


def bin_centers(n_bins=N_ACTION_BINS):
    """Return the reference's bin centres: midpoints of ``linspace(-1, 1, n_bins)`` in float64."""
    bins = np.linspace(-1.0, 1.0, n_bins)
    return (bins[:-1] + bins[1:]) / 2.0  # (n_bins - 1,)


@dataclasses.dataclass(frozen=True)
class ActionStats:
    """The un-normalisation statistics of one dataset: float64 q01, q99 and a bool mask."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray

    @classmethod
    def from_norm_stats(cls, action):
        """Build from ``norm_stats[key]['action']``; a missing mask means all True."""
        q01 = np.asarray(action['q01'], dtype=np.float64)
        q99 = np.asarray(action['q99'], dtype=np.float64)
        mask = np.asarray(action.get('mask', np.ones_like(q01, dtype=bool)), dtype=bool)
        return cls(q01=q01, q99=q99, mask=mask)

    @property
    def dim(self):
        """Return the number of action dimensions (7 for OpenVLA)."""
        return int(self.q01.shape[0])


@dataclasses.dataclass(frozen=True)
class Action:
    """
    What every policy returns: one action (OpenVLA) or a chunk of them (OpenVLA-OFT).

    ``values`` is float64 (D,) for OpenVLA, exactly as its ``predict_action`` returns, and
    (chunk_len, D) for OFT, exactly as its ``get_vla_action``; ``rows`` is always 2-D, so the node
    and evaluation handle both alike (one action is a chunk of length 1).
    """

    values: np.ndarray  # float64 (D,) or (chunk_len, D), unnormalised
    valid: bool  # False when a decoded id is not an action token or EOS came early
    token_ids: np.ndarray  # int64, the ids decoded into values (empty for a regression head)
    normalized: np.ndarray  # float64, the shape of values
    reason: str = ''  # why it is not valid; '' when valid
    generated_ids: tuple = ()  # every generated id, EOS included
    unnorm_key: str = ''
    timing: dict = dataclasses.field(default_factory=dict)  # seconds per phase

    @property
    def rows(self):
        """Return the actions as rows, float64 (chunk_len, D): one row for OpenVLA."""
        return np.atleast_2d(self.values)


def action_token_range(vocab_for_decoding=32000, n_bins=N_ACTION_BINS):
    """Return the inclusive id range of the action tokens: (31744, 31999) for OpenVLA."""
    return vocab_for_decoding - n_bins, vocab_for_decoding - 1


def decode_tokens(token_ids, stats, vocab_for_decoding=32000, n_bins=N_ACTION_BINS):
    """
    Return ``(normalized, values, valid)`` for the decoded ids, as the reference computes them.

    ``valid`` is True when every id is one of the ``n_bins`` action tokens; EOS handling is the
    caller's (see ``action_from_generation``).
    """
    ids = np.asarray(token_ids, dtype=np.int64)  # (D,)
    normalized, valid = normalized_from_tokens(ids, vocab_for_decoding, n_bins)
    values = np.where(stats.mask,
                      0.5 * (normalized + 1) * (stats.q99 - stats.q01) + stats.q01,
                      normalized)
    return normalized, values, valid


def normalized_from_tokens(token_ids, vocab_for_decoding=32000, n_bins=N_ACTION_BINS):
    """
    Return ``(normalized float64, valid)`` of action token ids, by the reference's rule.

    id -> ``bin_centers[clip(vocab - id - 1, 0, n_bins - 2)]``; ``valid`` is True when every id
    is one of the ``n_bins`` action tokens (others decode silently to the end bins).
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    centers = bin_centers(n_bins)
    normalized = centers[np.clip(vocab_for_decoding - ids - 1, 0, centers.shape[0] - 1)]
    low, high = action_token_range(vocab_for_decoding, n_bins)
    return normalized, bool(np.all((ids >= low) & (ids <= high)))


def action_from_generation(input_ids, generated_ids, hit_eos, stats, unnorm_key='',
                           vocab_for_decoding=32000, n_bins=N_ACTION_BINS, eos_token_id=2):
    """
    Build the ``Action`` of one greedy generation.

    ``input_ids`` are the ids given to generation (after the 29871 rule), ``generated_ids`` every
    generated id (EOS included when ``hit_eos``). Like the reference, the last ``stats.dim`` ids of
    the whole sequence are decoded.
    """
    sequence = list(input_ids) + list(generated_ids)
    token_ids = np.asarray(sequence[-stats.dim:], dtype=np.int64)
    normalized, values, valid = decode_tokens(token_ids, stats, vocab_for_decoding, n_bins)
    reason = ''
    low, high = action_token_range(vocab_for_decoding, n_bins)
    if hit_eos:
        valid = False
        reason = (f'EOS (id {eos_token_id}) as token {len(generated_ids)} of {stats.dim}; the '
                  f'decoded ids {token_ids.tolist()} include it')
    elif not valid:
        bad = [int(t) for t in token_ids if not low <= t <= high]
        reason = f'decoded ids {bad} are not action tokens ({low}..{high})'
    return Action(values=values, valid=valid, token_ids=token_ids, normalized=normalized,
                  reason=reason, generated_ids=tuple(int(t) for t in generated_ids),
                  unnorm_key=unnorm_key)
