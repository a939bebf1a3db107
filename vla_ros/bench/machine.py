"""
The machine a figure was measured on, for every benchmark JSON: device, CUDA, driver, host CPU.

The ``generate()`` baseline and OFT's preprocessing are CPU-bound, so a GPU figure means little
without the host CPU beside it; the driver and CUDA versions say which kernels ran.
"""

import os
import platform
import subprocess
import time

import torch


def host_cpu():
    """Return the host CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_smi(device_index=0):
    """Return {name, memory, driver, sm clock} of GPU ``device_index`` from nvidia-smi, or {}."""
    fields = ('name', 'memory.total', 'driver_version', 'clocks.max.sm')
    try:
        out = subprocess.run(['nvidia-smi', f'--id={device_index}',
                              f"--query-gpu={','.join(fields)}", '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    values = [v.strip() for v in out.split(',')]
    return dict(zip(('gpu', 'gpu_memory', 'driver', 'sm_clock_max'), values)) \
        if len(values) == len(fields) else {}


def describe(device):
    """Return a dict of the machine, the versions and ``device`` (a ``torch.device``)."""
    import transformers

    info = {'date': time.strftime('%Y-%m-%d'), 'device': str(device),
            'host_cpu': host_cpu(), 'cpu_count': os.cpu_count(),
            'threads': torch.get_num_threads(), 'python': platform.python_version(),
            'torch': torch.__version__, 'transformers': transformers.__version__,
            'cuda': torch.version.cuda}
    if device.type == 'cuda':
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        info.update(device_name=torch.cuda.get_device_name(index),
                    capability='.'.join(map(str, torch.cuda.get_device_capability(index))),
                    multiprocessors=properties.multi_processor_count,
                    **nvidia_smi(index))
    else:
        info['device_name'] = f"CPU ({info['host_cpu']})"
    return info
