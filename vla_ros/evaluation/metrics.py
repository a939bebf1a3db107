"""
Offline metrics of predicted against reference actions: pure numpy, JSON-ready results.

Inputs are the *predicted* steps (the ones the live node would have run the model on):
``predicted`` and ``reference`` float64 (N, D) (a NaN reference row: no reference), ``valid`` bool
(N,), ``latency_s`` (N,), and the ``names`` of the D dimensions (default ``ACTION_NAMES``, the
7-D end-effector deltas; a joint-space policy's are its own, e.g. ALOHA's 14). Definitions:

- ``invalid_rate`` = invalid actions / predicted steps. Invalid actions (a non-action token, a
  non-finite value: the node publishes nothing) are left out of every error metric.
- ``steps_compared``: valid steps with a reference; the error metrics are over those.
- ``mae`` / ``rmse`` per dimension in the action's units (m, rad, gripper), and the same divided
  by the dataset's ``q99 - q01`` (``*_normalized``; null for a dimension whose range is 0).
  ``mae_normalized_mean`` averages the normalised MAE over the dimensions that have one.
- ``translation_cosine``: mean cosine between predicted and reference ``(dx, dy, dz)`` over the
  compared steps where both have norm > ``EPS_TRANSLATION`` (``translation_cosine_steps`` of them).
- ``gripper_agreement``: fraction of compared steps where both grippers are open (> 0.5) or both
  closed (<= 0.5).
  These two are end-effector delta metrics: for other actions (joint positions) they are None
  and ``ee_metrics_skipped`` says why.
- ``latency_ms``: p50, p95, p99 (linear interpolation) and max of ``predict()`` over all
  predicted steps, invalid ones included.

Per chunk step (``chunk_steps``), over every committed chunk (OpenVLA's have one row): row ``j``
against the reference of the step it is for (the ``j``-th control step after the step of its row
0, see ``results.BagResult.chunk_inputs``), where that step has a reference:
``chunk_step_compared[j]`` rows, ``chunk_step_mae[j]`` per dimension, ``chunk_step_mae_normalized
[j]`` divided by ``q99 - q01`` and ``chunk_step_mae_normalized_mean[j]`` their mean. How the error
grows with ``j`` is how far ahead the policy's chunks stay right; with ``execute_steps`` below the
chunk length, rows past it are compared even though they are never executed.

Overall metrics pool the steps of every bag (``pool``), so a long bag weighs more than a short
one: they are the metrics of one long recording, not a mean of per-bag means. Undefined values
(no steps) are ``None``, so the JSON stays strict.
"""

import numpy as np

ACTION_NAMES = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
EPS_TRANSLATION = 1e-6  # metres: below this a translation has no direction
GRIPPER_THRESHOLD = 0.5
ZERO_RANGE = 1e-12


def _number(value):
    """Return a float, or None for NaN/inf (strict JSON)."""
    value = float(value)
    return value if np.isfinite(value) else None


def _per_dim(values, names):
    return {name: _number(v) for name, v in zip(names, values)}


def compute(predicted, reference, valid, latency_s, action_range, names=ACTION_NAMES):
    """
    Return the metrics dict of one set of predicted steps (see the module docstring).

    ``action_range``: float64 (D,), ``q99 - q01`` of the unnorm key's action statistics.
    """
    names = tuple(names)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, len(names))
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, len(names))
    valid = np.asarray(valid, dtype=bool).reshape(-1)
    latency_ms = np.asarray(latency_s, dtype=np.float64).reshape(-1) * 1e3
    action_range = np.asarray(action_range, dtype=np.float64).reshape(-1)
    n = predicted.shape[0]
    valid = valid & np.all(np.isfinite(predicted), axis=1)
    compared = valid & np.all(np.isfinite(reference), axis=1)
    pred, ref = predicted[compared], reference[compared]  # (M, 7)
    err = pred - ref
    m = pred.shape[0]
    mae = np.abs(err).mean(axis=0) if m else np.full(len(names), np.nan)
    rmse = np.sqrt((err ** 2).mean(axis=0)) if m else np.full(len(names), np.nan)
    scale = np.where(action_range > ZERO_RANGE, action_range, np.nan)
    mae_n, rmse_n = mae / scale, rmse / scale
    finite = mae_n[np.isfinite(mae_n)]

    n_invalid = int(n - valid.sum())
    out = {
        'steps_predicted': int(n),
        'invalid_actions': n_invalid,
        'invalid_rate': _number(n_invalid / n) if n else None,
        'steps_compared': int(m),
        'mae': _per_dim(mae, names),
        'rmse': _per_dim(rmse, names),
        'mae_normalized': _per_dim(mae_n, names),
        'rmse_normalized': _per_dim(rmse_n, names),
        'mae_normalized_mean': _number(finite.mean()) if finite.size else None,
        'latency_ms': latency_summary(latency_ms),
    }
    if names != ACTION_NAMES:
        return {**out, 'translation_cosine': None, 'translation_cosine_steps': 0,
                'gripper_agreement': None,
                'ee_metrics_skipped': f'the actions are {len(names)}-D ({names[0]} ...), not '
                'end-effector deltas: no translation cosine or gripper agreement'}
    norm_p = np.linalg.norm(pred[:, :3], axis=1)
    norm_r = np.linalg.norm(ref[:, :3], axis=1)
    moving = (norm_p > EPS_TRANSLATION) & (norm_r > EPS_TRANSLATION)
    cosine = (np.sum(pred[moving, :3] * ref[moving, :3], axis=1)
              / (norm_p[moving] * norm_r[moving]))
    agree = (pred[:, 6] > GRIPPER_THRESHOLD) == (ref[:, 6] > GRIPPER_THRESHOLD)
    return {**out, 'translation_cosine': _number(cosine.mean()) if cosine.size else None,
            'translation_cosine_steps': int(cosine.size),
            'gripper_agreement': _number(agree.mean()) if m else None}


def chunk_steps(rows, references, action_range, names=ACTION_NAMES):
    """
    Return the per-chunk-step metrics of committed chunks (see the module docstring).

    ``rows``, ``references``: float64 (C, L, D), a NaN reference row where there is none.
    """
    rows = np.asarray(rows, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    scale = np.asarray(action_range, dtype=np.float64).reshape(-1)
    scale = np.where(scale > ZERO_RANGE, scale, np.nan)
    compared = np.all(np.isfinite(references), axis=2) & np.all(np.isfinite(rows), axis=2)
    counts, mae, mae_n, mae_n_mean = [], [], [], []
    for j in range(rows.shape[1]):
        m = compared[:, j]  # (C,)
        err = (np.abs(rows[m, j] - references[m, j]).mean(axis=0) if m.any()
               else np.full(len(names), np.nan))  # (D,)
        normalized = err / scale
        finite = normalized[np.isfinite(normalized)]
        counts.append(int(m.sum()))
        mae.append(_per_dim(err, names))
        mae_n.append(_per_dim(normalized, names))
        mae_n_mean.append(_number(finite.mean()) if finite.size else None)
    return {'chunks': int(rows.shape[0]), 'chunk_len': int(rows.shape[1]),
            'chunk_step_compared': counts, 'chunk_step_mae': mae,
            'chunk_step_mae_normalized': mae_n, 'chunk_step_mae_normalized_mean': mae_n_mean}


def pool_chunks(parts, dim=len(ACTION_NAMES)):
    """Concatenate (rows, references) (C, L, D) tuples of several bags (one chunk length)."""
    parts = list(parts)
    parts = [p for p in parts if p[0].shape[0]] or parts[:1]  # bags without chunks add none
    if not parts:
        empty = np.zeros((0, 1, dim))
        return empty, empty
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(2))


def latency_summary(latency_ms):
    """Return p50/p95/p99/max of the latencies in ms (None each when there are none)."""
    latency_ms = np.asarray(latency_ms, dtype=np.float64)
    latency_ms = latency_ms[np.isfinite(latency_ms)]
    if latency_ms.size == 0:
        return dict.fromkeys(('p50', 'p95', 'p99', 'max'))
    p50, p95, p99 = np.percentile(latency_ms, [50, 95, 99])
    return {'p50': float(p50), 'p95': float(p95), 'p99': float(p99),
            'max': float(latency_ms.max())}


def pool(parts, dim=len(ACTION_NAMES)):
    """Concatenate (predicted, reference, valid, latency_s) tuples of several bags."""
    parts = list(parts)
    if not parts:
        empty = np.zeros((0, dim))
        return empty, empty, np.zeros(0, bool), np.zeros(0)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def strip_latency(metrics):
    """Return a copy of a metrics.json dict without its ``latency_ms`` entries (any depth)."""
    if isinstance(metrics, dict):
        return {k: strip_latency(v) for k, v in metrics.items() if k != 'latency_ms'}
    if isinstance(metrics, list):
        return [strip_latency(v) for v in metrics]
    return metrics
