"""The ROS-free reach rollout (``python -m vla_ros.bench.reach_rollout``): expert and policy."""

import json

import pytest

from vla_ros.bench import reach_rollout
# Imported here, not in a test: vla_ros.policy's first import asks ldconfig (a process) for libm.
from vla_ros.policy.tiny import write_tiny_oft_checkpoint

pytestmark = pytest.mark.usefixtures('torch_one_thread')

# The LIBERO state of the random OFT miniature (vla_tiny_model writes no run record).
LIBERO_STATE = ['ee_position', 'ee_axis_angle', 'joint:left_finger_joint',
                'joint:right_finger_joint']
EPISODE_KEYS = {'seed', 'object', 'success', 'time_to_success', 'final_fingertip_distance',
                'final_miss', 'failure', 'failure_detail', 'inferences', 'closest_approach'}


def test_the_expert_reaches_through_the_same_loop(tmp_path, capsys):
    out = tmp_path / 'expert.json'
    assert reach_rollout.main(['--expert', '--episodes', '2', '--seed', '0', '--seconds', '5',
                               '--out', str(out)]) == 0
    data = json.loads(out.read_text())
    assert data['summary']['successes'] == 2, data['episodes']
    assert data['summary']['outcomes']['success'] == 2
    assert [e['seed'] for e in data['episodes']] == [0, 1]
    assert all(e['final_miss'] == 0.0 for e in data['episodes'])
    assert 'reached 2/2' in capsys.readouterr().out


def test_a_policy_runs_an_episode_with_stale_inputs_and_short_chunks(tmp_path):
    model = write_tiny_oft_checkpoint(tmp_path / 'oft', 'libero')
    args = reach_rollout.parse_args(['--model', str(model), '--episodes', '1', '--seed', '4',
                                     '--seconds', '2', '--latency-steps', '2',
                                     '--execute-steps', '3', '--device', 'cpu', '--quiet',
                                     '--proprio', *LIBERO_STATE])
    data = reach_rollout.run(args)
    assert set(data) == {'config', 'episodes', 'summary'}
    assert data['config']['latency_steps'] == 2 and data['config']['proprio'] == LIBERO_STATE
    (episode,) = data['episodes']
    assert EPISODE_KEYS <= set(episode)
    assert episode['seed'] == 4 and episode['object'] in ('red cube', 'green cylinder',
                                                          'blue block')
    # Random weights do not reach (deterministic: same seed, same weights). 20 periods: 2 held
    # for the latency, 18 acted on, a chunk every 3 rows.
    assert not episode['success'] and episode['failure'] != 'success'
    assert episode['inferences'] == 6 and episode['actions'] == 20 and episode['final_miss'] > 0
    summary = data['summary']
    assert summary['episodes'] == 1 and len(summary['success_rate_interval']) == 2
    assert sum(summary['outcomes'].values()) == 1
