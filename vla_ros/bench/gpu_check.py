"""
The GPU check of the fast path, in one go: ``make gpu-check`` (about 5 minutes on one H100/H200).

1. the environment: ``nvidia-smi``, torch, CUDA, transformers, the device;
2. the GPU tests: ``pytest test/test_policy_fast.py`` (its CUDA-only tests run there);
3. a profile of one decode step of OpenVLA-7B (random weights, bf16): the kernels it launches
   and the GPU time per kernel class, and the time of one replay of the captured step;
4. ``python -m vla_ros.bench --random 7b --device cuda --dtype bfloat16 --n 100 --json
   docs/perf/<date>-<device>-openvla7b.json``, and the same for OpenVLA-OFT-7B (LIBERO: 2 images,
   proprio, chunk 8) with ``python -m vla_ros.bench.oft``;
5. docs/PERFORMANCE.md's GPU table regenerated from every ``docs/perf/*.json``.

Everything it measures lands in ``docs/perf/`` (the JSON files and ``<date>-<device>.log``),
ready to commit. ``--device cpu --model DIR --skip-tests`` runs the same steps on the CPU with a
small checkpoint: that is how the suite checks this script without a GPU.
"""

import argparse
import collections
import contextlib
import io
import json
from pathlib import Path
import platform
import re
import subprocess
import sys
import time

import torch

REPO = Path(__file__).resolve().parents[2]
START, END = '<!-- gpu-table:start -->', '<!-- gpu-table:end -->'
KERNEL_CLASSES = (  # (class, kernel-name pattern), first match wins
    ('attention', r'flash|fmha|attention|efficient|sdpa|softmax'),
    ('matmul', r'gemm|gemv|cutlass|xmma|cublas|matmul|\bmm\b|addmm|linear'),
    ('norm', r'norm'),
    ('copy / index', r'copy|index|cat|roll|gather|scatter|fill'),
    ('elementwise', r'elementwise|vectorized|unrolled|mul|add|silu|neg|where'),
)


def kernel_class(name):
    """Return the class of a kernel (or CPU op) name, by ``KERNEL_CLASSES``."""
    for label, pattern in KERNEL_CLASSES:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return 'other'


def environment(device):
    """Return a dict describing the machine, torch and the device."""
    import transformers
    info = {'date': time.strftime('%Y-%m-%d'), 'python': platform.python_version(),
            'torch': torch.__version__, 'cuda': torch.version.cuda,
            'transformers': transformers.__version__, 'device': str(device)}
    if device.type == 'cuda':
        info['device_name'] = torch.cuda.get_device_name(device)
        try:
            info['nvidia_smi'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=name,memory.total,driver_version,clocks.max.sm',
                 '--format=csv,noheader'], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            info['nvidia_smi'] = f'unavailable: {exc}'
    else:
        info['device_name'] = f'CPU ({platform.processor() or platform.machine()})'
    return info


def profile_decode(policy, steps=5):
    """
    Profile the fast path's decode step; return {kernels, per class, replay_ms}.

    The eager step is profiled (kernel names and GPU time by class, per step); the captured
    graph's replay is timed on its own (CUDA events) when there is one.
    """
    from torch.profiler import profile, ProfilerActivity

    fast = policy.fast
    cuda = fast.device.type == 'cuda'
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with torch.inference_mode():
        fast.token.zero_()
        fast.pos.fill_(fast.num_patches + 20)
        fast.llm.decode_step(fast.token, fast.pos)  # warm
        with profile(activities=[activity]) as prof:
            for _ in range(steps):
                fast.llm.decode_step(fast.token, fast.pos)
            if cuda:
                torch.cuda.synchronize(fast.device)
        replay_ms = None
        if cuda and fast._decode_graph is not None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                fast._decode_graph.replay()
            end.record()
            torch.cuda.synchronize(fast.device)
            replay_ms = start.elapsed_time(end) / 20
    classes = collections.defaultdict(lambda: [0, 0.0])
    count = 0
    for event in prof.key_averages():
        time_us = event.device_time_total if cuda else event.self_cpu_time_total
        if cuda and event.device_time_total <= 0:
            continue  # CPU-side ops; the kernels carry the GPU time
        if not cuda and event.key.startswith(('aten::view', 'aten::_unsafe_view', 'aten::t',
                                              'aten::transpose', 'aten::slice', 'aten::select',
                                              'aten::expand', 'aten::as_strided')):
            continue
        label = kernel_class(event.key)
        classes[label][0] += event.count / steps
        classes[label][1] += time_us / steps / 1e3
        count += event.count / steps
    return {'kernels_per_step': round(count, 1), 'layers': len(fast.llm.layers),
            'step_ms_eager': round(sum(ms for _, ms in classes.values()), 3),
            'replay_ms': None if replay_ms is None else round(replay_ms, 3),
            'classes': {k: {'kernels': round(n, 1), 'ms': round(ms, 3)}
                        for k, (n, ms) in sorted(classes.items())}}


def gpu_table(paths):
    """Return the Markdown table of the benchmark JSON files in ``paths`` run on a GPU."""
    rows = ['| date | device | model, dtype | fast path p50 | baseline p50 (`generate()`, or '
            'OFT: eager transformers) | ratio | GPU memory steady | kernels / decode layer | '
            'command |', '|---|---|---|---|---|---|---|---|---|']
    for path in sorted(paths):
        report = json.loads(Path(path).read_text())
        meta = report.get('meta', {})
        if not str(meta.get('device', '')).startswith('cuda'):
            continue
        if report.get('kind') == 'oft':
            rows.append(oft_row(report))
            continue
        fast, base = report['paths']['fast'], report['paths']['generate']
        memory = report.get('memory') or {}
        steady = memory.get('steady_bytes')
        kernels = sum(report.get('kernels_per_decode_layer', {}).values())
        rows.append(
            f"| {meta['date']} | {meta['device_name']} | {meta['model']}, {meta['dtype']} | "
            f"{fast['end_to_end_ms']['p50']:.1f} ms ({fast['hz_p50']:.1f} Hz) | "
            f"{base['end_to_end_ms']['p50']:.1f} ms ({base['hz_p50']:.1f} Hz) | "
            f"{report['ratio_fast_vs_generate']:.2f}x | "
            f"{'–' if steady is None else f'{steady / 2**30:.1f} GiB'} | {kernels:g} | "
            f"`{meta['command']}` |")
    if len(rows) == 2:
        rows.append('| – | no GPU run committed yet | | | | | | | |')
    return '\n'.join(rows)


def oft_row(report):
    """Return the GPU table row of an OpenVLA-OFT benchmark JSON (``vla_ros.bench.oft``)."""
    meta, paths = report['meta'], report['paths']
    fast, eager = paths['fast'], paths['eager']
    memory = report.get('memory') or {}
    steady = memory.get('steady_bytes')
    return (f"| {meta['date']} | {meta['device_name']} | {meta['model']} ({meta['platform']}, "
            f"{meta['images']} images, chunk {meta['chunk'][0]}), {meta['dtype']} | "
            f"{fast['phases_ms']['total']['p50']:.1f} ms per chunk "
            f"({fast['actions_per_s']:.0f} actions/s) | "
            f"{eager['phases_ms']['total']['p50']:.1f} ms | "
            f"{report['ratio_fast_vs_eager']:.2f}x | "
            f"{'–' if steady is None else f'{steady / 2**30:.1f} GiB'} | – | "
            f"`{meta['command']}` |")


def update_doc(doc, perf_dir):
    """Replace the text between the GPU table markers of ``doc`` with the table of ``perf_dir``."""
    text = Path(doc).read_text()
    if START not in text or END not in text:
        raise SystemExit(f'{doc} has no {START} ... {END} markers')
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    table = gpu_table(Path(perf_dir).glob('*.json'))
    Path(doc).write_text(f'{head}{START}\n{table}\n{END}{tail}')
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--device', default='cuda', help="'cuda', 'cuda:N' or 'cpu'")
    parser.add_argument('--model', help='checkpoint directory (default: random OpenVLA-7B)')
    parser.add_argument('--n', type=int, default=100, help='timed predictions per path')
    parser.add_argument('--out', default=str(REPO / 'docs' / 'perf'), help='output folder')
    parser.add_argument('--doc', default=str(REPO / 'docs' / 'PERFORMANCE.md'))
    parser.add_argument('--skip-tests', action='store_true', help='do not run pytest')
    args = parser.parse_args(argv)
    from vla_ros.bench import __main__ as bench
    from vla_ros.policy.configuration import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype('auto', device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    stem = f"{env['date']}-{re.sub(r'[^A-Za-z0-9]+', '-', env['device_name']).strip('-')}"
    log = io.StringIO()

    def say(text):
        print(text, flush=True)
        log.write(text + '\n')

    say(f'== environment\n{json.dumps(env, indent=2)}')
    status = 0
    if not args.skip_tests:
        say('== GPU tests: pytest test/test_policy_fast.py')
        tests = subprocess.run([sys.executable, '-m', 'pytest', 'test/test_policy_fast.py', '-q',
                                '-rs', '-p', 'no:cacheprovider'], cwd=REPO, capture_output=True,
                               text=True)
        say(tests.stdout[-4000:] + tests.stderr[-2000:])
        status = tests.returncode
    source = ['--model', args.model] if args.model else ['--random', '7b']
    name = Path(args.model).name if args.model else 'openvla7b'
    say('== profile of one decode step')
    policy = (bench.OpenVLAPolicy.from_pretrained(args.model, device=device, dtype=dtype,
                                                  fast=True)
              if args.model else bench.build_random('7b', device, dtype, fast=True))
    profile = profile_decode(policy)
    policy.close()
    del policy
    (out / f'{stem}-{name}-decode-profile.json').write_text(json.dumps(profile, indent=2) + '\n')
    say(json.dumps(profile, indent=2))
    say('== benchmark')
    report_path = out / f'{stem}-{name}.json'
    command = [*source, '--device', str(device), '--dtype', str(dtype)[6:], '--n', str(args.n),
               '--json', str(report_path)]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        bench_status = bench.main(command)
    say(buffer.getvalue())
    status = status or bench_status
    if not args.model:  # OpenVLA-OFT-7B: the same backbone, the LIBERO heads, 2 images
        from vla_ros.bench import oft
        say('== benchmark: OpenVLA-OFT')
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            status = status or oft.main(['--random', '7b', '--device', str(device), '--dtype',
                                         str(dtype)[6:], '--n', str(args.n),
                                         '--json', str(out / f'{stem}-openvla-oft7b.json')])
        say(buffer.getvalue())
    say('== docs: the GPU table of ' + str(args.doc))
    say(update_doc(args.doc, out))
    (out / f'{stem}.log').write_text(log.getvalue())
    say(f'wrote {out}: commit the JSON, the log and {args.doc}')
    return status


if __name__ == '__main__':
    sys.exit(main())
