"""
``predict()`` latency: the fast path against transformers ``generate()``, in one run.

    python -m vla_ros.bench.openvla --model DIR [--device cpu] [--n 50] [--json out.json]
    python -m vla_ros.bench.openvla --random full-vision --device cpu --n 5 --warmup 1
    python -m vla_ros.bench.openvla --random 7b --device cuda --dtype bfloat16 --n 100 \
        --json perf.json

Three paths over the same modules and weights, each timed ``--n`` times after ``--warmup`` calls:
- ``fast``: ``OpenVLAPolicy.predict`` with ``policy.fast`` (static KV cache; CUDA graphs on CUDA);
- ``plain``: ``OpenVLAPolicy.predict`` with ``policy.fast = None`` (DynamicCache, eager);
- ``generate``: the policy's preprocessing and towers, then ``language_model.generate()``
  (greedy, ``max_new_tokens`` 7, EOS 2, pad 32000) on the same multimodal embeddings.
Phases (preprocess, vision, prefill, decode) are timed with a device sync at each boundary; on
CUDA the end-to-end latency and Hz come from separate runs without those syncs. The tokens of
every timed image are compared between the paths. On CUDA: GPU memory steady (after loading and
warm-up) and peak (per path). ``--quantization 8bit|4bit`` (bitsandbytes) also reports the
agreement of the quantized fast path with the bf16 one on the conformance images.

``--random tiny|full-vision|7b`` builds the architecture with random weights directly on the
device, no checkpoint: the miniature one, real-size towers with a small Llama (256 x 2 layers),
or the real openvla-7b (about 15 GB in bf16; GPU only in practice).
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path
import sys
import time
import types

import numpy as np
from PIL import Image
import torch

from vla_ros.bench import machine
from vla_ros.bench.kernels import decode_layer_ops, plain_layer_ops
from vla_ros.bench.policy import SMALL_LLAMA
from vla_ros.policy import OpenVLAPolicy, PolicyError
from vla_ros.policy.backbone.configuration import (openvla_7b_config, OpenVLAConfig, read_json,
                                                   resolve_device, resolve_dtype)
from vla_ros.policy.backbone.modeling import OpenVLAModel
from vla_ros.policy.backbone.processing import build_prompt, ImageProcessor, PromptTokenizer
from vla_ros.policy.backbone.quantization import import_bitsandbytes, quantize_language_model
from vla_ros.policy.backbone.timing import PhaseClock
from vla_ros.policy.backbone.weights import materialize_buffers
from vla_ros.policy.openvla.fast import generate_baseline
from vla_ros.policy.tiny import _init_range, ASSETS
from vla_ros.sim.scenes import scene

PHASES = ('preprocess', 'vision', 'prefill', 'decode', 'total')
PATHS = ('fast', 'plain', 'generate')
INSTRUCTION = 'pick up the red cup'
ACTION_ROW_SCALE = 1.55  # the conformance recipe's lm_head action rows: action tokens win often
REPO = Path(__file__).resolve().parents[2]


# ---- building a policy --------------------------------------------------------------------------
def random_config(kind):
    """Return the ``OpenVLAConfig`` of ``kind`` (tiny, full-vision, 7b) with synthetic stats."""
    tiny = OpenVLAConfig.from_pretrained(ASSETS)
    if kind == 'tiny':
        return tiny
    if kind == 'full-vision':
        return dataclasses.replace(tiny, timm_override_kwargs={}, text_config=dict(SMALL_LLAMA))
    return dataclasses.replace(openvla_7b_config(), norm_stats=tiny.norm_stats)


def init_random_(model, seed=0):
    """
    Fill ``model`` in place (on its device) with the ``vla_tiny_model`` ranges, seeded.

    q and k at gain 1, not the miniature's 3: a 32-layer model stays tame in bf16, so bf16 and
    float32 (and the fast and plain paths) agree to within rounding, as for a trained model.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    hidden = model.llama_config.hidden_size
    vocab = model.config.vocab_for_decoding
    with torch.no_grad():
        for name, param in model.named_parameters():
            center, half_width = _init_range(name, tuple(param.shape), hidden)
            param.uniform_(-half_width, half_width, generator=generator).add_(center)
        model.language_model.lm_head.weight[vocab - model.config.n_action_bins:vocab] *= (
            ACTION_ROW_SCALE)


def build_random(kind, device, dtype, seed=0, fast=True):
    """Build ``kind`` with random weights straight on ``device`` (meta, then allocate there)."""
    config = random_config(kind)
    with torch.device('meta'):
        model = OpenVLAModel(config)
    model = model.to(dtype=dtype).to_empty(device=device)  # the only allocation: on the device
    materialize_buffers(model, device)
    init_random_(model, seed)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return OpenVLAPolicy(model, config, ImageProcessor.from_pretrained(ASSETS),
                         PromptTokenizer.from_pretrained(ASSETS), device, dtype,
                         weight_bytes=weight_bytes, fast=fast)


def quantize_in_place(policy, quantization):
    """Swap the decoder linears for bitsandbytes ones, one layer at a time through the CPU."""
    policy.fast = None  # its graphs read the bf16 weights about to be freed
    for layer in policy.model.language_model.model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):  # bitsandbytes quantizes on a CPU -> CUDA move
                module.weight.data = module.weight.data.cpu()
        holder = types.SimpleNamespace(language_model=types.SimpleNamespace(
            model=types.SimpleNamespace(layers=torch.nn.ModuleList([layer]))))
        quantize_language_model(holder, quantization, policy.dtype, policy.device)
    policy.quantization = quantization
    torch.cuda.empty_cache()
    policy.enable_fast()  # new modules: new static decoder and graphs


# ---- running the three paths --------------------------------------------------------------------
def predict_generate(policy, image, prompt, unnorm_key, timed=True):
    """One prediction through transformers ``generate()``; returns (ids, seconds per phase)."""
    device, model = policy.device, policy.model
    clock = PhaseClock(device, exact=True) if timed else None
    mark = clock.mark if timed else (lambda phase: None)
    start = time.perf_counter()
    with torch.inference_mode():
        input_ids = policy.tokenizer.model_input_ids(prompt)
        pixel_values = policy.image_processor(image)  # (1, 6, 224, 224)
        mark('preprocess')
        patches = model.embed_image(pixel_values.to(device))  # (1, N, C)
        mark('vision')
        ids = torch.tensor([input_ids], dtype=torch.long, device=device)  # (1, T)
        embeds = model.embed_prompt(ids, patches)  # (1, T + N, C)
        generated, _ = generate_baseline(model, embeds, policy.action_dim_for(unnorm_key),
                                         policy.eos_token_id, policy.config.pad_token_id, clock)
    return generated, clock.result() if timed else {'total': time.perf_counter() - start}


def run_path(policy, path, image, prompt, unnorm_key, timed=True):
    """Predict once on ``path`` (fast, plain or generate); return (ids, seconds per phase)."""
    if path == 'generate':
        return predict_generate(policy, image, prompt, unnorm_key, timed)
    fast = policy.fast
    if path == 'plain':
        policy.fast = None
    try:
        action = policy.predict_prompt(image, prompt, unnorm_key, timing=timed)
    finally:
        policy.fast = fast
    return list(action.generated_ids), dict(policy.last_timing)


def percentiles(samples):
    """Return {p50, p95} in milliseconds of ``samples`` in seconds."""
    return {'p50': float(np.percentile(samples, 50) * 1e3),
            'p95': float(np.percentile(samples, 95) * 1e3)}


def measure(policy, images, warmup, unnorm_key):
    """
    Time every path on ``images``; return (results per path, generated ids per path).

    The paths take turns image by image (in a rotating order), so that load from other processes
    on a shared machine falls on all of them alike.
    """
    prompt = build_prompt(INSTRUCTION)
    cuda = policy.device.type == 'cuda'
    for path in PATHS:
        for i in range(warmup):
            run_path(policy, path, images[i % len(images)], prompt, unnorm_key)
    samples = {path: {phase: [] for phase in PHASES} for path in PATHS}
    end_to_end = {path: [] for path in PATHS}
    tokens = {path: [] for path in PATHS}
    peaks = dict.fromkeys(PATHS, 0)
    for i, image in enumerate(images):
        for path in PATHS[i % 3:] + PATHS[:i % 3]:
            if cuda:
                torch.cuda.synchronize(policy.device)
                torch.cuda.reset_peak_memory_stats(policy.device)
            ids, timing = run_path(policy, path, image, prompt, unnorm_key)
            tokens[path].append(ids)
            for phase in PHASES:
                samples[path][phase].append(timing[phase])
            if cuda:  # the same again without the per-phase syncs
                peaks[path] = max(peaks[path], torch.cuda.max_memory_allocated(policy.device))
                timing = run_path(policy, path, image, prompt, unnorm_key, timed=False)[1]
            end_to_end[path].append(timing['total'])
    results = {}
    for path in PATHS:
        result = {'phases_ms': {phase: percentiles(v) for phase, v in samples[path].items()},
                  'end_to_end_ms': percentiles(end_to_end[path])}
        result['hz_p50'] = 1e3 / result['end_to_end_ms']['p50']
        if cuda:
            result['peak_memory_bytes'] = peaks[path]
        results[path] = result
    return results, tokens


def conformance_cases(root):
    """Return [(image, prompt, unnorm_key)] of the conformance cases under ``root``, or []."""
    cases = []
    for case in sorted((Path(root) / 'openvla_tiny' / 'cases').glob('c*')):
        spec = read_json(case / 'case.json')
        image = Image.open(case / spec['image_file'])
        image.load()
        cases.append((image, spec['prompt'], spec['unnorm_key']))
    return cases


def fast_tokens(policy, cases):
    """Return the fast path's generated ids on each (image, prompt, key)."""
    keys = policy.unnorm_keys
    return [list(policy.predict_prompt(image, prompt, key if key in keys else keys[0])
                 .generated_ids) for image, prompt, key in cases]


# ---- report -------------------------------------------------------------------------------------
def agreement(tokens, path, reference='plain'):
    """Return (identical, total) generated-id sequences of ``path`` against ``reference``."""
    pairs = list(zip(tokens[path], tokens[reference]))
    return sum(a == b for a, b in pairs), len(pairs)


def print_report(report):
    """Print the table of ``report`` (the JSON written by ``--json``)."""
    meta, paths = report['meta'], report['paths']
    print(f'\nOpenVLA predict(): {meta["model"]} on {meta["device_name"]}, {meta["dtype"]}, '
          f'quantization {meta["quantization"]}, {meta["n"]} images after {meta["warmup"]} '
          f'warm-up, torch {meta["torch"]}, transformers {meta["transformers"]}, '
          f'{meta["threads"]} CPU threads')
    head = ''.join(f'{phase:>17}' for phase in PHASES)
    print(f'{"ms (p50 / p95)":<16}{head}{"end-to-end":>17}{"Hz":>8}')
    for path in PATHS:
        row = paths[path]
        cells = ''.join(f'{row["phases_ms"][p]["p50"]:9.1f} /{row["phases_ms"][p]["p95"]:6.1f}'
                        for p in PHASES)
        e2e = row['end_to_end_ms']
        print(f'{path:<16}{cells}{e2e["p50"]:9.1f} /{e2e["p95"]:6.1f}{row["hz_p50"]:8.2f}')
    print(f'speed-up fast / generate() baseline (p50 end-to-end): '
          f'{report["ratio_fast_vs_generate"]:.2f}x; fast / plain: '
          f'{report["ratio_fast_vs_plain"]:.2f}x')
    for name, (same, total) in report['agreement'].items():
        print(f'identical generated ids, {name}: {same}/{total}')
    for path, key in (('fast', 'kernels_per_decode_layer'),
                      ('plain', 'kernels_per_decode_layer_plain')):
        kernels = report[key]
        print(f'aten ops launching work per decode layer, {path} path: '
              f'{sum(kernels.values()):.0f} '
              f'({", ".join(f"{k} {v:g}" for k, v in sorted(kernels.items()))})')
    memory = report.get('memory')
    if memory:
        gib = 2 ** 30
        peaks = ', '.join(f'{path} {paths[path]["peak_memory_bytes"] / gib:.2f}'
                          for path in PATHS)
        print(f'GPU memory (GiB): weights {memory["weight_bytes"] / gib:.2f}, steady '
              f'{memory["steady_bytes"] / gib:.2f} (reserved {memory["reserved_bytes"] / gib:.2f})'
              f', peak at load {memory["load_peak_bytes"] / gib:.2f}; peak per path: {peaks}')


def main(argv=None):
    """Build or load the policy, time the three paths, print the table and write the JSON."""
    parser = argparse.ArgumentParser(prog='python -m vla_ros.bench.openvla', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--model', metavar='DIR', help='an OpenVLA checkpoint directory')
    source.add_argument('--random', choices=('tiny', 'full-vision', '7b'),
                        help='random weights, built on the device (default: tiny)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--dtype', default='auto', help="'auto', 'float32', 'bfloat16', ...")
    parser.add_argument('--n', type=int, default=50, help='timed predictions per path')
    parser.add_argument('--warmup', type=int, default=5, help='untimed predictions per path')
    parser.add_argument('--quantization', choices=('8bit', '4bit'), help='bitsandbytes (CUDA)')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the weights and images')
    parser.add_argument('--conformance', metavar='DIR',
                        default=os.environ.get('VLA_CONFORMANCE_DIR',
                                               str(REPO.parent / 'shared' / 'conformance')),
                        help='folder holding openvla_tiny/ (quantization agreement)')
    parser.add_argument('--json', metavar='PATH', help='write the results as JSON')
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        report = run(args)
    except PolicyError as err:
        print(f'python -m vla_ros.bench.openvla: error: {err}', file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + '\n')
        print(f'results written to {args.json}')
    return 0


def run(args):
    """Do the work of ``main``; return the report dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.quantization:
        import_bitsandbytes(args.quantization)
    kind = args.random or ('tiny' if not args.model else None)
    cuda = device.type == 'cuda'
    start = time.perf_counter()
    if kind:
        policy = build_random(kind, device, dtype, seed=args.seed, fast=True)
    else:
        policy = OpenVLAPolicy.from_pretrained(args.model, device=device, dtype=dtype, fast=True)
    load_s = time.perf_counter() - start
    print(f'loaded and warmed up in {load_s:.1f} s', flush=True)
    quantized = {}
    if args.quantization:
        cases = conformance_cases(args.conformance)
        reference = fast_tokens(policy, cases)
        if kind:
            quantize_in_place(policy, args.quantization)
        else:
            policy.close()
            policy = OpenVLAPolicy.from_pretrained(args.model, device=device, dtype=dtype,
                                                   quantization=args.quantization, fast=True)
        same = sum(a == b for a, b in zip(fast_tokens(policy, cases), reference))
        quantized = {f'{args.quantization} vs {str(dtype)[6:]} fast path, conformance images':
                     (same, len(cases))}
    memory = None
    if cuda:
        torch.cuda.synchronize(device)
        memory = {'weight_bytes': policy.weight_bytes,
                  'steady_bytes': torch.cuda.memory_allocated(device),
                  'reserved_bytes': torch.cuda.memory_reserved(device),
                  'load_peak_bytes': torch.cuda.max_memory_allocated(device)}
    _, launching = decode_layer_ops(policy.fast)
    plain_kernels = plain_layer_ops(policy.model)
    images = [scene(i, 640, 480, seed=args.seed, noise=8) for i in range(max(args.n, 1))]
    unnorm_key = policy.unnorm_keys[0]
    paths, tokens = measure(policy, images, args.warmup, unnorm_key)
    e2e = {path: paths[path]['end_to_end_ms']['p50'] for path in PATHS}
    meta = {'model': f'random {kind}' if kind else str(args.model), **machine.describe(device),
            'dtype': str(dtype)[6:], 'quantization': args.quantization, 'n': len(images),
            'warmup': args.warmup, 'load_s': load_s,
            'graphs': policy.fast.graph_report() if policy.fast else None,
            'command': ' '.join(['python -m vla_ros.bench.openvla'] + args.argv)}
    return {'meta': meta, 'paths': paths, 'memory': memory,
            'kernels_per_decode_layer': {name: round(n, 3) for name, n in launching.items()},
            'kernels_per_decode_layer_plain': dict(plain_kernels),
            'ratio_fast_vs_generate': e2e['generate'] / e2e['fast'],
            'ratio_fast_vs_plain': e2e['plain'] / e2e['fast'],
            'agreement': {'fast vs plain': agreement(tokens, 'fast'),
                          'generate vs plain': agreement(tokens, 'generate'), **quantized}}


if __name__ == '__main__':
    sys.exit(main())
