"""``accelerate launch`` with two CPU processes gives the same metrics.json as one process."""

import json
import socket
import subprocess
import sys

from bag_helpers import frames, T0_NS, write_bag
from conftest import BIN_DIR, REPO
import pytest

from vla_ros.evaluation import cli
from vla_ros.evaluation.metrics import strip_latency

pytestmark = pytest.mark.process  # accelerate launch starts two processes

MS = 1_000_000


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_processes_give_the_same_metrics_as_one(tiny_checkpoint, tmp_path):
    accelerate = BIN_DIR / 'accelerate'
    if not accelerate.exists():
        pytest.skip(f'accelerate is not installed beside {sys.executable}')
    # Two short bags, different frames and instructions, one per process.
    bags = [write_bag(tmp_path / 'bag_a', 'sqlite3', images=frames(3, 200 * MS),
                      instructions=[(T0_NS, 'pick up the red cup')]),
            write_bag(tmp_path / 'bag_b', 'mcap', images=frames(5, 100 * MS, T0_NS + 7 * MS),
                      instructions=[(T0_NS, 'open the top drawer')])]
    args = [*map(str, bags), '--model', tiny_checkpoint, '--unnorm-key', 'synth_bridge',
            '--reference', 'none']
    assert cli.main([*args, '--out', str(tmp_path / 'one')]) == 0  # a plain run: one process
    # `--multi_gpu` is what makes accelerate start N processes (through torchrun) on a machine
    # without GPUs; vla_eval then runs them on CPU with gloo. `--cpu` alone starts one process.
    launch = [str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2',
              '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
              '--main_process_ip', '127.0.0.1', '--main_process_port', str(free_port()),
              '-m', 'vla_ros.evaluation.cli']
    multi = subprocess.run([*launch, *args, '--out', str(tmp_path / 'two')], cwd=REPO,
                           capture_output=True, text=True, timeout=400)
    ranks = [f'process {r}/2 on cpu: bags {name}' for r, name in enumerate(('bag_a', 'bag_b'))]
    # vla_eval's own errors (exit 2, "vla_eval: error: ...") fail the test; only a launcher that
    # could not start the processes skips it.
    assert 'vla_eval: error' not in multi.stderr, multi.stderr
    if multi.returncode != 0 and not any(rank in multi.stderr for rank in ranks):
        pytest.skip('accelerate launch could not start 2 processes here: '
                    + multi.stderr.strip()[-600:])
    assert multi.returncode == 0, multi.stderr
    for rank in ranks:
        assert rank in multi.stderr  # each process evaluated one bag
    one = json.loads((tmp_path / 'one' / 'metrics.json').read_text())
    two = json.loads((tmp_path / 'two' / 'metrics.json').read_text())
    assert strip_latency(two) == strip_latency(one)
    assert one['overall']['counts']['predicted'] == 3 + 3
    assert set(two['bags']) == {'bag_a', 'bag_b'}
    assert (tmp_path / 'two' / 'bag_b.png').exists() and (tmp_path / 'two' / 'summary.md').exists()
