"""
Hand-offs between threads in a node: the newest-input slot, a whole-stream queue, the worker.

Sensor callbacks only store: into a ``Latest`` (latest only, like a depth-1 queue), a ``Recent``
(the newest few) or, when every item of a stream matters, a ``Queue``. Long work (inference,
rendering) runs on an ``InferenceWorker`` thread, so the executor keeps serving subscriptions,
services and parameters; a tick that finds the worker busy is skipped, never queued. ROS-free.
"""

import collections
import threading
import time
import traceback


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


class Recent:
    """Thread-safe holder of the newest ``depth`` items, newest first (a depth-N latest slot)."""

    def __init__(self, depth=2):
        self._lock = threading.Lock()
        self._items = collections.deque(maxlen=depth)

    def put(self, item):
        with self._lock:
            self._items.appendleft(item)

    def get(self):
        """Return the items held, newest first (empty when none)."""
        with self._lock:
            return tuple(self._items)

    def clear(self):
        with self._lock:
            self._items.clear()


class Queue:
    """Every item of one input since the last take, oldest first (bounded; the oldest go)."""

    def __init__(self, maxlen=256):
        self._lock = threading.Lock()
        self._items = collections.deque(maxlen=maxlen)

    def put(self, item):
        """Append ``item``."""
        with self._lock:
            self._items.append(item)

    def take_all(self):
        """Return every item put since the last call and empty the queue."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items


class InferenceWorker:
    """
    One background thread that runs one job at a time.

    ``submit`` never blocks and never queues: it returns False when a job is still running.
    Whatever a job raises is passed to ``on_error`` and never ends the thread: ``BaseException``,
    not only ``Exception``. A job is user code (a policy) on a thread no signal reaches, so a
    ``SystemExit`` (``sys.exit`` in a policy), a ``KeyboardInterrupt`` or a
    ``BaseExceptionGroup`` raised there is that job's failure, never a request to stop: Ctrl-C
    reaches the main thread, and only ``stop`` ends the worker. Letting them through would end
    the thread silently (``threading`` ignores ``SystemExit``) and leave every later ``submit``
    refused as busy.
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
        except BaseException:  # noqa: B902 - a failing error handler must not end the worker
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
            except BaseException as exc:  # noqa: B902 - user code: see the class docstring
                self._report(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
