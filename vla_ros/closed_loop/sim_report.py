"""
vla_sim_eval's results: per-episode records, the success rate's Wilson interval, the files.

Each episode carries its ``failure`` category and ``failure_detail`` (``vla_ros.sim.outcomes``);
the summary counts them (``outcomes``) and the successes per named object (``per_object``).
``fisher_exact`` is the exact test ``sim_compare`` puts between two runs.

ROS-free (the runner is ``vla_ros.closed_loop.sim_eval``). ``results.json`` is ``{'config': {...},
'episodes': [{...}, ...], 'summary': {...}}`` with sorted keys; ``summary.md`` is the same as a
table; ``episode_NNNN.png`` is one frame strip per episode (camera frames across the episode, side
by side, each labelled with its time since the instruction).
"""

import dataclasses
import json
import math
from pathlib import Path
import statistics

import cv2
import numpy as np

from vla_ros.sim.outcomes import CATEGORIES
from vla_ros.sim.tasks import REACH_REGION

CLAMPS = ('clamped_translation', 'clamped_rotation', 'clamped_box')


def wilson_interval(successes, trials, confidence=0.95):
    """
    Return the Wilson score interval (low, high) of a binomial proportion.

    The set of p where the score test does not reject: |k/n - p| <= z sqrt(p (1 - p) / n), z the
    normal quantile of (1 + confidence) / 2. Unlike the normal approximation it stays inside
    [0, 1] and is not empty at 0 or n successes.
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f'need 0 <= successes <= trials and trials > 0, got {successes}/{trials}')
    z = statistics.NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    p, n, z2 = successes / trials, trials, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def fisher_exact(a_successes, a_trials, b_successes, b_trials):
    """
    Return the two-sided p-value of Fisher's exact test of two success counts.

    The 2x2 table [[a_successes, a_failures], [b_successes, b_failures]] with its margins fixed
    follows the hypergeometric distribution; the p-value sums the probabilities of every table
    no more probable than the observed one, as ``scipy.stats.fisher_exact`` does (a table counts
    when its probability is at most the observed one times 1 + 1e-14, scipy's tolerance).
    Integer arithmetic: the hypergeometric weights are exact binomial-coefficient products.
    """
    counts = (a_successes, a_trials, b_successes, b_trials)
    if any(int(c) != c for c in counts) or not (0 <= a_successes <= a_trials
                                                and 0 <= b_successes <= b_trials):
        raise ValueError(f'need integer counts 0 <= successes <= trials, got {a_successes}/'
                         f'{a_trials} and {b_successes}/{b_trials}')
    a_successes, a_trials, b_successes, b_trials = map(int, counts)
    successes = a_successes + b_successes
    # The tables with these margins: k successes in a, successes - k in b.
    weights = {k: math.comb(a_trials, k) * math.comb(b_trials, successes - k)
               for k in range(max(0, successes - b_trials), min(a_trials, successes) + 1)}
    observed = weights[a_successes]
    scale = 10 ** 14  # w <= observed * (1 + 1e-14), exactly
    tail = sum(w for w in weights.values() if w * scale <= observed * (scale + 1))
    return min(1.0, tail / sum(weights.values()))


def path_length(points):
    """Return the length (m) of a polyline of (N, 3) positions; 0 for fewer than two."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) < 2:
        return 0.0
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


@dataclasses.dataclass
class Episode:
    """What one episode of vla_sim_eval measured; times in seconds, lengths in metres."""

    index: int
    seed: int
    task: str
    object_name: str  # 'object' in results.json
    instruction: str
    success: bool
    time_to_success: float = None  # sim's time since reset at success (None: no success)
    instruction_time: float = None  # sim's time since reset when the instruction went out
    duration: float = 0.0  # wall seconds from the instruction to the stop
    path_length: float = 0.0  # end effector, from ee_pose over the episode
    # The fingertips' smallest distance from reach's success region (tasks.reach_miss), m:
    # 0 on success; None without sim/task.
    closest_approach: float = None
    actions: int = 0  # vla/action messages received during the episode
    clamps: dict = None  # {counter: arm_bridge diagnostics delta} (None: no diagnostics)
    frame_strip: str = ''  # file name beside results.json
    wall_time: float = 0.0  # wall seconds of the whole episode, resets included
    failure: str = ''  # outcomes.CATEGORIES: 'success' or why it failed ('' not classified)
    failure_detail: str = ''  # the numbers behind the category
    start_position: list = None  # the end effector's first ee_pose of the episode (x, y, z), m

    def to_dict(self):
        """Return a JSON-ready dict (rounded floats)."""
        out = dataclasses.asdict(self)
        out['object'] = out.pop('object_name')
        for key in ('time_to_success', 'instruction_time', 'duration', 'path_length',
                    'closest_approach', 'wall_time'):
            if out[key] is not None:
                out[key] = round(float(out[key]), 4)
        return out


def per_object(pairs):
    """Return ``{object: [successes, episodes]}``, sorted by name, of (object, success) pairs."""
    counts = {}
    for name, success in pairs:
        counts.setdefault(name, [0, 0])
        counts[name][0] += int(success)
        counts[name][1] += 1
    return dict(sorted(counts.items()))


def summarize(episodes, confidence=0.95):
    """Return the summary of a list of ``Episode``: success rate and interval, means, totals."""
    n = len(episodes)
    wins = [e for e in episodes if e.success]
    times = [e.time_to_success for e in wins if e.time_to_success is not None]
    closest = [e.closest_approach for e in episodes if e.closest_approach is not None]
    low, high = wilson_interval(len(wins), n, confidence) if n else (None, None)
    clamps = {name: sum(e.clamps[name] for e in episodes if e.clamps) for name in CLAMPS}

    def mean(values):
        return round(float(np.mean(values)), 4) if values else None

    return {
        'episodes': n,
        'successes': len(wins),
        'success_rate': round(len(wins) / n, 4) if n else None,
        'confidence': confidence,
        'success_rate_interval': [round(low, 6), round(high, 6)] if n else None,
        'interval_method': 'wilson score',
        'mean_time_to_success': mean(times),
        'median_time_to_success': round(float(np.median(times)), 4) if times else None,
        'mean_path_length': mean([e.path_length for e in episodes]),
        'median_closest_approach': (round(float(np.median(closest)), 4) if closest else None),
        'mean_actions': mean([e.actions for e in episodes]),
        'clamps': clamps,
        'mean_wall_time_per_episode': mean([e.wall_time for e in episodes]),
        'outcomes': outcome_counts([e.failure for e in episodes]),
        'per_object': per_object((e.object_name, e.success) for e in episodes),
    }


def outcome_counts(categories):
    """Return ``{category: count}`` in ``CATEGORIES`` order (every one), then any other seen."""
    counts = dict.fromkeys(CATEGORIES, 0)
    for c in categories:
        counts[c or 'unclassified'] = counts.get(c or 'unclassified', 0) + 1
    return counts


def rate_cell(successes, trials):
    """Return 'k/n = r% (low .. high%)' with the 95% Wilson interval; '-' for no trial."""
    if not trials:
        return '-'
    low, high = wilson_interval(successes, trials)
    return (f'{successes}/{trials} = {successes / trials * 100:.1f}% '
            f'({low * 100:.1f} .. {high * 100:.1f}%)')


def breakdown_markdown(summaries, names):
    """
    Return the per-object and per-category tables of one or more summaries, side by side.

    ``summaries``: summary dicts (``summarize``'s ``per_object`` and ``outcomes``); ``names``:
    a column title for each.
    """
    head = ' | '.join(names)
    objects = sorted({o for s in summaries for o in s.get('per_object', {})})
    lines = ['| object | ' + head + ' |', '|---|' + '---:|' * len(names)]
    for o in objects:
        cells = [rate_cell(*s.get('per_object', {}).get(o, (0, 0))) for s in summaries]
        lines.append(f'| {o} | ' + ' | '.join(cells) + ' |')
    categories = list(dict.fromkeys(c for s in summaries for c in s.get('outcomes', {})))
    lines += ['', '| outcome | ' + head + ' |', '|---|' + '---:|' * len(names)]
    for c in categories:
        cells = []
        for s in summaries:
            count, n = s.get('outcomes', {}).get(c, 0), s.get('episodes') or 0
            cells.append(f'{count} ({count / n * 100:.0f}%)' if n else '-')
        lines.append(f'| {c} | ' + ' | '.join(cells) + ' |')
    return lines


def _fmt(value, digits=2):
    return '-' if value is None else f'{value:.{digits}f}'


def summary_markdown(config, episodes, summary):
    """Return summary.md's text: the run, the success rate with its interval, one row each."""
    low, high = summary['success_rate_interval'] or (None, None)
    rate = summary['success_rate']
    lines = [
        '# vla_sim_eval',
        '',
        f"model `{config.get('model')}` (policy {config.get('policy')}, unnorm key "
        f"`{config.get('unnorm_key') or '(the only one)'}`), task {config.get('task')}, "
        f"{summary['episodes']} episodes from seed {config.get('seed')}, at most "
        f"{config.get('seconds')} s each, vla_node at {config.get('rate')} Hz.",
        '',
        f"**Success: {summary['successes']}/{summary['episodes']}"
        + (f' = {rate * 100:.1f}% (95% Wilson interval {low * 100:.1f}% .. {high * 100:.1f}%)'
           if rate is not None else '') + '**; mean time to success '
        f"{_fmt(summary['mean_time_to_success'])} s, mean path length "
        f"{_fmt(summary['mean_path_length'], 3)} m, median closest approach to the reach "
        f"region {_fmt(summary['median_closest_approach'], 3)} m, clamped (translation / "
        'rotation / box) '
        + ' / '.join(str(summary['clamps'][c]) for c in CLAMPS) + '.',
        '',
        '| episode | seed | instruction | success | time to success (s) | path (m) '
        '| closest (m) | actions | clamped t / r / box | outcome | frames |',
        '|---:|---:|---|:---:|---:|---:|---:|---:|---:|---|---|',
    ]
    for e in episodes:
        clamps = ' / '.join(str(e.clamps[c]) for c in CLAMPS) if e.clamps else '-'
        lines.append(
            f'| {e.index} | {e.seed} | {e.instruction} | {"yes" if e.success else "no"} '
            f'| {_fmt(e.time_to_success)} | {e.path_length:.3f} '
            f'| {_fmt(e.closest_approach, 3)} | {e.actions} | {clamps} '
            f'| {e.failure or "-"}{f": {e.failure_detail}" if e.failure_detail else ""} '
            f'| [{e.frame_strip}]({e.frame_strip}) |')
    lines += ['', 'Time to success: simulated seconds from the reset to the first success '
              '(the instruction goes out a fraction of a second after the reset). Closest: the '
              f"fingertips' smallest distance from the reach success region ({REACH_REGION}), "
              '0 on success. Outcome: why an episode failed (docs/closed_loop.md, '
              '"Failure categories").', '', '## Per object and per outcome', '']
    lines += breakdown_markdown([summary], ['this run']) + ['']
    return '\n'.join(lines)


def write_results(out, config, episodes, confidence=0.95):
    """Write ``results.json`` and ``summary.md`` into ``out``; return the summary dict."""
    out = Path(out)
    summary = summarize(episodes, confidence)
    data = {'config': config, 'episodes': [e.to_dict() for e in episodes], 'summary': summary}
    (out / 'results.json').write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')
    (out / 'summary.md').write_text(summary_markdown(config, episodes, summary))
    return summary


def frame_strip(frames, title, path, height=180):
    """
    Save RGB frames side by side under a title band as a PNG.

    ``frames``: a list of (label, (H, W, 3) uint8 RGB); each is scaled to ``height`` and gets its
    label in its top-left corner. Returns False (nothing written) when there is no frame.
    """
    if not frames:
        return False
    tiles = []
    for label, rgb in frames:
        rgb = np.asarray(rgb, dtype=np.uint8)
        width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
        tile = np.ascontiguousarray(cv2.resize(rgb, (width, height),
                                               interpolation=cv2.INTER_AREA))
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3,
                    cv2.LINE_AA)
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(tile)
        tiles.append(np.full((height, 4, 3), 255, np.uint8))  # a white gap
    strip = np.concatenate(tiles[:-1], axis=1)
    band = np.full((28, strip.shape[1], 3), 255, np.uint8)
    cv2.putText(band, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    image = np.concatenate([band, strip], axis=0)
    return bool(cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)))


def pick_evenly(items, count):
    """Return ``count`` items spread evenly over ``items``, the first and the last included."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[-1]]
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]
