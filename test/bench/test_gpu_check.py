"""
The GPU check (``python3 -m vla_ros.bench.gpu_check``), dry-run on the CPU with random tiny models.

The same script, the same steps and outputs as the GPU command of docs/benchmarks.md; only
``--device cpu --random tiny`` and a one-test ``--tests`` differ.
"""

import json
import os
import shlex
import subprocess
import sys

from conftest import REPO
import pytest

from vla_ros.bench import gpu_check

STEPS = ['wheels', 'environment', 'tests', 'profile', 'openvla', 'oft', 'preprocess', 'table']
DRY_RUN = ['--device', 'cpu', '--random', 'tiny', '--n', '2',
           '--tests', 'test/bench/test_gpu_check.py::test_kernel_classes']


def documented_gpu_command():
    """Return the documented GPU command, split (the one line that runs ``gpu_check``)."""
    (line,) = [line for line in (REPO / 'docs' / 'benchmarks.md').read_text().splitlines()
               if 'python3 -m vla_ros.bench.gpu_check' in line]
    return shlex.split(line)


def dry_run(out, *extra):
    """Run the documented GPU command on the CPU: its own process, from the repository root."""
    env, command = dict(os.environ), documented_gpu_command()
    while '=' in command[0]:  # leading VAR=value assignments
        key, value = command.pop(0).split('=', 1)
        env[key] = value
    assert command[0] == 'python3'
    command = [sys.executable, *(str(out) if arg == '$OUT' else arg for arg in command[1:])]
    # --device cpu --random tiny and the rest come last: argparse keeps the last value. The
    # documented .whl holds the GPU machine's Python 3.12 wheels: none here.
    return subprocess.run([*command, '--wheels', str(out / 'no-wheels'), *DRY_RUN, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.process
@pytest.mark.slow
def test_dry_run_writes_every_step_under_out_and_a_failed_step_does_not_stop_the_rest(tmp_path):
    # A checkpoint that does not exist: the profile and the OpenVLA benchmark raise.
    out = tmp_path / 'out'
    doc = (REPO / 'docs' / 'PERFORMANCE.md').read_text()
    done = dry_run(out, '--model', str(tmp_path / 'missing'))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    steps = json.loads((out / 'steps.json').read_text())
    assert list(steps) == STEPS
    assert {name for name, step in steps.items() if step['status'] == 'failed'} == \
        {'profile', 'openvla'}
    assert 'CheckpointError' in steps['profile']['error']
    # The steps after the failures ran and wrote their results, all under --out.
    (oft,) = out.glob('*-openvla-ofttiny.json')
    report = json.loads(oft.read_text())
    assert report['meta']['host_cpu'] and report['meta']['graphs'] == \
        {'captured': [], 'failed': []}
    assert set(report['paths']['fast']['phases_ms']) >= {'preprocess', 'forward', 'total'}
    assert gpu_check.START in (out / 'PERFORMANCE.md').read_text()
    log = (out / 'gpu-check.log').read_text()
    assert 'profile FAILED' in log and '1 passed' in log
    assert 'failed: profile, openvla' in log
    assert (REPO / 'docs' / 'PERFORMANCE.md').read_text() == doc  # nothing outside --out


@pytest.mark.process
@pytest.mark.slow
def test_dry_run_passes_and_its_reports_become_gpu_rows(tmp_path):
    out = tmp_path / 'out'
    status = gpu_check.main(['--out', str(out), *DRY_RUN])
    assert status == 0, (out / 'gpu-check.log').read_text()[-3000:]
    steps = json.loads((out / 'steps.json').read_text())
    assert all(step['status'] == 'ok' for step in steps.values()) and list(steps) == STEPS
    (profile_path,) = out.glob('*-openvlatiny-decode-profile.json')
    (report_path,) = out.glob('*-openvlatiny.json')
    profile = json.loads(profile_path.read_text())
    assert profile['layers'] == 2 and profile['kernels_per_step'] > 0
    assert profile['counted'] == 'aten ops (CPU)'
    assert set(profile['classes']) <= {'matmul', 'attention', 'norm', 'copy / index',
                                       'elementwise', 'other'}
    report = json.loads(report_path.read_text())
    assert sum(report['kernels_per_decode_layer'].values()) == 14
    assert report['meta']['graphs'] == {'captured': [], 'failed': []}
    (preprocess_path,) = out.glob('*-oft-preprocess.json')
    figures = json.loads(preprocess_path.read_text())['resize_on']['cpu']
    assert set(figures) == {'encode', 'decode', 'resize', 'total'}
    assert figures['total'][0] >= figures['resize'][0] > 0
    (oft_path,) = out.glob('*-openvla-ofttiny.json')
    oft = json.loads(oft_path.read_text())
    assert oft['forward_passes_per_action'] == {'openvla_oft': 0.125, 'openvla': 7.0}
    assert oft['max_normalized_difference_fast_vs_eager'] < 1e-5
    # A CPU run is not a GPU row; a run on CUDA becomes one, from its JSONs alone, with the
    # kernel column from the profile beside it (CUDA kernels, not the CPU's aten ops).
    assert 'no GPU run committed yet' in (out / 'PERFORMANCE.md').read_text()
    for path in (report_path, oft_path):
        data = json.loads(path.read_text())
        data['meta'].update(device='cuda:0', device_name='NVIDIA H200', date='2026-12-01')
        path.write_text(json.dumps(data))
    table = gpu_check.gpu_table(out.glob('*.json'))
    assert table.count('| 2026-12-01 | NVIDIA H200 |') == 2
    assert '| – | `python -m vla_ros.bench.openvla' in table  # a CPU profile gives no kernel count
    profile.update(counted='CUDA kernels', kernels_per_step=30.0)
    profile_path.write_text(json.dumps(profile))
    table = gpu_check.gpu_table(out.glob('*.json'))
    assert '| 15.0 | `python -m vla_ros.bench.openvla ' in table
    assert 'forward' in table and 'host preprocessing' in table
    doc = tmp_path / 'PERFORMANCE.md'
    doc.write_text((out / 'PERFORMANCE.md').read_text())
    assert gpu_check.update_doc(doc, out) in doc.read_text()
    assert doc.read_text().count(gpu_check.START) == 1


@pytest.mark.process
def test_the_gpu_tests_take_no_fixture_that_reads_outside_the_working_tree():
    """Only the working tree travels to the GPU machine: ../shared's golden files do not."""
    done = subprocess.run([sys.executable, '-m', 'pytest', 'test/policy/test_policy_fast.py',
                           '-m', 'gpu',
                           '--fixtures-per-test', '-q', '-p', 'no:cacheprovider'], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    used, test = {}, None
    for line in done.stdout.splitlines():
        if 'fixtures used by ' in line:
            test = line.split('fixtures used by ', 1)[1].strip(' -')
            used[test] = set()
        elif test and ' -- ' in line:
            used[test].add(line.split(' -- ', 1)[0].strip())
    assert len(used) == 4, done.stdout[-3000:]  # the CUDA-only tests, marked gpu
    for test, fixtures in used.items():  # the closure: a fixture that needs the kit shows here
        assert not fixtures & {'conformance_root', 'oft_checkpoints'}, (test, fixtures)


def test_kernel_classes():
    assert gpu_check.kernel_class('sm90_xmma_gemm_bf16bf16_bf16f32') == 'matmul'
    assert gpu_check.kernel_class('fmha_cutlassF_bf16_aligned_64x64_rf_sm80') == 'attention'
    assert gpu_check.kernel_class('cutlass_80_tensorop_bf16_s16816gemm') == 'matmul'
    assert gpu_check.kernel_class('pytorch_flash::flash_fwd_kernel') == 'attention'
    assert gpu_check.kernel_class('at::native::rms_norm_kernel') == 'norm'
    assert gpu_check.kernel_class('void at::native::index_copy_kernel') == 'copy / index'
    assert gpu_check.kernel_class('void at::native::vectorized_elementwise_kernel') == \
        'elementwise'
