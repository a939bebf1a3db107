"""
Statistics a node reports in /diagnostics: percentiles of a window, event rates, counters.

ROS-free and thread-safe: the control loop, the worker and the diagnostics timer share them.
"""

import collections
import threading

import numpy as np


class Window:
    """Sliding window of recent float samples with percentile summaries."""

    def __init__(self, size=200):
        self._lock = threading.Lock()
        self._values = collections.deque(maxlen=size)

    def add(self, value):
        with self._lock:
            self._values.append(float(value))

    def summary(self):
        """Return ``{'p50', 'p95', 'p99', 'max', 'last', 'n'}``; NaN where there are no samples."""
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
        if values.size == 0:
            return dict.fromkeys(('p50', 'p95', 'p99', 'max', 'last'), float('nan')) | {'n': 0}
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return {'p50': float(p50), 'p95': float(p95), 'p99': float(p99),
                'max': float(values.max()), 'last': float(values[-1]), 'n': int(values.size)}


class RateMeter:
    """
    Events per second over a sliding time window (times in seconds on any one clock).

    Marks later than ``now`` are from before the clock jumped back (``use_sim_time`` with a
    looping bag): they are dropped, so the rate restarts on the new time.
    """

    def __init__(self, horizon=5.0):
        self._lock = threading.Lock()
        self._times = collections.deque()
        self._horizon = horizon

    def _expire(self, now):
        if self._times and self._times[-1] > now:
            self._times.clear()
        while self._times and now - self._times[0] > self._horizon:
            self._times.popleft()

    def mark(self, now):
        with self._lock:
            self._expire(now)
            self._times.append(now)

    def rate(self, now):
        with self._lock:
            self._expire(now)
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


class Counters:
    """Named monotonic counters plus the last error text, safe to bump from any thread."""

    def __init__(self, *names):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(names, 0)
        self.last_error = ''

    def bump(self, name, error=None):
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + 1
            if error:
                self.last_error = error

    def snapshot(self):
        with self._lock:
            return dict(self._counts), self.last_error
