"""
The decisions of a control tick, ROS-free: one core for the live node and offline evaluation.

``vla_node`` and ``vla_eval`` both drive a ``ControlCore``: the node on its timer and worker
thread, evaluation on bag log time. Whatever the core decides (act, skip and why, publish which
action, when to hold) is therefore the same live and offline by construction.

What the core owns, under one lock:

* the **instruction**: stripped; longer than ``MAX_INSTRUCTION_CHARS`` or undecodable means
  refused and idle (not "carry on with the previous task"); every change bumps the
  **generation** and drops queued actions;
* **enable / reset**: disabling (``set_enabled(False)``) and ``hold`` (deactivate) bump the
  generation and emit a hold;
* the **tick verdict**, in this order: ``disabled``, ``idle`` (no instruction), ``busy`` (the
  model still works on an earlier tick: skipped, never queued), ``queued`` (the next action of a
  chunk the policy returned is emitted), ``stale`` (no image, or older than ``max_image_age``),
  ``future`` (stamped more than ``FUTURE_TOLERANCE_S`` ahead), else ``ready`` with a ``Ticket``;
* the **commit gate**: every action and every hold leaves through ``emit``, called with the lock
  held. An action is committed only if its ticket's generation is still current and the core is
  enabled, so once a hold has been emitted nothing computed before it can follow it.

``infer`` is the step between ``ready`` and ``commit`` that both callers share: decode the frame,
predict, check the result.
"""

import collections
import dataclasses
import math
import threading
import time

import numpy as np

from vla_ros.control.formats import ConversionError

# Longer instructions are refused (idle); OpenVLA prompts are one short sentence.
MAX_INSTRUCTION_CHARS = 1000
# An image stamped further than this ahead of the clock that uses it is refused.
FUTURE_TOLERANCE_S = 0.05
VERDICTS = ('disabled', 'idle', 'busy', 'queued', 'stale', 'future', 'ready')


def image_age_status(age, max_age):
    """Classify an image by its age at use (seconds): 'future', 'stale' or 'ok'."""
    if age < -FUTURE_TOLERANCE_S:
        return 'future'
    if age > max_age:
        return 'stale'
    return 'ok'


@dataclasses.dataclass(frozen=True)
class Frame:
    """An observation: the message (opaque to the core) and its header stamp in seconds."""

    msg: object
    stamp_s: float


@dataclasses.dataclass(frozen=True)
class Ticket:
    """Leave to predict, from one ``ready`` tick: the inputs and the generation they belong to."""

    generation: int
    instruction: str
    frame: Frame
    time_s: float


@dataclasses.dataclass(frozen=True)
class Emission:
    """
    What leaves the core: an ``action`` (7 values, from ``frame``) or a ``hold`` at ``time_s``.

    ``hold`` is the stop a bridge needs at once: a zero delta.
    """

    kind: str
    values: np.ndarray = None
    frame: Frame = None
    time_s: float = math.nan


@dataclasses.dataclass(frozen=True)
class Tick:
    """The verdict of one tick; ``ticket`` when ``ready``, ``emitted`` when ``queued``."""

    verdict: str
    time_s: float
    age_s: float = math.nan  # image age at the tick; NaN without an image
    ticket: Ticket = None
    emitted: Emission = None


@dataclasses.dataclass(frozen=True)
class InstructionUpdate:
    """The outcome of a new instruction: the text kept ('' = idle), changed or not, why refused."""

    text: str
    changed: bool
    refused: str = ''


class ControlCore:
    """
    The rules of the control loop (see the module docstring); thread-safe.

    ``emit(Emission)`` publishes; it is called with the core's lock held, so it must be quick and
    must not call back into the core. ``max_image_age`` None turns the age checks off (offline,
    for recordings whose camera stamps come from another clock).
    """

    def __init__(self, emit, max_image_age=0.5):
        self._emit = emit
        self._lock = threading.Lock()
        self._instruction = ''
        self._generation = 0
        self._enabled = True
        self._queue = collections.deque()  # (values (7,), frame) of the current chunk
        self.max_image_age = max_image_age

    @property
    def instruction(self):
        with self._lock:
            return self._instruction

    @property
    def enabled(self):
        with self._lock:
            return self._enabled

    @property
    def generation(self):
        with self._lock:
            return self._generation

    # ---------------------------------------------------------------- instruction, enable, reset
    def _new_generation(self):
        self._generation += 1
        self._queue.clear()

    def set_instruction(self, text):
        """Install ``text`` (stripped); over the length limit it is refused and the core idles."""
        if len(text) > MAX_INSTRUCTION_CHARS:
            reason = (f'instruction of {len(text)} characters refused (limit '
                      f'{MAX_INSTRUCTION_CHARS}); send one short sentence')
            return self.refuse_instruction(reason)
        text = text.strip()
        with self._lock:
            changed = text != self._instruction
            if changed:
                self._instruction = text
                self._new_generation()
        return InstructionUpdate(text, changed)

    def refuse_instruction(self, reason):
        """Refuse a bad instruction (``reason`` says why): idle until a valid one arrives."""
        with self._lock:
            changed = self._instruction != ''
            self._instruction = ''
            self._new_generation()
        return InstructionUpdate('', changed, reason)

    def reset(self):
        """Forget the instruction and any queued or in-flight action."""
        return self.refuse_instruction('')

    def set_enabled(self, enabled, now):
        """Switch output on or off; off emits a hold, after which nothing older is published."""
        with self._lock:
            self._enabled = bool(enabled)
            if not enabled:
                self._hold(now)

    def hold(self, now):
        """Emit a hold and drop everything in flight, without changing ``enabled`` (deactivate)."""
        with self._lock:
            self._hold(now)

    def _hold(self, now):
        self._new_generation()
        self._emit(Emission('hold', time_s=now))

    # ---------------------------------------------------------------- the tick and the gate
    def tick(self, now, frame, busy=False):
        """
        Decide what the tick at ``now`` (seconds) does with the newest ``frame`` (or None).

        ``busy``: the model is still working on an earlier ticket. A ``queued`` verdict has
        already emitted its action.
        """
        with self._lock:
            if not self._enabled:
                return Tick('disabled', now)
            if not self._instruction:
                return Tick('idle', now)
            if busy:
                return Tick('busy', now)
            if self._queue:
                values, source = self._queue.popleft()
                emission = Emission('action', values, source)
                self._emit(emission)
                return Tick('queued', now, emitted=emission)
            if frame is None:
                return Tick('stale', now)
            age = now - frame.stamp_s
            if self.max_image_age is not None:
                status = image_age_status(age, self.max_image_age)
                if status != 'ok':
                    return Tick(status, now, age)
            ticket = Ticket(self._generation, self._instruction, frame, now)
            return Tick('ready', now, age, ticket=ticket)

    def commit(self, ticket, rows):
        """
        Publish the first of ``rows`` (K, 7) and queue the rest, unless the ticket is outdated.

        Returns True when the action was emitted; False when the instruction changed, a reset or
        hold happened, or the core was disabled since the ticket was issued.
        """
        with self._lock:
            if ticket.generation != self._generation or not self._enabled:
                return False
            self._queue = collections.deque((row, ticket.frame) for row in rows[1:])
            self._emit(Emission('action', rows[0], ticket.frame))
            return True


@dataclasses.dataclass(frozen=True)
class Prediction:
    """
    The result of ``infer``: ``status`` ``ok`` (``rows`` to commit), ``bad_image`` or ``invalid``.

    ``result`` is the policy's own return value (an ``Action``), None for a bad image.
    """

    status: str
    rows: np.ndarray = None  # float64 (K, 7)
    result: object = None
    latency_s: float = math.nan
    detail: str = ''


def infer(policy, ticket, decode, unnorm_key):
    """
    Decode the ticket's frame with ``decode(msg)``, predict, and check the actions.

    A frame ``decode`` refuses (``ConversionError``) is ``bad_image``; a policy result that is
    not ``valid`` (a non-action token) or not finite is ``invalid``. Errors of the policy itself
    propagate. Latency is measured on a steady clock (the node clock may stand still under
    ``use_sim_time``).
    """
    try:
        rgb = decode(ticket.frame.msg)
    except ConversionError as exc:
        return Prediction('bad_image', detail=str(exc))
    start = time.perf_counter()
    result = policy.predict(rgb, ticket.instruction, unnorm_key=unnorm_key)
    latency = time.perf_counter() - start
    if not result.valid:
        tokens = list(getattr(result, 'token_ids', ()))
        return Prediction('invalid', result=result, latency_s=latency,
                          detail=f'the model produced a non-action token (tokens {tokens})')
    rows = np.atleast_2d(np.asarray(result.values, dtype=np.float64))  # (K, 7)
    if not np.all(np.isfinite(rows)):
        return Prediction('invalid', result=result, latency_s=latency,
                          detail='the model produced a non-finite action')
    return Prediction('ok', rows, result, latency)
