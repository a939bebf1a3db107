"""
Benchmark of ``OpenVLAPolicy`` on CPU float32.

It prints load time, peak RSS against the weight bytes, and ``predict()`` latency split into
preprocess, vision, prefill and decode.

    python -m vla_ros.bench.policy [--runs N] [--full-runs N] [--skip-full] [--json PATH]

Two checkpoints are written to a temporary directory:
- ``miniature``: the ``vla_tiny_model`` checkpoint (tiny towers, tiny Llama);
- ``full-vision``: real-size DINOv2 ViT-L/14-reg4 + SigLIP So400m/14 towers at 224 px and the
  real-size projector input, feeding a small Llama (hidden 256, 2 layers), random fp32 weights.

Each is loaded in a fresh subprocess so its RSS is clean. The RSS increase is the peak
(``ru_maxrss``) after loading minus the resident size just before; the goal is <= 1.3x the bytes
of the loaded weights. Imports, the tokenizer and allocator slack are part of that increase, so
for the miniature checkpoint (20 MB) the ratio says little.
"""

import argparse
import json
from pathlib import Path
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

PHASES = ('preprocess', 'vision', 'prefill', 'decode', 'total')
SMALL_LLAMA = {'hidden_size': 256, 'intermediate_size': 688, 'num_attention_heads': 4,
               'num_hidden_layers': 2, 'num_key_value_heads': 4, 'pad_token_id': 32000,
               'vocab_size': 32064, 'model_type': 'llama', 'torch_dtype': 'float32'}
INSTRUCTION = 'pick up the red cup'
UNNORM_KEY = 'synth_bridge'


def _rss_bytes():
    with open('/proc/self/status', encoding='ascii') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0


def measure(path, runs, threads=0):
    """Load ``path`` and time ``runs`` predictions in this process; return a result dict."""
    import torch
    # Imported before the RSS baseline so that the increase measures loading only.
    from transformers import DynamicCache, LlamaForCausalLM  # noqa: F401

    from vla_ros.policy import OpenVLAPolicy
    from vla_ros.sim.scenes import scene

    torch.set_grad_enabled(False)
    if threads:
        torch.set_num_threads(threads)
    baseline = _rss_bytes()
    start = time.perf_counter()
    policy = OpenVLAPolicy.from_pretrained(path, device='cpu', dtype='float32')
    load_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    images = [scene(i, 640, 480, noise=8) for i in range(4)]
    policy.predict(images[0], INSTRUCTION, unnorm_key=UNNORM_KEY)  # warm-up, untimed
    samples = {phase: [] for phase in PHASES}
    for i in range(runs):
        policy.predict(images[i % len(images)], INSTRUCTION, unnorm_key=UNNORM_KEY)
        for phase in PHASES:
            samples[phase].append(policy.last_timing[phase])
    latency = {phase: {'p50': float(np.percentile(v, 50)), 'p95': float(np.percentile(v, 95))}
               for phase, v in samples.items()}
    return {'load_s': load_s, 'weight_bytes': policy.weight_bytes,
            'rss_increase_bytes': peak - baseline,
            'rss_ratio': (peak - baseline) / policy.weight_bytes,
            'runs': runs, 'threads': torch.get_num_threads(), 'latency_s': latency}


def _child(path, runs, threads):
    proc = subprocess.run([sys.executable, '-m', 'vla_ros.bench.policy', '--child', str(path),
                           '--runs', str(runs), '--threads', str(threads)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f'benchmark subprocess for {path} failed:\n{proc.stderr[-4000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _report(name, result):
    mib = 2 ** 20
    print(f'\n== {name} ==')
    print(f'load time            {result["load_s"]:8.2f} s')
    print(f'weights              {result["weight_bytes"] / mib:8.1f} MiB')
    print(f'peak RSS increase    {result["rss_increase_bytes"] / mib:8.1f} MiB '
          f'= {result["rss_ratio"]:.2f}x the weights (goal <= 1.3x)')
    print(f'predict() latency over {result["runs"]} runs, {result["threads"]} threads (ms):')
    print(f'  {"phase":<11}{"p50":>10}{"p95":>10}')
    for phase in PHASES:
        stats = result['latency_s'][phase]
        print(f'  {phase:<11}{stats["p50"] * 1e3:10.1f}{stats["p95"] * 1e3:10.1f}')


def main(argv=None):
    """Write the two checkpoints, measure each in a subprocess, print (and save) the results."""
    parser = argparse.ArgumentParser(prog='python -m vla_ros.bench.policy', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=30, help='predictions, miniature checkpoint')
    parser.add_argument('--full-runs', type=int, default=5, help='predictions, full-vision')
    parser.add_argument('--skip-full', action='store_true', help='only the miniature checkpoint')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch CPU threads (default: one per core)')
    parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
    parser.add_argument('--child', metavar='DIR', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.runs, args.threads)))
        return 0

    from vla_ros.policy.tiny import write_checkpoint, write_tiny_checkpoint

    results = {}
    with tempfile.TemporaryDirectory(prefix='vla_bench_') as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        tiny = write_tiny_checkpoint(tmp / 'miniature')
        print(f'wrote the miniature checkpoint in {time.perf_counter() - start:.1f} s')
        results['miniature'] = _child(tiny, args.runs, args.threads)
        _report('miniature checkpoint (vla_tiny_model)', results['miniature'])
        if not args.skip_full:
            start = time.perf_counter()
            full = write_checkpoint(tmp / 'full-vision', seed=0, calibrate=False,
                                    config_overrides={'timm_override_kwargs': None,
                                                      'text_config': SMALL_LLAMA})
            print(f'\nwrote the full-vision checkpoint in {time.perf_counter() - start:.1f} s')
            results['full-vision'] = _child(full, args.full_runs, args.threads)
            _report('real-size DINOv2-L + SigLIP-So400m towers, small Llama (256 x 2 layers)',
                    results['full-vision'])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + '\n')
        print(f'\nresults written to {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
