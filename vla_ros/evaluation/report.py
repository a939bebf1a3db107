"""
vla_eval's outputs: ``metrics.json``, one PNG per bag, ``summary.md``, and the predictions bags.

``metrics.json`` is ``{'bags': {name: {...}}, 'overall': {...}, 'config': {...}}`` with sorted keys
and nothing that changes between identical runs except the ``latency_ms`` entries; each bag and
``overall`` hold ``counts`` (steps by status) and ``metrics`` (see ``metrics.py``).

``metrics`` also holds the per-chunk-step errors (``metrics.chunk_steps``).

A predictions bag (``--write-bag``) holds what the live node publishes on its topics, logged at
the step time: for every committed chunk ``/vla/action_chunk`` (Float64MultiArray, dims ``step``
x the action labels), and for every step with a valid action
``/vla/ee_delta`` (PoseStamped stamped with the header stamp of the primary image the
action came from, frame ``base_link``), ``/vla/gripper`` and ``/vla/action``, filled from the
node's own layout (``control.action_layout.action_fields``, ``chunk_fields``) in the bag library's
classes (``bags.action_messages``), so ``--write-bag`` needs no ROS install; at one step the
chunk comes first, as the node publishes it. ``ros2 bag play --clock`` plays them to arm_bridge.
"""

import json
import os
from pathlib import Path
import shutil
import tempfile

import numpy as np

from vla_ros.evaluation import metrics as metric_lib
from vla_ros.evaluation.options import EvalError
from vla_ros.recordings.bags import action_messages, BagWriter, chunk_message

OUTPUT_TOPICS = ('/vla/ee_delta', '/vla/gripper', '/vla/action')
CHUNK_TOPIC = '/vla/action_chunk'
UNITS = ('m', 'm', 'm', 'rad', 'rad', 'rad', '')


def prepare_out_dir(path):
    """
    Create ``path`` (and parents) and check that files can be written there.

    Every process of an ``accelerate launch`` checks at once: each writes its own probe file.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix='.vla_eval_write_test'):
            pass
    except OSError as exc:
        raise EvalError(f'cannot write to output directory {str(path)!r}: {exc.strerror or exc}; '
                        'pass --out with a directory you can write to') from None
    return path


def action_names(config):
    """Return the action dimensions' names of a run (``config['action_names']``; 7-D deltas)."""
    return tuple(config.get('action_names') or metric_lib.ACTION_NAMES)


def build_metrics(results, action_range, config):
    """Return the metrics.json dict for the ``BagResult``s (pooled overall, see metrics.py)."""
    names = action_names(config)
    bags = {}
    parts, chunk_parts = [], []
    totals = {}
    for result in results:
        inputs, chunk_inputs = result.metric_inputs(), result.chunk_inputs()
        parts.append(inputs)
        chunk_parts.append(chunk_inputs)
        counts = result.counts()
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        bags[result.name] = {'path': result.path, 'storage': result.storage, 'counts': counts,
                             'metrics': {**metric_lib.compute(*inputs, action_range, names),
                                         **metric_lib.chunk_steps(*chunk_inputs, action_range,
                                                                  names)}}
    overall = {'bags': len(results), 'counts': totals,
               'metrics': {**metric_lib.compute(*metric_lib.pool(parts, len(names)),
                                                action_range, names),
                           **metric_lib.chunk_steps(*metric_lib.pool_chunks(chunk_parts,
                                                                            len(names)),
                                                    action_range, names)}}
    return {'bags': bags, 'overall': overall, 'config': config}


def write_json(path, data):
    """Write ``data`` as strict, sorted, indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + '\n')


def plot_bag(result, path, names=metric_lib.ACTION_NAMES):
    """Write a PNG: predicted against reference, one panel per action dimension, over time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = (result.time_ns - (result.time_ns[0] if len(result.time_ns) else 0)) * 1e-9  # (K,)
    mask = result.predicted_mask
    ok = mask & result.valid
    bad = mask & ~result.valid
    fig = Figure(figsize=(10, 13 * len(names) / 7), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, sharex=True)
    units = UNITS if tuple(names) == metric_lib.ACTION_NAMES else ('',) * len(names)
    period = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    for i, (ax, name) in enumerate(zip(axes, names)):
        if result.chunk_len > 1:  # every chunk's rows at the steps they are for, faint
            for c, (start, rows) in enumerate(zip(result.chunk_start, result.chunks)):
                ax.plot(t[0] + (start + np.arange(len(rows))) * period if len(t) else [],
                        rows[:, i], color='tab:orange', alpha=0.35, linewidth=0.8,
                        label='chunks' if c == 0 else None)
        ax.plot(t, result.reference[:, i], color='tab:gray', marker='.', label='reference')
        ax.plot(t[ok], result.predicted[ok, i], color='tab:blue', marker='o', markersize=3,
                linestyle='-', label='predicted')
        if bad.any():
            ax.plot(t[bad], result.predicted[bad, i], color='tab:red', marker='x', linestyle='',
                    label='invalid')
        ax.set_ylabel(f'{name} [{units[i]}]' if units[i] else name)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc='upper right', fontsize='small')
    axes[-1].set_xlabel('step time since the first frame [s]')
    fig.suptitle(f'{result.name}: predicted vs reference')
    fig.savefig(path, dpi=80)


def _fmt(value, digits=4):
    return '–' if value is None else f'{value:.{digits}g}'


def summary_markdown(data, plots):
    """Return the short Markdown summary of a metrics.json dict; ``plots`` maps bag -> PNG name."""
    cfg = data['config']
    names = action_names(cfg)
    cameras = ', '.join(f'`{t}`' for t in cfg.get('camera_topics', [cfg.get('image_topic')]))
    lines = ['# vla_eval summary', '',
             f"model `{cfg['model']}` ({cfg.get('policy', 'openvla')}), unnorm_key "
             f"`{cfg['unnorm_key']}`, reference `{cfg['reference']}`, {cfg['rate_hz']} Hz, "
             f'image topic(s) {cameras}', '',
             '| bag | steps | predicted | idle | stale | refused images | skewed / bad state | '
             'chunks | invalid rate | compared | mean norm. MAE | transl. cosine | '
             'gripper agree | latency p50 / p95 ms |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    rows = [(name, bag) for name, bag in data['bags'].items()]
    rows.append(('**overall**', data['overall']))
    for name, entry in rows:
        c, m = entry['counts'], entry['metrics']
        lat = m['latency_ms']
        lines.append(f"| {name} | {c['steps']} | {c['predicted']} | {c['idle']} | "
                     f"{c['stale'] + c['future']} | {c['bad_image']} | "
                     f"{c.get('skewed', 0)} / {c.get('bad_state', 0)} | {c.get('chunks', 0)} | "
                     f"{_fmt(m['invalid_rate'], 3)} | "
                     f"{m['steps_compared']} | {_fmt(m['mae_normalized_mean'])} | "
                     f"{_fmt(m['translation_cosine'], 3)} | {_fmt(m['gripper_agreement'], 3)} | "
                     f"{_fmt(lat['p50'], 3)} / {_fmt(lat['p95'], 3)} |")
    m = data['overall']['metrics']
    lines += ['', '## Error per dimension (all bags pooled)', '',
              '| dim | MAE | RMSE | MAE / (q99−q01) | RMSE / (q99−q01) |', '|---|---|---|---|---|']
    for name in names:
        lines.append(f"| {name} | {_fmt(m['mae'][name])} | {_fmt(m['rmse'][name])} | "
                     f"{_fmt(m['mae_normalized'][name])} | {_fmt(m['rmse_normalized'][name])} |")
    if m.get('chunk_len', 1) > 1:
        lines += ['', '## Error per chunk step (all bags pooled)', '',
                  f"Row j of each of the {m['chunks']} committed chunks against the reference "
                  'of the j-th step after the step of its row 0.', '',
                  '| j | compared | ' + ' | '.join(f'MAE {n}' for n in names)
                  + ' | mean norm. MAE |',
                  '|---' * (len(names) + 3) + '|']
        for j, (count, mae) in enumerate(zip(m['chunk_step_compared'], m['chunk_step_mae'])):
            lines.append(f'| {j} | {count} | '
                         + ' | '.join(_fmt(mae[n]) for n in names)
                         + f" | {_fmt(m['chunk_step_mae_normalized_mean'][j])} |")
    if plots:
        lines += ['', '## Plots', '']
        lines += [f'![{name}]({png})' for name, png in plots.items()]
    return '\n'.join(lines) + '\n'


def _check_replaceable(path):
    """Raise unless ``path`` is free or holds a bag (which a new predictions bag replaces)."""
    if path.exists() and not (path / 'metadata.yaml').exists():
        raise EvalError(f'{str(path)!r} exists and is not a bag; move it away or choose another '
                        '--out')


def check_outputs(out_dir, names, write_bag):
    """
    Fail before the run on what writing the outputs of the bags ``names`` needs.

    The plots need matplotlib; with ``write_bag`` each ``predictions_<name>`` must be free or a
    bag. The predictions bags need nothing else: their messages are the bag library's own.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:
        raise EvalError(f'the plots need matplotlib ({exc}); install the eval extra: pip install '
                        "'vla_ros[eval]' (or pip install -r requirements-eval.txt)") from None
    for name in names if write_bag else ():
        for path in (Path(out_dir) / f'predictions_{name}',
                     Path(out_dir) / f'predictions_{name}.partial'):
            _check_replaceable(path)


def write_predictions_bag(result, path, frame, storage=None):
    """
    Write the steps' chunks and actions as a bag on the live node's topics (replaces ``path``).

    ``frame``: the deltas' frame_id, vla_node's ``action_frame`` (``--action-frame``). Returns
    the number of actions written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + '.partial')
    for old in (tmp, path):
        _check_replaceable(old)
        if old.exists():
            shutil.rmtree(old)
    written = 0
    chunks = dict(zip(result.chunk_step.tolist(), result.chunks))
    with BagWriter(tmp, storage or result.storage) as writer:
        for k in sorted(set(np.flatnonzero(result.valid).tolist()) | set(chunks)):
            log_ns = int(result.time_ns[k])
            if k in chunks:
                writer.write(CHUNK_TOPIC, log_ns, chunk_message(chunks[k]))
            if not result.valid[k]:
                continue
            messages = action_messages(result.predicted[k], int(result.action_stamp_ns[k]),
                                       frame)
            for topic, msg in zip(OUTPUT_TOPICS, messages):
                writer.write(topic, log_ns, msg)
            written += 1
    os.replace(tmp, path)
    return written


def write_outputs(out_dir, results, action_range, config, write_bag=False):
    """Write metrics.json, the plots, summary.md and (optionally) the predictions bags."""
    out_dir = Path(out_dir)
    data = build_metrics(results, action_range, config)
    write_json(out_dir / 'metrics.json', data)
    plots = {}
    for result in results:
        png = f'{result.name}.png'
        plot_bag(result, out_dir / png, action_names(config))
        plots[result.name] = png
    (out_dir / 'summary.md').write_text(summary_markdown(data, plots))
    written = {}
    if write_bag:
        for result in results:
            written[result.name] = write_predictions_bag(
                result, out_dir / f'predictions_{result.name}', config['action_frame'])
    return data, written
