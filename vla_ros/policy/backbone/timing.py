"""
``PhaseClock``: seconds per phase of one prediction (``Action.timing``, ``policy.last_timing``).

On CUDA the host runs ahead of the device, so a phase's wall time means something only when the
device is synchronised at its end; that costs a little, so it is done only when asked (``exact``).
"""

import time

import torch


class PhaseClock:
    """Wall time per phase; on CUDA it synchronises the device at each mark when ``exact``."""

    def __init__(self, device, exact):
        self._device = device
        self._cuda = device.type == 'cuda'
        self._exact = exact
        self._start = self._last = time.perf_counter()
        self._phases = {}

    def mark(self, phase):
        if self._cuda and self._exact:
            torch.cuda.synchronize(self._device)
        now = time.perf_counter()
        self._phases[phase] = now - self._last
        self._last = now

    def result(self):
        total = self._last - self._start
        if self._exact:
            return dict(self._phases, total=total)
        return {'preprocess': self._phases.get('preprocess', 0.0), 'total': total}
