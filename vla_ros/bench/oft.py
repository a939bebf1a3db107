"""
OpenVLA-OFT per-chunk latency: the fast path against an eager transformers forward, in one run.

    python -m vla_ros.bench.oft --model DIR [--platform libero] [--n 20] [--json out.json]
    python -m vla_ros.bench.oft --random 7b --device cuda --dtype bfloat16 --n 100 --json perf.json

Two paths over the same modules and weights, taking turns image set by image set:

- ``fast``: ``OpenVLAOFTPolicy.predict`` through the fused decoder (CUDA graphs on CUDA);
- ``eager``: the same ``predict`` through transformers' ``LlamaModel`` (4-D all-true mask).

Reported: per-chunk latency p50/p95 by phase, chunks/s and actions/s, the forward passes per
action against plain OpenVLA (which runs one prefill and ``action_dim - 1`` decode steps for
every action), counted by a hook on the Llama model, and on CUDA the GPU memory.
``--random tiny|full-vision|7b`` builds OpenVLA-OFT with random weights straight on the device:
the backbone of ``python -m vla_ros.bench.openvla --random`` plus the heads at the LLM width
(OpenVLA-OFT-7B: D = 4096).
"""

import argparse
import dataclasses
import json
from pathlib import Path
import sys
import time

import numpy as np
import torch

from vla_ros.bench import machine
from vla_ros.bench import openvla as bench
from vla_ros.policy.backbone.configuration import resolve_device, resolve_dtype
from vla_ros.policy.backbone.loading import Backbone
from vla_ros.policy.oft.configuration import OFTConstants
from vla_ros.policy.oft.modeling import L1RegressionHead, ProprioProjector
from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
from vla_ros.sim.scenes import scene

PATHS = ('fast', 'eager')
INSTRUCTION = 'put the bowl on the plate'


def synthetic_stats(constants):
    """Dataset statistics of the platform's sizes: every range [-1, 1], grippers masked."""
    def entry(dim):
        ones = [1.0] * dim
        return {'q01': [-1.0] * dim, 'q99': ones, 'min': [-1.0] * dim, 'max': ones,
                'mask': [True] * (dim - 1) + [False]}
    return {'synth_oft': {'action': entry(constants.action_dim),
                          'proprio': entry(constants.proprio_dim)}}


def build_random(kind, device, dtype, constants, head='l1', seed=0):
    """OpenVLA-OFT with random weights on ``device`` (the backbone of ``bench --random``)."""
    openvla = bench.build_random(kind, device, dtype, seed=seed, fast=False)
    config = dataclasses.replace(openvla.config, norm_stats=synthetic_stats(constants),
                                 norm_stats_source='synthetic statistics')
    backbone = Backbone(openvla.model, config, openvla.image_processor, openvla.tokenizer,
                        device, dtype, None, openvla.weight_bytes, openvla.eos_token_id)
    width = openvla.model.llama_config.hidden_size
    action_head = projector = None
    if head == 'l1':
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        with torch.device(device):
            action_head = L1RegressionHead(width, constants.action_dim, constants.chunk_len)
            projector = ProprioProjector(width, constants.proprio_dim)
        for module in (action_head, projector):
            with torch.no_grad():
                for param in module.parameters():
                    bound = 1.0 / np.sqrt(param.shape[-1]) if param.ndim > 1 else 0.1
                    param.uniform_(-bound, bound, generator=generator)
            module.to(dtype=dtype).eval()
    return OpenVLAOFTPolicy(backbone, constants, action_head, projector, center_crop=True)


def proprio_for(policy):
    """Return the state the benchmark feeds: zeros of the policy's size, or None without one."""
    return np.zeros(policy.proprio_dim) if policy.proprio_dim else None


def run_path(policy, path, images, proprio, key, fast):
    """One chunk on ``path``; return (normalised actions, seconds per phase)."""
    policy.fast = fast if path == 'fast' else None
    try:
        chunk = policy.predict(images, INSTRUCTION, proprio=proprio, unnorm_key=key, timing=True)
    finally:
        policy.fast = fast
    return chunk.normalized, dict(policy.last_timing)


def measure(policy, sets, warmup, key):
    """Time both paths on every image set; return (results per path, max |fast - eager|)."""
    fast = policy.fast
    proprio = proprio_for(policy)
    for path in PATHS:
        for i in range(warmup):
            run_path(policy, path, sets[i % len(sets)], proprio, key, fast)
    timings = {path: [] for path in PATHS}
    outputs = {path: [] for path in PATHS}
    for i, images in enumerate(sets):
        for path in PATHS if i % 2 == 0 else PATHS[::-1]:
            normalized, timing = run_path(policy, path, images, proprio, key, fast)
            timings[path].append(timing)
            outputs[path].append(normalized)
    results = {}
    chunk = policy.chunk_len
    for path in PATHS:
        phases = sorted({phase for t in timings[path] for phase in t})
        result = {'phases_ms': {phase: bench.percentiles([t.get(phase, 0.0)
                                                          for t in timings[path]])
                                for phase in phases}}
        p50 = result['phases_ms']['total']['p50']
        result.update(chunks_per_s=1e3 / p50, actions_per_s=chunk * 1e3 / p50)
        results[path] = result
    pairs = zip(outputs['fast'], outputs['eager'])
    difference = max(float(np.abs(a - b).max()) for a, b in pairs)
    return results, difference


def forward_passes_per_action(policy, images, proprio, key):
    """
    Count the LLM forward passes per action: OpenVLA-OFT's chunk, then OpenVLA on the backbone.

    A hook on the Llama model counts its calls during one plain prediction of each (the fast
    paths give the same actions from the same passes, fused): OpenVLA-OFT runs one per chunk;
    OpenVLA, over the same backbone, a prefill and a decode step per further token of its one
    action. Returns {'openvla_oft': passes / chunk_len, 'openvla': passes / 1}.
    """
    from vla_ros.policy.openvla.policy import OpenVLAPolicy

    calls = []
    hook = policy.model.language_model.model.register_forward_pre_hook(
        lambda *_: calls.append(1))
    fast, policy.fast = policy.fast, None
    try:
        chunk = policy.predict(images, INSTRUCTION, proprio=proprio, unnorm_key=key)
        oft = len(calls) / chunk.values.shape[0]
        calls.clear()
        openvla = OpenVLAPolicy(policy.model, policy.config, policy.image_processor,
                                policy.tokenizer, policy.device, policy.dtype)
        openvla.predict(images[0], INSTRUCTION, unnorm_key=key)  # one action
        return {'openvla_oft': oft, 'openvla': float(len(calls))}
    finally:
        policy.fast = fast
        hook.remove()


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m vla_ros.bench.oft', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--model', metavar='DIR', help='an OpenVLA-OFT checkpoint folder')
    source.add_argument('--random', choices=('tiny', 'full-vision', '7b'),
                        help='random weights built on the device (default: tiny)')
    parser.add_argument('--platform', default='libero', choices=('libero', 'aloha', 'bridge'))
    parser.add_argument('--head', default='l1', choices=('l1', 'discrete'))
    parser.add_argument('--device', default='auto')
    parser.add_argument('--dtype', default='auto')
    parser.add_argument('--n', type=int, default=20, help='timed chunks per path')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    parser.add_argument('--json', metavar='PATH', help='write the results as JSON')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    constants = OFTConstants.for_platform(args.platform)
    kind = args.random or ('tiny' if not args.model else None)
    start = time.perf_counter()
    if kind:
        policy = build_random(kind, device, dtype, constants, args.head)
    else:
        policy = OpenVLAOFTPolicy.from_pretrained(args.model, platform=args.platform,
                                                  action_head=args.head, device=device,
                                                  dtype=dtype, fast=False)
    policy.enable_fast()
    load_s = time.perf_counter() - start
    key = policy.unnorm_keys[0]
    sets = [[scene(i * 7 + j, 640, 480, noise=8) for j in range(policy.num_images)]
            for i in range(max(args.n, 1))]
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    paths, difference = measure(policy, sets, args.warmup, key)
    passes = forward_passes_per_action(policy, sets[0], proprio_for(policy), key)
    report = {
        'kind': 'oft',
        'meta': {'model': f'random OpenVLA-OFT {kind}' if kind else str(args.model),
                 'platform': args.platform, 'head': args.head, **machine.describe(device),
                 'dtype': str(dtype)[6:], 'n': len(sets), 'warmup': args.warmup,
                 'images': policy.num_images, 'chunk': [policy.chunk_len, policy.action_dim],
                 'load_s': load_s,
                 'graphs': policy.fast.graph_report() if policy.fast else None,
                 'command': ' '.join(['python -m vla_ros.bench.oft']
                                     + list(sys.argv[1:] if argv is None else argv))},
        'paths': paths,
        'ratio_fast_vs_eager': (paths['eager']['phases_ms']['total']['p50']
                                / paths['fast']['phases_ms']['total']['p50']),
        'max_normalized_difference_fast_vs_eager': difference,
        'forward_passes_per_action': passes,
        'memory': ({'weight_bytes': policy.weight_bytes,
                    'steady_bytes': torch.cuda.memory_allocated(device),
                    'peak_bytes': torch.cuda.max_memory_allocated(device)} if cuda else None),
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
        print(f'results written to {args.json}')
    return 0


def print_report(report):
    meta, paths = report['meta'], report['paths']
    print(f"\nOpenVLA-OFT predict(): {meta['model']}, {meta['platform']} ({meta['head']} head, "
          f"{meta['images']} images, chunk {meta['chunk'][0]} x {meta['chunk'][1]}) on "
          f"{meta['device_name']}, {meta['dtype']}, {meta['n']} chunks after {meta['warmup']} "
          f"warm-up, torch {meta['torch']}, {meta['threads']} CPU threads")
    for path in PATHS:
        row = paths[path]
        cells = ', '.join(f"{phase} {v['p50']:.1f}/{v['p95']:.1f}"
                          for phase, v in row['phases_ms'].items())
        print(f"{path:<6} ms p50/p95: {cells}; {row['chunks_per_s']:.2f} chunks/s, "
              f"{row['actions_per_s']:.1f} actions/s")
    fast = paths['fast']['phases_ms']
    if 'forward' in fast:  # the forward-pass goal is about the GPU's part alone
        print(f"fast path, p50 per chunk: forward {fast['forward']['p50']:.1f} ms, host "
              f"preprocessing {fast['preprocess']['p50']:.1f} ms ({meta['images']} frames of "
              f'640 x 480: TF-exact resize, crops, normalisation, upload)')
    passes = report['forward_passes_per_action']
    print('speed-up fast / eager transformers forward (p50 per chunk): '
          f"{report['ratio_fast_vs_eager']:.2f}x; max |normalised fast - eager| "
          f"{report['max_normalized_difference_fast_vs_eager']:.2g}")
    print(f"forward passes per action: OpenVLA-OFT {passes['openvla_oft']:.3f} (one per chunk), "
          f"OpenVLA {passes['openvla']:.0f} (a prefill and {passes['openvla'] - 1:.0f} decode "
          f'steps)')


if __name__ == '__main__':
    sys.exit(main())
