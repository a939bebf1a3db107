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
* the **chunks** the policy returned and which row a tick publishes (``chunks.ChunkSchedule``:
  ``open_loop``, ``receding`` or ``ensemble``; OpenVLA's one-row chunks behave as before);
* the **tick verdict**: ``disabled``, ``idle`` (no instruction), ``busy`` (the model still works
  on an earlier tick: skipped, never queued) or ``queued`` (a chunk still executes: no new
  inference), ``stale`` (a camera with no image, or one older than ``max_image_age``; a state
  older than ``max_proprio_age``), ``future`` (stamped more than ``FUTURE_TOLERANCE_S`` ahead),
  ``skewed`` (the cameras' stamps more than ``max_camera_skew`` apart), ``bad_state`` (the state
  could not be assembled), else ``ready`` with a ``Ticket``. ``detail`` names the camera or the
  state. A tick may also have published the next row of a chunk (``emitted``);
* the **clock**: a tick earlier than the one before means the clock jumped back (``use_sim_time``
  with a bag played in a loop). Chunk rows, the in-flight prediction and "published since" are
  timed on the old time, so the jump drops them (a new generation, as an instruction change)
  and the tick reports it (``clock_jump_s``); an image or state stamped ahead of the clock, but
  no later than the time the clock jumped from, is from before the jump: ``stale``, not
  ``future``, until one stamped on the new time arrives;
* the **commit gate**: every action, chunk and hold leaves through ``emit``, called with the lock
  held. A chunk is committed only if its ticket's generation is still current and the core is
  enabled, so once a hold has been emitted nothing computed before it can follow it.

``infer`` is the step between ``ready`` and ``commit`` that both callers share: decode the
frames, predict (every camera's image and the state, through ``vla_ros.policy.Policy``'s one
``predict``), check the result.
"""

import dataclasses
import math
import threading
import time

import numpy as np

from vla_ros.control.chunks import ChunkSchedule
from vla_ros.control.clock import before_jump, ClockWatch
from vla_ros.control.images import ConversionError

# Longer instructions are refused (idle); OpenVLA prompts are one short sentence.
MAX_INSTRUCTION_CHARS = 1000
# An image stamped further than this ahead of the clock that uses it is refused.
FUTURE_TOLERANCE_S = 0.05
VERDICTS = ('disabled', 'idle', 'busy', 'queued', 'stale', 'future', 'skewed', 'bad_state',
            'ready')


def repeated_cameras(topics):
    """
    Return what is wrong with a camera list that names a topic twice ('' when nothing is).

    Every camera is one image of the policy, primary first: one topic listed twice would feed
    one camera as two images. vla_node (``camera_topics``) and vla_eval (``--camera-topics``)
    both refuse it, with these words after the name of their option.
    """
    topics = list(topics)
    twice = sorted({topic for topic in topics if topics.count(topic) > 1})
    if not twice:
        return ''
    return (f'lists {", ".join(twice)} more than once; list one topic per camera, the primary '
            'camera first')


def image_age_status(age, max_age):
    """Classify an image by its age at use (seconds): 'future', 'stale' or 'ok'."""
    if age < -FUTURE_TOLERANCE_S:
        return 'future'
    if age > max_age:
        return 'stale'
    return 'ok'


def matched_frames(candidates, max_skew, stamp):
    """
    Pick one frame per camera from ``candidates`` (per camera: its newest frames, newest first).

    Cameras triggered together publish one after the other, so a tick can find one camera's new
    frame next to another's previous one. Every camera therefore uses its newest frame stamped
    within ``max_skew`` of the newest frame of the camera that lags (the oldest newest stamp);
    a camera with none such, and every camera when ``max_skew`` is None, uses its newest (the
    core then calls a lag the frames held cannot bridge ``skewed``). ``stamp(frame)``: its stamp
    in seconds, asked only as needed. A camera with no frame yet gives None.
    """
    newest = [frames[0] if frames else None for frames in candidates]
    if max_skew is None or len(candidates) < 2 or any(f is None for f in newest):
        return tuple(newest)
    lag = min(stamp(f) for f in newest)
    return tuple(next((f for f in frames if abs(stamp(f) - lag) <= max_skew), frames[0])
                 for frames in candidates)


@dataclasses.dataclass(frozen=True)
class Frame:
    """A camera message (opaque to the core), its header stamp in seconds, and its topic."""

    msg: object
    stamp_s: float
    name: str = 'camera'


@dataclasses.dataclass(frozen=True)
class State:
    """
    The robot's state vector, the stamp of its oldest part, or why it is missing.

    A ``problem`` means no action. ``values`` are then None, except for a state assembled with
    NaN or inf in it, which keeps them (for counting what was refused, never for acting).
    """

    values: object = None  # float64 (P,)
    stamp_s: float = math.nan
    problem: str = ''


@dataclasses.dataclass(frozen=True)
class Observation:
    """
    What one prediction uses: a frame per camera (primary first; None: no message yet).

    ``state`` when the policy needs the robot's state (``needs_state``). The observation's
    stamp is the primary camera's: outputs are stamped with it and chunks are timed from it.
    """

    frames: tuple
    names: tuple = ('camera',)
    state: State = None
    needs_state: bool = False

    @property
    def stamp_s(self):
        return self.frames[0].stamp_s

    @classmethod
    def single(cls, frame):
        """One camera and no state (OpenVLA)."""
        return cls((frame,), (frame.name if frame is not None else 'camera',))


@dataclasses.dataclass(frozen=True)
class Ticket:
    """Leave to predict, from one ``ready`` tick: the inputs and the generation they belong to."""

    generation: int
    instruction: str
    observation: Observation
    time_s: float
    start_s: float = math.nan  # the tick of the chunk's row 0: this one, or the next if it acted


@dataclasses.dataclass(frozen=True)
class Emission:
    """
    What leaves the core: an ``action`` (one row), a ``chunk`` (all rows) or a ``hold``.

    ``time_s``: when it leaves (an action's tick; a hold, the stop a bridge needs at once: a
    zero delta). ``source`` is the
    observation the action or chunk came from. ``plan``: with the first action of a chunk in
    ``open_loop``, the rows (K', D) the node will execute from it on, one per period (row 0 =
    this action); None otherwise.
    """

    kind: str
    values: np.ndarray = None
    source: Observation = None
    time_s: float = math.nan
    plan: np.ndarray = None


@dataclasses.dataclass(frozen=True)
class Tick:
    """
    The verdict of one tick; ``ticket`` when ``ready``; ``emitted`` when a row was published.

    ``detail`` says which camera or what about the state, for ``stale``/``future``/``skewed``/
    ``bad_state``.
    """

    verdict: str
    time_s: float
    age_s: float = math.nan  # primary image age at the tick; NaN without an image
    ticket: Ticket = None
    emitted: Emission = None
    detail: str = ''
    clock_jump_s: float = 0.0  # > 0: the clock jumped back this far since the previous tick


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
    for recordings whose camera stamps come from another clock); ``max_camera_skew`` and
    ``max_proprio_age`` None turn theirs off (the state's future check too). ``period`` is the
    control period (s).
    """

    def __init__(self, emit, max_image_age=0.5, period=0.2, chunk_mode='open_loop',
                 execute_steps=0, ensemble_decay=0.01, max_camera_skew=None,
                 max_proprio_age=None):
        self._emit = emit
        self._lock = threading.Lock()
        self._instruction = ''
        self._generation = 0
        self._enabled = True
        self._emitted_at = -math.inf
        self._clock = ClockWatch()  # the ticks' times: a backward jump is noticed here
        self._schedule = ChunkSchedule(chunk_mode, period, execute_steps, ensemble_decay)
        self.max_image_age = max_image_age
        self.max_camera_skew = max_camera_skew
        self.max_proprio_age = max_proprio_age

    @property
    def max_image_age(self):
        return self._schedule.max_age

    @max_image_age.setter
    def max_image_age(self, value):
        self._schedule.max_age = value  # a chunk's rows expire with its image

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

    @property
    def chunk_step(self):
        """Return the row of the newest chunk last published (-1: none)."""
        with self._lock:
            chunks = self._schedule.chunks
            return chunks[-1].last if chunks else -1

    # ---------------------------------------------------------------- instruction, enable, reset
    def _new_generation(self):
        self._generation += 1
        self._schedule.clear()

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
    def tick(self, now, observation, busy=False):
        """
        Decide what the tick at ``now`` (seconds) does with the newest ``observation``.

        ``observation``: an ``Observation`` (or None: nothing received yet). ``busy``: the model
        still works on an earlier ticket. A published row is in ``emitted``; a backward clock
        jump since the previous tick in ``clock_jump_s``.
        """
        with self._lock:
            jump = self._clock_jump(now)
            tick = self._tick(now, observation, busy)
        return dataclasses.replace(tick, clock_jump_s=jump) if jump else tick

    def _clock_jump(self, now):
        """Return how far the clock jumped back since the previous tick (0: it did not)."""
        jump = self._clock.read(now)
        if jump:
            self._new_generation()  # rows and predictions timed on the old time
            self._emitted_at = -math.inf
        return jump

    def _tick(self, now, observation, busy):
        if not self._enabled:
            return Tick('disabled', now)
        if not self._instruction:
            return Tick('idle', now)
        emitted = self._publish(now)
        if busy or not self._schedule.wants_inference():
            return Tick('queued' if emitted else 'busy', now, emitted=emitted)
        verdict, age, detail = self._check(now, observation)
        if verdict != 'ok':
            return Tick(verdict, now, age, emitted=emitted, detail=detail)
        start = now + self._schedule.period if emitted else now
        ticket = Ticket(self._generation, self._instruction, observation, now, start)
        return Tick('ready', now, age, ticket=ticket, emitted=emitted)

    def _publish(self, now, catch_up=False):
        action = self._schedule.action(now, catch_up)
        if action is None:
            return None
        emission = Emission('action', action[0], action[1], now, action[2])
        self._emit(emission)
        self._emitted_at = now
        return emission

    def _check(self, now, observation):
        """Return (verdict, primary image age, detail) of an observation at ``now``."""
        frames = observation.frames if observation is not None else (None,)
        names = observation.names if observation is not None else ('camera',)
        for frame, name in zip(frames, names):
            if frame is None:
                return 'stale', math.nan, f'no image received on {name} yet'
        age = now - frames[0].stamp_s
        if self.max_image_age is not None:
            for frame, name in zip(frames, names):
                status = image_age_status(now - frame.stamp_s, self.max_image_age)
                if status == 'stale':
                    return status, age, (f'{name}: newest image {now - frame.stamp_s:.2f} s old '
                                         f'(max_image_age {self.max_image_age} s)')
                if status == 'future':
                    return self._ahead(now, frame.stamp_s, f'{name}: image', age)
        stamps = [frame.stamp_s for frame in frames]
        skew = max(stamps) - min(stamps)
        if self.max_camera_skew is not None and skew > self.max_camera_skew:
            oldest = names[int(np.argmin(stamps))]
            return 'skewed', age, (f'cameras stamped {skew:.3f} s apart (max_camera_skew '
                                   f'{self.max_camera_skew} s); {oldest} lags')
        if observation.needs_state:
            state = observation.state
            if state is None or state.problem:
                return 'bad_state', age, state.problem if state else 'no state received yet'
            state_age = now - state.stamp_s
            if self.max_proprio_age is not None:  # None: stamps from another clock (offline)
                if state_age > self.max_proprio_age:
                    return 'stale', age, (f'state {state_age:.2f} s old (max_proprio_age '
                                          f'{self.max_proprio_age} s)')
                if state_age < -FUTURE_TOLERANCE_S:
                    return self._ahead(now, state.stamp_s, 'state', age)
        return 'ok', age, ''

    def _ahead(self, now, stamp, what, age):
        """Return the verdict of ``what`` stamped ahead of the clock: pre-jump (stale), future."""
        if before_jump(stamp, self._clock.jumped_from, FUTURE_TOLERANCE_S):
            return 'stale', age, (f'{what} stamped {stamp - now:.3f} s ahead of the clock, from '
                                  'before it jumped back; waiting for one stamped on the new time')
        return 'future', age, f'{what} stamped {stamp - now:.3f} s in the future of the clock'

    def commit(self, ticket, rows, now):
        """
        Take a predicted chunk (K, D) at ``now``, unless the ticket is outdated.

        Emits the chunk, and its row for ``now`` when nothing was published since the ticket's
        tick. Returns False when the instruction changed, a reset or hold happened, or the core
        was disabled since the ticket was issued, or the clock is earlier than the ticket's tick
        (it jumped back; the next tick says so).
        """
        with self._lock:
            if (ticket.generation != self._generation or not self._enabled
                    or now < ticket.time_s):
                return False
            self._schedule.add(rows, ticket.observation, ticket.start_s)
            self._emit(Emission('chunk', np.asarray(rows), ticket.observation))
            if self._emitted_at < ticket.time_s:
                self._publish(now, catch_up=True)
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
    Decode the ticket's frames with ``decode(msg)``, predict, and check the actions.

    A frame ``decode`` refuses (``ConversionError``) is ``bad_image``; a policy result that is
    not ``valid`` (a non-action token) or not finite is ``invalid``. Errors of the policy itself
    propagate. The policy gets the list of images and the state (None when the layout is empty).
    Latency is measured on a steady clock (the node clock may stand still under
    ``use_sim_time``).
    """
    observation = ticket.observation
    images = []
    for frame, name in zip(observation.frames, observation.names):
        try:
            images.append(decode(frame.msg))
        except ConversionError as exc:
            return Prediction('bad_image', detail=f'{name}: {exc}')
    start = time.perf_counter()
    state = observation.state.values if observation.needs_state else None
    result = policy.predict(images, ticket.instruction, proprio=state, unnorm_key=unnorm_key)
    latency = time.perf_counter() - start
    if not result.valid:
        tokens = list(result.token_ids)[:16]
        return Prediction('invalid', result=result, latency_s=latency,
                          detail=f'the model produced a non-action token (tokens {tokens})')
    rows = np.asarray(result.rows, dtype=np.float64)  # (K, D)
    finite = np.isfinite(rows).all(axis=1)  # (K,)
    if not finite.all():  # the whole chunk goes: its finite rows were predicted with the others
        bad = np.flatnonzero(~finite).tolist()
        return Prediction('invalid', result=result, latency_s=latency,
                          detail=f'the model produced non-finite values (NaN or inf) in rows '
                          f'{bad[:16]} of a chunk of {len(rows)}')
    return Prediction('ok', rows, result, latency)
