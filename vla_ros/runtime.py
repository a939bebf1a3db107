"""
ROS-free pieces of a fixed-rate control loop: the newest-input slot, the inference worker, stats.

The node owns one of each. Sensor callbacks only store into a ``Latest``; the timer hands a job to
the ``InferenceWorker``, which runs it on its own thread so the executor keeps serving
subscriptions, services and parameters while the model works. A tick that finds the worker busy
is skipped and counted, never queued.
"""

import collections
import threading
import time
import traceback

import numpy as np

# The rules the live node and offline evaluation share, so offline results predict live ones.
# Longer instructions are refused (the node goes idle); OpenVLA prompts are one short sentence.
MAX_INSTRUCTION_CHARS = 1000
# An image stamped further than this ahead of the clock that uses it is refused.
FUTURE_TOLERANCE_S = 0.05


def image_age_status(age, max_age):
    """Classify an image by its age at use (seconds): 'future', 'stale' or 'ok'."""
    if age < -FUTURE_TOLERANCE_S:
        return 'future'
    if age > max_age:
        return 'stale'
    return 'ok'


class Latest:
    """Thread-safe holder of the newest item (latest-only, like a depth-1 queue)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._item = None

    def put(self, item):
        with self._lock:
            self._item = item

    def get(self):
        with self._lock:
            return self._item

    def take(self):
        """Return the newest item and empty the slot (None when nothing new arrived)."""
        with self._lock:
            item, self._item = self._item, None
            return item

    def clear(self):
        self.put(None)


class InferenceWorker:
    """
    One background thread that runs one job at a time.

    ``submit`` never blocks and never queues: it returns False when a job is still running.
    Exceptions raised by a job are passed to ``on_error`` and never kill the thread.
    """

    def __init__(self, on_error, name='vla_inference'):
        self._on_error = on_error
        self._cond = threading.Condition()
        self._job = None
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self):
        with self._cond:
            return self._busy

    def submit(self, job):
        with self._cond:
            if self._busy or self._stopping:
                return False
            self._job = job
            self._busy = True
            self._cond.notify()
            return True

    def wait_idle(self, timeout=None):
        """Block until no job runs (used when stopping); return True if idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def stop(self, timeout=5.0):
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _report(self, exc):
        try:
            self._on_error(exc)
        except Exception:  # noqa: B902 - a failing error handler must not end the worker either
            traceback.print_exc()

    def _run(self):
        while True:
            with self._cond:
                while self._job is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job, self._job = self._job, None
            try:
                job()
            except Exception as exc:  # noqa: B902 - a policy is user code; the loop must survive
                self._report(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


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
    """Events per second over a sliding time window (times in seconds on any one clock)."""

    def __init__(self, horizon=5.0):
        self._lock = threading.Lock()
        self._times = collections.deque()
        self._horizon = horizon

    def mark(self, now):
        with self._lock:
            self._times.append(now)
            while self._times and now - self._times[0] > self._horizon:
                self._times.popleft()

    def rate(self, now):
        with self._lock:
            while self._times and now - self._times[0] > self._horizon:
                self._times.popleft()
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


class LogThrottle:
    """
    Log each kind of message (a key) at most once per ``period_s``, to ``logger``.

    Cheap enough for a control loop that rejects every message of a 50 Hz stream: rclpy's own
    ``throttle_duration_sec`` inspects the caller's stack and resolves file paths on every call,
    even when it then suppresses the message. rclpy ties a severity to each calling line, so each
    severity is logged from its own method here.
    """

    def __init__(self, logger, period_s=5.0):
        self._logger = logger
        self._period = float(period_s)
        self._lock = threading.Lock()
        self._last = {}

    def ready(self, key):
        """Return True (and start a new period for ``key``) when ``key`` may be logged now."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -float('inf')) < self._period:
                return False
            self._last[key] = now
            return True

    def warning(self, key, text):
        """Log ``text`` as a warning unless ``key`` was logged within the period."""
        if self.ready(key):
            self._logger.warning(text)

    def error(self, key, text):
        """Log ``text`` as an error unless ``key`` was logged within the period."""
        if self.ready(key):
            self._logger.error(text)
