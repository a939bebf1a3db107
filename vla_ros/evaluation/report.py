"""
vla_eval's outputs: ``metrics.json``, one PNG per bag, ``summary.md``, and the predictions bags.

``metrics.json`` is ``{'bags': {name: {...}}, 'overall': {...}, 'config': {...}}`` with sorted keys
and nothing that changes between identical runs except the ``latency_ms`` entries; each bag and
``overall`` hold ``counts`` (steps by status) and ``metrics`` (see ``metrics.py``).

A predictions bag (``--write-bag``) holds, for every step with a valid action, what the live node
publishes on its topics, logged at the step time: ``/vla/ee_delta`` (PoseStamped stamped with the
image's header stamp, frame ``base_link``), ``/vla/gripper`` and ``/vla/action``, built by the
node's own ``vla_ros.nodes.messages.action_to_messages``. ``ros2 bag play --clock`` plays them to
arm_bridge.
"""

import json
import os
from pathlib import Path
import shutil

import numpy as np

from vla_ros.evaluation import metrics as metric_lib
from vla_ros.evaluation.bags import BagWriter, EvalError

ACTION_FRAME = 'base_link'  # vla_node's default action_frame
OUTPUT_TOPICS = ('/vla/ee_delta', '/vla/gripper', '/vla/action')
UNITS = ('m', 'm', 'm', 'rad', 'rad', 'rad', '')


def prepare_out_dir(path):
    """Create ``path`` (and parents) and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / '.vla_eval_write_test'
        probe.write_bytes(b'')
        probe.unlink()
    except OSError as exc:
        raise EvalError(f'cannot write to output directory {str(path)!r}: {exc.strerror or exc}; '
                        'pass --out with a directory you can write to') from None
    return path


def build_metrics(results, action_range, config):
    """Return the metrics.json dict for the ``BagResult``s (pooled overall, see metrics.py)."""
    bags = {}
    parts = []
    totals = {}
    for result in results:
        inputs = result.metric_inputs()
        parts.append(inputs)
        counts = result.counts()
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        bags[result.name] = {'path': result.path, 'storage': result.storage, 'counts': counts,
                             'metrics': metric_lib.compute(*inputs, action_range)}
    overall = {'bags': len(results), 'counts': totals,
               'metrics': metric_lib.compute(*metric_lib.pool(parts), action_range)}
    return {'bags': bags, 'overall': overall, 'config': config}


def write_json(path, data):
    """Write ``data`` as strict, sorted, indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + '\n')


def plot_bag(result, path):
    """Write a PNG: predicted against reference, one panel per action dimension, over time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = (result.time_ns - (result.time_ns[0] if len(result.time_ns) else 0)) * 1e-9  # (K,)
    mask = result.predicted_mask
    ok = mask & result.valid
    bad = mask & ~result.valid
    fig = Figure(figsize=(10, 13), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metric_lib.ACTION_NAMES), 1, sharex=True)
    for i, (ax, name) in enumerate(zip(axes, metric_lib.ACTION_NAMES)):
        ax.plot(t, result.reference[:, i], color='tab:gray', marker='.', label='reference')
        ax.plot(t[ok], result.predicted[ok, i], color='tab:blue', marker='o', markersize=3,
                linestyle='-', label='predicted')
        if bad.any():
            ax.plot(t[bad], result.predicted[bad, i], color='tab:red', marker='x', linestyle='',
                    label='invalid')
        ax.set_ylabel(f'{name} [{UNITS[i]}]' if UNITS[i] else name)
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
    lines = ['# vla_eval summary', '',
             f"model `{cfg['model']}`, unnorm_key `{cfg['unnorm_key']}`, reference "
             f"`{cfg['reference']}`, {cfg['rate_hz']} Hz, image topic `{cfg['image_topic']}`", '',
             '| bag | steps | predicted | idle | stale | refused images | invalid rate | '
             'compared | mean norm. MAE | transl. cosine | gripper agree | latency p50 / p95 ms |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    rows = [(name, bag) for name, bag in data['bags'].items()]
    rows.append(('**overall**', data['overall']))
    for name, entry in rows:
        c, m = entry['counts'], entry['metrics']
        lat = m['latency_ms']
        lines.append(f"| {name} | {c['steps']} | {c['predicted']} | {c['idle']} | "
                     f"{c['stale'] + c['future']} | {c['bad_image']} | "
                     f"{_fmt(m['invalid_rate'], 3)} | "
                     f"{m['steps_compared']} | {_fmt(m['mae_normalized_mean'])} | "
                     f"{_fmt(m['translation_cosine'], 3)} | {_fmt(m['gripper_agreement'], 3)} | "
                     f"{_fmt(lat['p50'], 3)} / {_fmt(lat['p95'], 3)} |")
    m = data['overall']['metrics']
    lines += ['', '## Error per dimension (all bags pooled)', '',
              '| dim | MAE | RMSE | MAE / (q99−q01) | RMSE / (q99−q01) |', '|---|---|---|---|---|']
    for name in metric_lib.ACTION_NAMES:
        lines.append(f"| {name} | {_fmt(m['mae'][name])} | {_fmt(m['rmse'][name])} | "
                     f"{_fmt(m['mae_normalized'][name])} | {_fmt(m['rmse_normalized'][name])} |")
    if plots:
        lines += ['', '## Plots', '']
        lines += [f'![{name}]({png})' for name, png in plots.items()]
    return '\n'.join(lines) + '\n'


def write_predictions_bag(result, path, storage=None):
    """
    Write the steps' valid actions as a bag on the live node's output topics (replaces ``path``).

    Returns the number of actions written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + '.partial')
    for old in (tmp, path):
        if old.exists():
            if not (old / 'metadata.yaml').exists():
                raise EvalError(f'{str(old)!r} exists and is not a bag; move it away or choose '
                                'another --out')
            shutil.rmtree(old)
    from vla_ros.nodes.messages import action_to_messages  # ROS message classes: only here

    written = 0
    with BagWriter(tmp, storage or result.storage) as writer:
        for k in np.flatnonzero(result.predicted_mask & result.valid):
            stamp_ns = int(result.image_stamp_ns[k])
            stamp = _time_msg(stamp_ns)
            pose, gripper, raw = action_to_messages(result.predicted[k], stamp, ACTION_FRAME)
            log_ns = int(result.time_ns[k])
            for topic, msg in zip(OUTPUT_TOPICS, (pose, gripper, raw)):
                writer.write(topic, log_ns, msg)
            written += 1
    os.replace(tmp, path)
    return written


def _time_msg(ns):
    from builtin_interfaces.msg import Time
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def write_outputs(out_dir, results, action_range, config, write_bag=False):
    """Write metrics.json, the plots, summary.md and (optionally) the predictions bags."""
    out_dir = Path(out_dir)
    data = build_metrics(results, action_range, config)
    write_json(out_dir / 'metrics.json', data)
    plots = {}
    for result in results:
        png = f'{result.name}.png'
        plot_bag(result, out_dir / png)
        plots[result.name] = png
    (out_dir / 'summary.md').write_text(summary_markdown(data, plots))
    written = {}
    if write_bag:
        for result in results:
            written[result.name] = write_predictions_bag(
                result, out_dir / f'predictions_{result.name}')
    return data, written
