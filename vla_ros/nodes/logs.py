"""A log throttle cheap enough for a control loop (one line per kind of problem per period)."""

import threading
import time


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
