"""The control core (vla_ros.control.core): every decision of a tick, in milliseconds, no DDS."""

import threading
import types

import numpy as np
import pytest

from vla_ros.control.core import (ControlCore, Frame, FUTURE_TOLERANCE_S, infer,
                                  MAX_INSTRUCTION_CHARS)
from vla_ros.control.formats import ConversionError

T = 1000.0  # a node clock time, s


def action(value, rows=1):
    """Return a policy result whose rows are all ``value`` (a chunk when ``rows`` > 1)."""
    values = np.full((rows, 7), float(value)) if rows > 1 else np.full(7, float(value))
    return types.SimpleNamespace(values=values, valid=True, token_ids=np.arange(7))


class Policy:
    """Returns ``result``; with ``gate`` set, blocks in ``predict`` until the test releases it."""

    def __init__(self, result, gate=None):
        self.result = result
        self.gate = gate
        self.entered = threading.Event()
        self.calls = []

    def predict(self, image, instruction, unnorm_key=None):
        self.calls.append((image, instruction, unnorm_key))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(5.0), 'the test never released the policy'
        return self.result


@pytest.fixture
def core():
    out = []
    core = ControlCore(out.append, max_image_age=0.5)
    core.out = out
    return core


def fresh(now=T, age=0.1, msg='frame'):
    return Frame(msg, now - age)


def emitted(core):
    return [(e.kind, None if e.values is None else float(e.values[0])) for e in core.out]


def test_verdicts_in_order(core):
    assert core.tick(T, fresh()).verdict == 'idle'  # no instruction yet
    core.set_instruction('pick up the cup')
    assert core.tick(T, None).verdict == 'stale'  # no image at all
    assert core.tick(T, fresh(age=0.6)).verdict == 'stale'
    assert core.tick(T, fresh(age=-(FUTURE_TOLERANCE_S + 0.01))).verdict == 'future'
    assert core.tick(T, fresh(age=-FUTURE_TOLERANCE_S / 2)).verdict == 'ready'  # clock jitter
    assert core.tick(T, fresh(), busy=True).verdict == 'busy'
    tick = core.tick(T, fresh(age=0.2))
    assert tick.verdict == 'ready' and tick.age_s == pytest.approx(0.2)
    assert (tick.ticket.instruction, tick.ticket.frame.msg) == ('pick up the cup', 'frame')
    core.set_enabled(False, T)
    assert core.tick(T, fresh(), busy=True).verdict == 'disabled'
    core.max_image_age = None  # offline, camera stamps from another clock: no age checks
    core.set_enabled(True, T)
    assert core.tick(T, fresh(age=100.0)).verdict == 'ready'
    assert core.tick(T, fresh(age=-100.0)).verdict == 'ready'


def test_commit_emits_the_first_row_and_queues_the_rest(core):
    core.set_instruction('stack the blocks')
    ticket = core.tick(T, fresh()).ticket
    chunk = np.arange(3)[:, None] * np.ones(7)  # rows 0, 1, 2
    assert core.commit(ticket, chunk)
    assert emitted(core) == [('action', 0.0)]
    assert core.out[0].frame is ticket.frame  # stamped with the image it came from
    for value in (1.0, 2.0):
        tick = core.tick(T + value, None)  # queued actions drain even without a fresh image
        assert tick.verdict == 'queued' and tick.emitted.values[0] == value
    assert core.tick(T + 3, None).verdict == 'stale'  # queue empty: needs a frame again
    assert emitted(core) == [('action', 0.0), ('action', 1.0), ('action', 2.0)]


def apply(core, change, now):
    if change == 'instruction':
        core.set_instruction('close the drawer')
    elif change == 'reset':
        core.reset()
    elif change == 'disable':
        core.set_enabled(False, now)
    elif change == 'hold':
        core.hold(now)  # deactivate
    else:
        update = core.set_instruction('x' * (MAX_INSTRUCTION_CHARS + 1))
        assert update.refused.startswith('instruction of 1001 characters refused')
        assert core.instruction == ''  # idle, not "carry on with the old task"


@pytest.mark.parametrize('change', ['instruction', 'reset', 'disable', 'hold', 'long'])
def test_anything_that_changes_the_task_drops_in_flight_and_queued_actions(core, change):
    holds = [('hold', None)] if change in ('disable', 'hold') else []
    core.set_instruction('open the drawer')
    ticket = core.tick(T, fresh()).ticket  # the model is predicting from this
    apply(core, change, T + 0.05)
    assert not core.commit(ticket, np.ones((2, 7)))  # computed before the change: dropped
    assert emitted(core) == holds
    core.out.clear()
    core.set_enabled(True, T + 0.1)
    core.set_instruction('open the drawer')
    assert core.commit(core.tick(T + 0.1, fresh(T + 0.1)).ticket, np.ones((3, 7)))
    assert core.tick(T + 0.2, None).verdict == 'queued'  # one of two queued rows out
    apply(core, change, T + 0.25)
    assert core.tick(T + 0.3, None).verdict != 'queued'  # the other is gone
    assert emitted(core) == [('action', 1.0), ('action', 1.0)] + holds


def test_disable_during_inference_nothing_follows_the_hold(core):
    """The race of a disable while the worker predicts, driven step by step."""
    gate = threading.Event()
    policy = Policy(action(0.5), gate)
    core.set_instruction('pick up the cup')
    ticket = core.tick(T, fresh()).ticket
    committed = []

    def worker():
        prediction = infer(policy, ticket, lambda msg: np.zeros((4, 4, 3), np.uint8), 'k')
        committed.append(core.commit(ticket, prediction.rows))

    thread = threading.Thread(target=worker)
    thread.start()
    assert policy.entered.wait(5.0)  # the model is working on the ticket
    core.set_enabled(False, T + 0.1)  # the executor thread disables: the hold goes out now
    gate.set()  # the prediction finishes after the hold
    thread.join(5.0)
    assert committed == [False]
    assert emitted(core) == [('hold', None)]  # the hold is the last motion message
    core.set_enabled(True, T + 0.2)
    assert core.tick(T + 0.2, fresh(T + 0.2)).verdict == 'ready'  # and the loop goes on


def test_concurrent_commits_and_disables_never_emit_after_a_hold(core):
    """Hammer the gate from two threads: after a hold, no action of a ticket issued before it."""
    core.set_instruction('wipe the table')
    stop = threading.Event()
    ticket_generation = [None]  # of the commit in progress (only the worker commits)
    log = []  # (kind, generation): the ticket's for actions, the new one for holds

    def emit(emission):  # called under the core's lock
        generation = ticket_generation[0] if emission.kind == 'action' else core._generation
        log.append((emission.kind, generation))

    core._emit = emit

    def worker():
        while not stop.is_set():
            tick = core.tick(T, fresh())
            if tick.ticket is not None:
                ticket_generation[0] = tick.ticket.generation
                core.commit(tick.ticket, np.ones((1, 7)))

    thread = threading.Thread(target=worker)
    thread.start()
    for _ in range(300):
        core.set_enabled(False, T)
        core.set_enabled(True, T)
    stop.set()
    thread.join(5.0)
    last_hold = -1
    for kind, generation in log:
        if kind == 'hold':
            last_hold = generation
        else:
            assert generation >= last_hold, 'an action from before a hold was published after it'
    assert ('hold', 300 + 1) in log and any(kind == 'action' for kind, _ in log)


def test_instructions_are_stripped_and_changes_counted(core):
    update = core.set_instruction('  Pick up the cup  ')
    assert (update.text, update.changed, update.refused) == ('Pick up the cup', True, '')
    generation = core.generation
    assert not core.set_instruction('Pick up the cup ').changed
    assert core.generation == generation  # the same task: nothing in flight is dropped
    refused = core.refuse_instruction('instruction is not valid UTF-8')
    assert (refused.text, refused.changed, refused.refused) == ('', True,
                                                                'instruction is not valid UTF-8')
    assert core.tick(T, fresh()).verdict == 'idle'
    assert core.set_instruction('x' * MAX_INSTRUCTION_CHARS).refused == ''  # at the limit: fine


def test_infer_classifies_bad_frames_invalid_and_non_finite_results(core):
    core.set_instruction('pick')
    ticket = core.tick(T, fresh()).ticket

    def refuse(msg):
        raise ConversionError('unknown image encoding')

    assert infer(Policy(action(1.0)), ticket, refuse, 'k').status == 'bad_image'
    invalid = types.SimpleNamespace(values=np.ones(7), valid=False, token_ids=[2] * 7)
    result = infer(Policy(invalid), ticket, lambda msg: 'rgb', 'k')
    assert result.status == 'invalid' and 'non-action token' in result.detail
    assert infer(Policy(action(np.nan)), ticket, lambda msg: 'rgb', 'k').status == 'invalid'
    policy = Policy(action(0.25, rows=2))
    ok = infer(policy, ticket, lambda msg: f'rgb of {msg}', 'key')
    assert ok.status == 'ok' and ok.rows.shape == (2, 7) and ok.latency_s >= 0
    assert policy.calls == [('rgb of frame', 'pick', 'key')]
