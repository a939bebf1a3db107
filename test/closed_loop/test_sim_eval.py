"""vla_sim_eval: the Wilson interval, the result files, bad input, and 2 episodes over DDS."""

import json
import math
import subprocess
import sys

from conftest import REPO
import cv2
import numpy as np
import pytest

from vla_ros.closed_loop import sim_report
from vla_ros.sim import outcomes, tasks
from vla_ros.sim.arm import HOME_POSITION

Z95 = 1.959963984540054  # the normal quantile of 0.975


def score_interval_by_bisection(k, n, z=Z95):
    """Invert the score test numerically: the p with |k/n - p| = z sqrt(p (1 - p) / n)."""
    def rejects(p):
        return abs(k / n - p) > z * math.sqrt(p * (1 - p) / n)

    def edge(inside, outside):
        for _ in range(200):
            mid = (inside + outside) / 2
            if rejects(mid):
                outside = mid
            else:
                inside = mid
        return (inside + outside) / 2
    centre = k / n if 0 < k < n else (1e-12 if k == 0 else 1 - 1e-12)
    low = 0.0 if k == 0 else edge(centre, 0.0)
    high = 1.0 if k == n else edge(centre, 1.0)
    return low, high


@pytest.mark.parametrize('k, n, expected', [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score, no correction).
    (81, 263, (0.2553, 0.3662)), (15, 148, (0.0624, 0.1605)), (0, 20, (0.0, 0.1611)),
    (1, 29, (0.0061, 0.1718)),
])
def test_wilson_interval_matches_the_published_table(k, n, expected):
    assert sim_report.wilson_interval(k, n) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize('k', [0, 1, 5, 30, 49, 50])
def test_wilson_interval_inverts_the_score_test(k):
    low, high = sim_report.wilson_interval(k, 50)
    assert (low, high) == pytest.approx(score_interval_by_bisection(k, 50), abs=1e-9)
    assert 0.0 <= low <= k / 50 <= high <= 1.0


def test_wilson_interval_at_the_edges_and_bad_counts():
    assert sim_report.wilson_interval(0, 50) == pytest.approx((0.0, 0.07135), abs=5e-5)
    assert sim_report.wilson_interval(50, 50) == pytest.approx((0.92865, 1.0), abs=5e-5)
    assert sim_report.wilson_interval(30, 50) == pytest.approx((0.4618, 0.7239), abs=5e-5)
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            sim_report.wilson_interval(k, n)


def test_path_length_and_even_picks():
    assert sim_report.path_length([(0, 0, 0), (0.3, 0.4, 0), (0.3, 0.4, 1.0)]) == \
        pytest.approx(1.5)
    assert sim_report.path_length([(1, 2, 3)]) == 0.0
    assert sim_report.pick_evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert sim_report.pick_evenly([1, 2], 5) == [1, 2]


def episode(index, success, **kw):
    clamps = {'clamped_translation': index, 'clamped_rotation': 0, 'clamped_box': 1}
    return sim_report.Episode(index=index, seed=10 + index, task='reach',
                              object_name='red cube', instruction='reach the red cube',
                              success=success,
                              time_to_success=2.0 + index if success else None,
                              path_length=0.1 * (index + 1), actions=20, clamps=clamps,
                              frame_strip=f'episode_{index:04d}.png', wall_time=6.0, **kw)


def test_results_json_and_summary_md(tmp_path):
    config = {'model': '/m', 'policy': 'openvla', 'unnorm_key': 'k', 'task': 'reach',
              'seed': 10, 'episodes': 3, 'seconds': 5.0, 'rate': 5.0}
    summary = sim_report.write_results(tmp_path, config,
                                       [episode(0, True, closest_approach=0.0),
                                        episode(1, False, closest_approach=0.0512),
                                        episode(2, True, closest_approach=0.0)])
    data = json.loads((tmp_path / 'results.json').read_text())
    assert data['config'] == config and data['summary'] == summary
    assert [e['seed'] for e in data['episodes']] == [10, 11, 12]
    assert [e['success'] for e in data['episodes']] == [True, False, True]
    assert data['episodes'][1]['time_to_success'] is None
    assert summary['successes'] == 2 and summary['success_rate'] == pytest.approx(0.6667)
    assert summary['success_rate_interval'] == pytest.approx(
        sim_report.wilson_interval(2, 3), abs=1e-4)
    assert summary['mean_time_to_success'] == pytest.approx(3.0)
    assert summary['mean_path_length'] == pytest.approx(0.2)
    assert data['episodes'][1]['closest_approach'] == 0.0512
    assert summary['median_closest_approach'] == 0.0
    assert summary['clamps'] == {'clamped_translation': 3, 'clamped_rotation': 0,
                                 'clamped_box': 3}
    text = (tmp_path / 'summary.md').read_text()
    assert '**Success: 2/3 = 66.7% (95% Wilson interval 20.8% .. 93.9%)**' in text
    rows = [line for line in text.splitlines() if line.startswith('| ') and 'reach the' in line]
    assert len(rows) == 3 and '| 11 | reach the red cube | no | - | 0.200 | 0.051 |' in rows[1]
    assert '[episode_0002.png](episode_0002.png)' in rows[2]


def test_frame_strip_puts_the_frames_side_by_side(tmp_path):
    frames = [(f't={i}', np.full((240, 320, 3), 40 * i, np.uint8)) for i in range(5)]
    assert sim_report.frame_strip(frames, 'episode 0', tmp_path / 'strip.png', height=120)
    image = cv2.imread(str(tmp_path / 'strip.png'))
    assert image.shape == (28 + 120, 5 * 160 + 4 * 4, 3)
    assert not sim_report.frame_strip([], 'nothing', tmp_path / 'none.png')
    assert not (tmp_path / 'none.png').exists()


@pytest.mark.parametrize('argv, message', [
    ([], 'the following arguments are required: --model'),
    (['--model', '/no/such/checkpoint'], 'no such checkpoint directory'),
    (['--model', '.', '--episodes', '0'], '--episodes 0: give at least 1'),
    (['--model', '.', '--seconds', '0'], '--seconds 0.0: give a positive number'),
    (['--model', '.', '--task', 'juggle'], "argument --task: invalid choice: 'juggle'"),
    (['--model', '.', '-p', 'chunk_mode=receding'], '-p chunk_mode=receding: write NAME:=VALUE'),
    (['--model', '.', '-p', 'chunk_mod:=receding'],
     "-p chunk_mod:=receding: vla_node has no parameter 'chunk_mod' (did you mean chunk_mode?)"),
    (['--model', '.', '-p', 'frobnicate:=1'], 'its parameters: model_path, unnorm_key'),
    (['--model', '.', '--seed', str(2**64)], 'sim_arm takes seeds up to 9223372036854775807'),
    (['--model', '.', '--start-spread', '0.2'], '--start-spread 0.2: give 0 .. 0.1 m'),
    (['--model', '.', '--seed', str(2**63 - 1), '--episodes', '2'],
     'the episode seeds go up to 9223372036854775808'),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    from vla_ros.closed_loop import sim_eval
    with pytest.raises(SystemExit) as exit_:
        sim_eval.parse_args(argv + ['--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count('\n') == 1 and err.startswith('vla_sim_eval: error: ') and message in err


def test_vla_node_parameters_and_rclpy_ones_are_accepted(tmp_path):
    from vla_ros.closed_loop import sim_eval
    args = sim_eval.parse_args(['--model', '.', '--seed', str(2**63 - 2), '--episodes', '2',
                                '-p', 'chunk_mode:=receding', '-p', 'use_sim_time:=true',
                                '--out', str(tmp_path / 'out')])
    assert args.node_params[-2:] == ['chunk_mode:=receding', 'use_sim_time:=true']


@pytest.mark.dds
@pytest.mark.parametrize('bad', [['--seed', str(2**64)], ['-p', 'chunk_mod:=receding']])
def test_bad_input_starts_no_node(bad, ros_env, tmp_path):
    """As a user runs it: refused at once, one line, exit 2, and no node was started."""
    out = tmp_path / 'eval'
    proc = subprocess.run([sys.executable, '-m', 'vla_ros.closed_loop.sim_eval', '--model',
                           str(tmp_path), '--episodes', '2', '--out', str(out), *bad],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith('vla_sim_eval: error: ') and proc.stderr.count('\n') == 1
    assert not list(out.glob('*.log')), 'a node was started'


@pytest.mark.dds
def test_two_episodes_end_to_end_over_dds(launch, tiny_checkpoint, tmp_path):
    """The runner starts the three nodes, resets between episodes and writes every file."""
    out = tmp_path / 'eval'
    runner = launch(sys.executable, '-m', 'vla_ros.closed_loop.sim_eval',
                    '--model', tiny_checkpoint,
                    '--unnorm-key', 'synth_bridge', '--episodes', '2', '--seed', '7', '--task',
                    'reach', '--seconds', '4', '--start-spread', '0.06', '--out', str(out))
    assert runner.wait_exit(timeout=150.0) == 0, runner.output()
    data = json.loads((out / 'results.json').read_text())
    assert [e['seed'] for e in data['episodes']] == [7, 8], runner.output()
    for e in data['episodes']:
        expected = tasks.episode(e['seed'], 'reach')
        assert (e['task'], e['object'], e['instruction']) == \
            (expected.task, expected.object, expected.instruction)
        assert e['object'] in e['instruction']
        assert isinstance(e['success'], bool)
        assert (e['closest_approach'] == 0.0) == e['success'] and e['closest_approach'] >= 0.0
        assert e['actions'] > 0 and e['path_length'] > 0.0
        # sim_arm started the gripper at the seed's place within --start-spread of home.
        start = HOME_POSITION + tasks.start_offset(e['seed'], 0.06)
        assert np.allclose(e['start_position'], start, atol=0.01), e['start_position']
        assert np.linalg.norm(start - HOME_POSITION) > 0.02
        assert set(e['clamps']) == set(sim_report.CLAMPS)
        assert e['failure'] in outcomes.CATEGORIES, e
        assert (e['failure'] == 'success') == e['success'] and isinstance(e['failure_detail'], str)
        assert all(isinstance(v, int) and v >= 0 for v in e['clamps'].values())
        strip = cv2.imread(str(out / e['frame_strip']))
        assert strip is not None and strip.shape[1] > 3 * strip.shape[0], e['frame_strip']
    summary = data['summary']
    assert summary['episodes'] == 2 and summary['confidence'] == 0.95
    assert summary['success_rate_interval'] == pytest.approx(
        sim_report.wilson_interval(summary['successes'], 2), abs=1e-4)
    assert (out / 'summary.md').read_text().count('| reach the ') == 2
    assert sum(summary['outcomes'].values()) == 2 and sum(
        n for _, n in summary['per_object'].values()) == 2
    for name in ('sim_arm.log', 'vla_node.log', 'arm_bridge.log'):
        assert (out / name).is_file()
    assert 'vla_sim_eval: success ' in runner.output()
    assert 'Traceback' not in runner.output(), 'its ROS participant stops cleanly'
