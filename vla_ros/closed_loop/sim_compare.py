"""
Two vla_sim_eval runs side by side: success rates, Fisher's exact test, per object, per outcome.

ROS-free; ``vla_sim_eval --compare A B [--out DIR]`` runs it (A, B: result files or the run
directories holding them). The counts come from each file's episodes, so a file written before
episodes were classified still compares (its outcomes read ``unclassified``).
"""

import json
from pathlib import Path
import sys

from vla_ros.closed_loop import sim_report

OUT_NAME = 'comparison.md'
# The settings that make the episodes what they are: runs that differ in one compare two
# policies on different episodes (still a valid test of the rates, but say so).
EPISODE_SETTINGS = ('task', 'seed', 'episodes', 'seconds', 'start_spread')


class ResultsError(ValueError):
    """A result file that cannot be compared; the text names the file and the fix."""


def load(path):
    """
    Return ``{'path', 'config', 'summary'}`` of a results.json (or the directory holding one).

    The summary is recomputed from the episodes (``episodes``, ``successes``, ``per_object``,
    ``outcomes``). ResultsError when the file is missing, not JSON, or has no episodes.
    """
    path = Path(path)
    file = path / 'results.json' if path.is_dir() else path
    fix = 'give a results.json that vla_sim_eval --out DIR wrote (or DIR)'
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise ResultsError(f'{file}: cannot read it ({exc.strerror}); {fix}') from exc
    except ValueError as exc:
        raise ResultsError(f'{file}: not JSON ({exc}); {fix}') from exc
    episodes = data.get('episodes') if isinstance(data, dict) else None
    if not episodes or not isinstance(episodes, list) or not all(
            isinstance(e, dict) and isinstance(e.get('success'), bool) for e in episodes):
        raise ResultsError(f'{file}: no episodes with a success field; {fix}')
    summary = {'episodes': len(episodes), 'successes': sum(e['success'] for e in episodes),
               'per_object': sim_report.per_object((str(e.get('object', '?')), e['success'])
                                                   for e in episodes),
               'outcomes': sim_report.outcome_counts(e.get('failure', '') for e in episodes)}
    return {'path': str(file), 'config': data.get('config') or {}, 'summary': summary}


def compare(a, b):
    """Return (markdown text, p-value) comparing two ``load`` results."""
    sa, sb = a['summary'], b['summary']
    p = sim_report.fisher_exact(sa['successes'], sa['episodes'], sb['successes'],
                                sb['episodes'])
    lines = ['# vla_sim_eval: two runs compared', '',
             '| run | file | model | seeds | start | success |', '|---|---|---|---|---|---:|']
    for name, run in (('A', a), ('B', b)):
        s, config = run['summary'], run['config']
        seed, spread = config.get('seed'), config.get('start_spread', 0.0)
        seeds = f'{seed}-{seed + s["episodes"] - 1}' if isinstance(seed, int) else '?'
        start = f'within {spread:g} m of home' if spread else 'home'
        lines.append(f'| {name} | `{run["path"]}` | `{config.get("model", "?")}` | {seeds} '
                     f'| {start} | {sim_report.rate_cell(s["successes"], s["episodes"])} |')
    lines += ['', f"**Fisher's exact test (two-sided), A vs B: p = {p:.4g}**", '',
              'Rates with 95% Wilson intervals.', '']
    differ = [f'{key} ({a["config"].get(key)!r} and {b["config"].get(key)!r})'
              for key in EPISODE_SETTINGS if a['config'].get(key) != b['config'].get(key)]
    if differ:
        lines += [f'Note: the runs differ in {", ".join(differ)}, so they are not the same '
                  'episodes.', '']
    lines += sim_report.breakdown_markdown([sa, sb], ['A', 'B']) + ['']
    return '\n'.join(lines), p


def main(paths, out=None):
    """Print the comparison of two result files (and write DIR/comparison.md); exit status."""
    try:
        runs = [load(p) for p in paths]
    except ResultsError as exc:
        print(f'vla_sim_eval: error: --compare {exc}', file=sys.stderr)
        return 2
    text, _ = compare(*runs)
    print(text, end='', flush=True)
    if out is not None:  # vla_sim_eval's parse_args made sure DIR can be written
        (Path(out) / OUT_NAME).write_text(text)
    return 0
