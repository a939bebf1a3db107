"""Two vla_sim_eval runs compared: Fisher's exact test against scipy's, the --compare command."""

import json

import pytest

from vla_ros.closed_loop import sim_eval, sim_report

stats = pytest.importorskip('scipy.stats')  # the dev extra; the package itself never imports it


@pytest.mark.parametrize('a, n, b, m', [
    (0, 50, 40, 50), (40, 50, 0, 50), (25, 50, 25, 50), (50, 50, 50, 50), (0, 50, 0, 50),
    (5, 50, 0, 50), (7, 30, 3, 30), (1, 2, 0, 1), (3, 10, 9, 12), (0, 0, 3, 5), (12, 17, 2, 40),
    (17, 50, 16, 50),  # near the mode: a tie between the observed table and its mirror
])
def test_fisher_exact_equals_scipy(a, n, b, m):
    expected = stats.fisher_exact([[a, n - a], [b, m - b]]).pvalue
    assert sim_report.fisher_exact(a, n, b, m) == pytest.approx(expected, rel=1e-12, abs=0)


def test_fisher_exact_against_a_table_and_bad_counts():
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: p = 34/70 (two-sided), exactly.
    assert sim_report.fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70, rel=1e-15)
    for bad in ((6, 5, 0, 5), (-1, 5, 0, 5), (1.5, 5, 0, 5)):
        with pytest.raises(ValueError):
            sim_report.fisher_exact(*bad)


def results(tmp_path, name, seed, outcomes_by_object, start_spread=0.0):
    """Write DIR/results.json with one episode per (object, failure) given; return DIR."""
    episodes = [sim_report.Episode(index=i, seed=seed + i, task='reach', object_name=obj,
                                   instruction=f'reach the {obj}', success=failure == 'success',
                                   failure=failure, clamps=dict.fromkeys(sim_report.CLAMPS, 0))
                for i, (obj, failure) in enumerate(outcomes_by_object)]
    out = tmp_path / name
    out.mkdir()
    sim_report.write_results(out, {'model': f'/models/{name}', 'seed': seed,
                                   'start_spread': start_spread}, episodes)
    return out


def test_compare_prints_both_rates_the_p_value_per_object_and_outcome(tmp_path, capsys):
    trained = results(tmp_path, 'trained', 0, [('red cube', 'success')] * 9
                      + [('green cylinder', 'stopped_short')] * 3)
    random = results(tmp_path, 'random', 0, [('red cube', 'never_moved')] * 9
                     + [('green cylinder', 'wandered')] * 2 + [('green cylinder', 'success')],
                     start_spread=0.08)
    assert sim_eval.main(['--compare', str(trained / 'results.json'), str(random),
                          '--out', str(tmp_path / 'cmp')]) == 0
    text = capsys.readouterr().out
    p = stats.fisher_exact([[9, 3], [1, 11]]).pvalue
    assert f"Fisher's exact test (two-sided), A vs B: p = {p:.4g}" in text
    assert '| A | `' in text and '| 0-11 | home | 9/12 = 75.0% (46.8 .. 91.1%)' in text
    assert '| 0-11 | within 0.08 m of home | 1/12' in text
    assert '1/12 = 8.3% (1.5 .. 35.4%)' in text
    assert '| green cylinder | 0/3 = 0.0% (0.0 .. 56.1%) | 1/3 = 33.3% (6.1 .. 79.2%) |' in text
    assert '| stopped_short | 3 (25%) | 0 (0%) |' in text
    assert '| never_moved | 0 (0%) | 9 (75%) |' in text
    assert (tmp_path / 'cmp' / 'comparison.md').read_text() == text
    assert 'Note: the runs differ in start_spread (0.0 and 0.08), so they are not the same ' \
        'episodes.' in text
    assert sim_eval.main(['--compare', str(trained), str(trained)]) == 0
    assert 'Note:' not in capsys.readouterr().out


def test_summary_counts_outcomes_and_per_object(tmp_path):
    out = results(tmp_path, 'run', 3, [('red cube', 'success'), ('red cube', 'wandered'),
                                       ('blue block', 'pinned_at_edge')])
    data = json.loads((out / 'results.json').read_text())
    assert data['summary']['per_object'] == {'blue block': [0, 1], 'red cube': [1, 2]}
    assert data['summary']['outcomes'] == {
        'success': 1, 'never_moved': 0, 'pinned_at_edge': 1, 'went_for_another_object': 0,
        'stopped_short': 0, 'wandered': 1}
    assert [e['failure'] for e in data['episodes']] == ['success', 'wandered', 'pinned_at_edge']
    text = (out / 'summary.md').read_text()
    assert '| red cube | 1/2 = 50.0% (9.5 .. 90.5%) |' in text
    assert '| pinned_at_edge | 1 (33%) |' in text


@pytest.mark.parametrize('content, message', [
    (None, 'cannot read it'), ('{"episodes": ', 'not JSON'),
    ('{"episodes": []}', 'no episodes with a success field'),
])
def test_a_bad_result_file_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    good = results(tmp_path, 'good', 0, [('red cube', 'success')])
    bad = tmp_path / 'bad.json'
    if content is not None:
        bad.write_text(content)
    assert sim_eval.main(['--compare', str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'vla_sim_eval: error: --compare {bad}: ')
    assert message in err and 'give a results.json that vla_sim_eval --out DIR wrote' in err


def test_compare_refuses_a_model_and_needs_no_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sim_eval.parse_args(['--compare', 'a', 'b', '--model', str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ('vla_sim_eval: error: --compare A B runs no episode: '
                                       'leave out --model\n')
    assert sim_eval.parse_args(['--compare', 'a', 'b']).out is None
