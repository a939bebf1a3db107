"""The one-go GPU script (``make gpu-check``), run on the CPU with the miniature checkpoint."""

import json
import shutil

from conftest import REPO
import pytest

from vla_ros.bench import gpu_check


@pytest.mark.slow
def test_gpu_check_runs_every_step_and_regenerates_the_table(tmp_path, conformance_root,
                                                             capsys):
    doc = tmp_path / 'PERFORMANCE.md'
    shutil.copyfile(REPO / 'docs' / 'PERFORMANCE.md', doc)
    out = tmp_path / 'perf'
    model = conformance_root / 'checkpoints' / 'tiny'
    status = gpu_check.main(['--device', 'cpu', '--model', str(model), '--n', '2',
                             '--skip-tests', '--out', str(out), '--doc', str(doc)])
    assert status == 0, capsys.readouterr().out
    (report_path,) = [p for p in out.glob('*.json') if 'profile' not in p.name]
    (profile_path,) = out.glob('*-decode-profile.json')
    assert list(out.glob('*.log'))
    profile = json.loads(profile_path.read_text())
    assert profile['layers'] == 2 and profile['kernels_per_step'] > 0
    assert set(profile['classes']) <= {'matmul', 'attention', 'norm', 'copy / index',
                                       'elementwise', 'other'}
    report = json.loads(report_path.read_text())
    assert sum(report['kernels_per_decode_layer'].values()) == 14
    # A CPU run is not a GPU row; a run on CUDA becomes one, from its JSON alone.
    assert 'no GPU run committed yet' in doc.read_text()
    report['meta'].update(device='cuda:0', device_name='NVIDIA H200', date='2026-12-01')
    (out / 'h200.json').write_text(json.dumps(report))
    table = gpu_check.update_doc(doc, out)
    assert '| 2026-12-01 | NVIDIA H200 |' in table and table in doc.read_text()
    assert doc.read_text().count(gpu_check.START) == 1


def test_kernel_classes():
    assert gpu_check.kernel_class('sm90_xmma_gemm_bf16bf16_bf16f32') == 'matmul'
    assert gpu_check.kernel_class('fmha_cutlassF_bf16_aligned_64x64_rf_sm80') == 'attention'
    assert gpu_check.kernel_class('cutlass_80_tensorop_bf16_s16816gemm') == 'matmul'
    assert gpu_check.kernel_class('pytorch_flash::flash_fwd_kernel') == 'attention'
    assert gpu_check.kernel_class('at::native::rms_norm_kernel') == 'norm'
    assert gpu_check.kernel_class('void at::native::index_copy_kernel') == 'copy / index'
    assert gpu_check.kernel_class('void at::native::vectorized_elementwise_kernel') == \
        'elementwise'


def test_oft_reports_become_gpu_rows(tmp_path):
    from vla_ros.bench import oft
    out = tmp_path / 'perf'
    out.mkdir()
    assert oft.main(['--device', 'cpu', '--n', '2', '--warmup', '1', '--threads', '1',
                     '--json', str(out / 'cpu-oft.json')]) == 0
    report = json.loads((out / 'cpu-oft.json').read_text())
    assert report['forward_passes_per_action'] == {'openvla_oft': 0.125, 'openvla': 7.0}
    assert report['max_normalized_difference_fast_vs_eager'] < 1e-5
    assert 'no GPU run committed yet' in gpu_check.gpu_table(out.glob('*.json'))
    report['meta'].update(device='cuda:0', device_name='NVIDIA H100 80GB HBM3')
    (out / 'gpu-oft.json').write_text(json.dumps(report))
    table = gpu_check.gpu_table(out.glob('*.json'))
    assert '| NVIDIA H100 80GB HBM3 | random OpenVLA-OFT tiny (libero, 2 images, chunk 8)' in table
