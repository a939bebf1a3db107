"""
The GPU check in one go, on the lent GPU machine as it is (about 5 minutes on one H100/H200).

    python3 -m vla_ros.bench.gpu_check --out DIR [--wheels .whl] [--n 50]

It runs with whatever ``python3`` the machine has (no venv, no network, no ROS): it reads only
the repository's working tree. Its steps:

0. ``wheels``: the wheels in ``--wheels`` (what the machine lacks: ``make gpu-wheels`` downloads
   them on the development machine) installed into a folder of its own;
1. ``environment``: the machine, CUDA, the driver, the host CPU, the versions;
2. ``tests``: ``pytest test/policy/test_policy_fast.py`` (its CUDA-only tests run there);
3. ``profile``: the kernels one decode step of OpenVLA-7B (random weights, bf16) launches, with
   the GPU time per kernel class, and the time of one replay of the captured step;
4. ``openvla``: ``python -m vla_ros.bench.openvla --random 7b`` (fast path, plain, ``generate()``);
5. ``oft``: ``python -m vla_ros.bench.oft --random 7b`` (LIBERO: 2 images, proprio, chunk 8);
6. ``preprocess``: OFT's TF-exact preprocessing per 640 x 480 frame, the resize on the host CPU
   and on the GPU (``python -m vla_ros.bench.preprocess``);
7. ``table``: docs/PERFORMANCE.md with its GPU table regenerated from docs/perf/ and this run.

Every output goes under ``--out``: the benchmark JSONs, ``steps.json`` (each step's status,
seconds and error, rewritten as each step ends), ``gpu-check.log`` (appended as it goes) and
``PERFORMANCE.md``. A step that fails is logged with its traceback and the next step runs; the
exit status is 1 if any step failed. Back on the development machine: copy the JSONs into
docs/perf/ and run ``python -m vla_ros.bench.gpu_check --update-doc``.

``--device cpu --random tiny`` runs the same steps on the CPU in seconds: the suite's dry run.
"""

import argparse
import collections
import contextlib
import importlib.util
import io
import json
import os
from pathlib import Path
import re
import subprocess
import sys
import tempfile
import time
import traceback

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / 'docs' / 'PERFORMANCE.md'
PERF = REPO / 'docs' / 'perf'
START, END = '<!-- gpu-table:start -->', '<!-- gpu-table:end -->'
KERNEL_CLASSES = (  # (class, kernel-name pattern), first match wins
    ('attention', r'flash|fmha|attention|efficient|sdpa|softmax'),
    ('matmul', r'gemm|gemv|cutlass|xmma|cublas|matmul|\bmm\b|addmm|linear'),
    ('norm', r'norm'),
    ('copy / index', r'copy|index|cat|roll|gather|scatter|fill'),
    ('elementwise', r'elementwise|vectorized|unrolled|mul|add|silu|neg|where'),
)
# What the steps import; the GPU machine's python3 lacks simplejpeg (OFT's JPEG round trip).
NEEDED = ('torch', 'transformers', 'timm', 'safetensors', 'tokenizers', 'numpy', 'PIL',
          'simplejpeg', 'pytest', 'psutil')
# CPU ops that only make views: no work (the CPU profile counts aten ops, not kernels).
VIEW_OPS = ('aten::view', 'aten::_unsafe_view', 'aten::t', 'aten::transpose', 'aten::slice',
            'aten::select', 'aten::expand', 'aten::as_strided')


def kernel_class(name):
    """Return the class of a kernel (or CPU op) name, by ``KERNEL_CLASSES``."""
    for label, pattern in KERNEL_CLASSES:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return 'other'


# ---- the steps ----------------------------------------------------------------------------------
def profile_decode(policy, steps=5):
    """
    Profile the fast path's decode step; return {kernels, per class, replay_ms}.

    The eager step is profiled (on CUDA: kernel names and GPU time by class, per step; on the
    CPU: aten ops and CPU time); the captured graph's replay is timed on its own with CUDA
    events recorded on the policy's device.
    """
    import torch
    from torch.profiler import profile, ProfilerActivity

    fast = policy.fast
    cuda = fast.device.type == 'cuda'
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    on_device = torch.cuda.device(fast.device) if cuda else contextlib.nullcontext()
    with torch.inference_mode(), on_device:
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
            stream = torch.cuda.current_stream(fast.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(20):
                fast._decode_graph.replay()
            end.record(stream)
            torch.cuda.synchronize(fast.device)
            replay_ms = start.elapsed_time(end) / 20
    classes = collections.defaultdict(lambda: [0, 0.0])
    count = 0
    for event in prof.key_averages():
        if cuda and event.device_time_total <= 0:
            continue  # CPU-side ops; the kernels carry the GPU time
        if not cuda and event.key.startswith(VIEW_OPS):
            continue
        time_us = event.device_time_total if cuda else event.self_cpu_time_total
        label = kernel_class(event.key)
        classes[label][0] += event.count / steps
        classes[label][1] += time_us / steps / 1e3
        count += event.count / steps
    return {'counted': 'CUDA kernels' if cuda else 'aten ops (CPU)',
            'kernels_per_step': round(count, 1), 'layers': len(fast.llm.layers),
            'step_ms_eager': round(sum(ms for _, ms in classes.values()), 3),
            'replay_ms': None if replay_ms is None else round(replay_ms, 3),
            'classes': {k: {'kernels': round(n, 1), 'ms': round(ms, 3)}
                        for k, (n, ms) in sorted(classes.items())}}


class Check:
    """One run of the steps: the options, the output folder, the log and each step's result."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / 'gpu-check.log'
        self.log_path.write_text('')
        self.results = {}
        self.stem = None
        self.name = Path(args.model).name if args.model else f'openvla{args.random}'

    def say(self, text):
        print(text, flush=True)
        with open(self.log_path, 'a', encoding='utf-8') as log:
            log.write(text + '\n')

    def run(self, name, step):
        """Run ``step``; log and record its status; a step that raises fails alone."""
        self.say(f'== {name}')
        start = time.perf_counter()
        try:
            failure = step()
        except Exception:  # noqa: B902 - one step's failure must not stop the others
            failure = traceback.format_exc()
        result = {'status': 'failed' if failure else 'ok',
                  'seconds': round(time.perf_counter() - start, 1)}
        if failure:
            result['error'] = failure[-4000:]
            self.say(f'{name} FAILED:\n{failure}')
        self.results[name] = result
        self.say(f'== {name}: {result["status"]} in {result["seconds"]} s')
        (self.out / 'steps.json').write_text(json.dumps(self.results, indent=2) + '\n')

    def wheels(self):
        """Install the wheels of ``--wheels`` (no index, no deps) into a folder of their own."""
        wheels = sorted(str(p) for p in Path(self.args.wheels or '').glob('*.whl')) \
            if self.args.wheels else []
        self.say(f"wheels: {', '.join(Path(w).name for w in wheels) or 'none'}")
        if not wheels:
            return None
        target = tempfile.mkdtemp(prefix='vla-gpu-site-')
        done = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index',
                               '--no-deps', '--no-compile', '--no-cache-dir', '--target', target,
                               *wheels], capture_output=True, text=True)
        if done.returncode:
            return f'pip install of the wheels failed:\n{done.stdout}{done.stderr}'
        sys.path.insert(0, target)
        os.environ['PYTHONPATH'] = os.pathsep.join(  # the tests step's pytest imports them too
            filter(None, (target, os.environ.get('PYTHONPATH'))))
        return None

    def device(self):
        from vla_ros.policy.backbone.configuration import resolve_device, resolve_dtype

        device = resolve_device(self.args.device)
        return device, resolve_dtype('auto', device)

    def environment(self):
        from vla_ros.bench import machine

        info = machine.describe(self.device()[0])
        self.stem = f"{info['date']}-{re.sub(r'[^A-Za-z0-9]+', '-', info['device_name'])}"
        self.stem = self.stem.strip('-')[:80]
        self.say(json.dumps(info, indent=2))
        missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
        if missing:
            return (f"missing Python packages: {', '.join(missing)}. On the development "
                    f'machine run `make gpu-wheels` (it downloads them into .whl/), carry .whl '
                    f'and pass --wheels .whl.')
        return None

    def tests(self):
        command = [sys.executable, '-m', 'pytest', *self.args.tests, '-q', '-rs',
                   '-p', 'no:cacheprovider']
        self.say(' '.join(command))
        try:  # bounded: the benchmarks after it must still fit in the GPU lease
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                  timeout=self.args.tests_timeout)
        except subprocess.TimeoutExpired as err:
            self.say((err.stdout or b'').decode(errors='replace')[-6000:])  # bytes, always
            return f'pytest did not end within --tests-timeout {self.args.tests_timeout} s'
        self.say(done.stdout[-6000:] + done.stderr[-3000:])
        return f'pytest exited with {done.returncode}' if done.returncode else None

    def profile(self):
        from vla_ros.bench import openvla as bench

        device, dtype = self.device()
        policy = (bench.OpenVLAPolicy.from_pretrained(self.args.model, device=device,
                                                      dtype=dtype, fast=True)
                  if self.args.model else bench.build_random(self.args.random, device, dtype,
                                                             fast=True))
        try:
            profile = profile_decode(policy)
        finally:
            policy.close()
        self.write(f'{self.name}-decode-profile.json', profile)

    def openvla(self):
        from vla_ros.bench import openvla as bench

        device, dtype = self.device()
        args = self.args
        source = ['--model', args.model] if args.model else ['--random', args.random]
        return self.bench(bench.main, f'{self.name}.json',
                          [*source, '--device', str(device), '--dtype', str(dtype)[6:]])

    def oft(self):
        from vla_ros.bench import oft

        device, dtype = self.device()
        return self.bench(oft.main, f'openvla-oft{self.args.random}.json',
                          ['--random', self.args.random, '--device', str(device),
                           '--dtype', str(dtype)[6:]])

    def preprocess(self):
        """Time OFT's TF-exact preprocessing per 640 x 480 frame: resize on host and GPU."""
        from vla_ros.bench import preprocess

        device = self.device()[0]
        figures = {'cpu': preprocess.measure(self.args.n)}
        if device.type == 'cuda':
            figures[str(device)] = preprocess.measure(self.args.n, device=device)
        self.write('oft-preprocess.json', {'unit': 'ms per 640x480 frame, p50 and p95, one '
                                           'torch thread', 'resize_on': figures})

    def bench(self, main, name, argv):
        """Run a benchmark's ``main`` with ``--n`` and ``--json`` under --out; log its output."""
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            status = main([*argv, '--n', str(self.args.n), '--json', str(self.path(name))])
        self.say(buffer.getvalue())
        return f'exit status {status}' if status else None

    def table(self):
        text = DOC.read_text()
        table = gpu_table([*PERF.glob('*.json'), *self.out.glob('*.json')])
        (self.out / DOC.name).write_text(with_table(text, table))
        self.say(table)

    def path(self, name):
        return self.out / f'{self.stem or "unknown-device"}-{name}'

    def write(self, name, data):
        self.path(name).write_text(json.dumps(data, indent=2) + '\n')
        self.say(json.dumps(data, indent=2))


# ---- the table of docs/PERFORMANCE.md -----------------------------------------------------------
def load_reports(paths):
    """Return {path: report} of the benchmark JSONs in ``paths`` run on CUDA (profiles apart)."""
    reports = {}
    for path in sorted(set(map(Path, paths))):
        if path.name.endswith(('-decode-profile.json', '-preprocess.json', 'steps.json')):
            continue
        report = json.loads(path.read_text())
        if str(report.get('meta', {}).get('device', '')).startswith('cuda'):
            reports[path] = report
    return reports


def profile_kernels(path):
    """Return the CUDA kernels per decode layer from the profile beside ``path``, or None."""
    profile_path = path.with_name(path.name[:-len('.json')] + '-decode-profile.json')
    if not profile_path.is_file():
        return None
    profile = json.loads(profile_path.read_text())
    if profile.get('counted', 'CUDA kernels') != 'CUDA kernels':
        return None
    return profile['kernels_per_step'] / profile['layers']


def gpu_table(paths):
    """Return the Markdown table of the benchmark JSON files in ``paths`` run on a GPU."""
    rows = ['| date | device | host CPU | model, dtype | fast path p50 | baseline p50 '
            '(`generate()`, or OFT: eager transformers) | ratio | GPU memory steady | '
            'CUDA kernels / decode layer (profile) | command |',
            '|---|---|---|---|---|---|---|---|---|---|']
    for path, report in load_reports(paths).items():
        meta = report['meta']
        memory = report.get('memory') or {}
        steady = memory.get('steady_bytes')
        head = (f"| {meta['date']} | {meta['device_name']} | {meta.get('host_cpu', '–')} | ")
        tail = (f"| {'–' if steady is None else f'{steady / 2**30:.1f} GiB'} | "
                f"{{kernels}} | `{meta['command']}` |")
        if report.get('kind') == 'oft':
            rows.append(head + oft_cells(report) + tail.format(kernels='–'))
            continue
        fast, base = report['paths']['fast'], report['paths']['generate']
        kernels = profile_kernels(path)
        rows.append(
            head + f"{meta['model']}, {meta['dtype']} | "
            f"{fast['end_to_end_ms']['p50']:.1f} ms ({fast['hz_p50']:.1f} Hz) | "
            f"{base['end_to_end_ms']['p50']:.1f} ms ({base['hz_p50']:.1f} Hz) | "
            f"{report['ratio_fast_vs_generate']:.2f}x "
            + tail.format(kernels='–' if kernels is None else f'{kernels:.1f}'))
    if len(rows) == 2:
        rows.append('| – | no GPU run committed yet | | | | | | | | |')
    return '\n'.join(rows)


def oft_cells(report):
    """Return the model, fast, eager and ratio cells of an OpenVLA-OFT benchmark's row."""
    meta, paths = report['meta'], report['paths']
    fast, eager = paths['fast']['phases_ms'], paths['eager']['phases_ms']
    forward = fast.get('forward', fast['total'])['p50']
    return (f"{meta['model']} ({meta['platform']}, {meta['images']} images, chunk "
            f"{meta['chunk'][0]}), {meta['dtype']} | forward {forward:.1f} ms + host "
            f"preprocessing {fast['preprocess']['p50']:.1f} ms per chunk "
            f"({paths['fast']['actions_per_s']:.0f} actions/s) | "
            f"{eager['total']['p50']:.1f} ms | {report['ratio_fast_vs_eager']:.2f}x ")


def with_table(text, table):
    """Return ``text`` with the part between the GPU table markers replaced by ``table``."""
    if START not in text or END not in text:
        raise SystemExit(f'the document has no {START} ... {END} markers')
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f'{head}{START}\n{table}\n{END}{tail}'


def update_doc(doc=DOC, perf_dir=PERF):
    """Regenerate the GPU table of ``doc`` from the JSONs in ``perf_dir``; return the table."""
    table = gpu_table(Path(perf_dir).glob('*.json'))
    Path(doc).write_text(with_table(Path(doc).read_text(), table))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python3 -m vla_ros.bench.gpu_check',
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument('--out', help='the folder every output goes to (required)')
    parser.add_argument('--wheels', help='a folder of wheels to install first (.whl)')
    parser.add_argument('--device', default='cuda', help="'cuda', 'cuda:N' or 'cpu'")
    parser.add_argument('--random', default='7b', choices=('tiny', 'full-vision', '7b'),
                        help='the random models benchmarked (default: 7b)')
    parser.add_argument('--model', help='an OpenVLA checkpoint for the profile and benchmark '
                        'instead of the random one')
    parser.add_argument('--n', type=int, default=50, help='timed predictions per path')
    parser.add_argument('--tests', nargs='+', default=['test/policy/test_policy_fast.py'],
                        help='what pytest runs in the tests step')
    parser.add_argument('--tests-timeout', type=float, default=180.0, metavar='S',
                        help='seconds the tests step may take (default 180)')
    parser.add_argument('--update-doc', action='store_true',
                        help='only regenerate docs/PERFORMANCE.md from docs/perf/*.json')
    args = parser.parse_args(argv)
    if args.update_doc:
        print(update_doc())
        return 0
    if not args.out:
        parser.error('--out DIR is required: every output of the check goes there')
    check = Check(args)
    for name in ('wheels', 'environment', 'tests', 'profile', 'openvla', 'oft', 'preprocess',
                 'table'):
        check.run(name, getattr(check, name))
    failed = [name for name, result in check.results.items() if result['status'] != 'ok']
    check.say(f"gpu-check: {'failed: ' + ', '.join(failed) if failed else 'every step ok'}; "
              f'outputs in {check.out}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
