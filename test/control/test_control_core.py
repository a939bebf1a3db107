"""The control core (vla_ros.control.core, .chunks): every decision of a tick, no DDS."""

import threading

import numpy as np
import pytest

from vla_ros.control.concurrency import Recent
from vla_ros.control.core import (ControlCore, Frame, FUTURE_TOLERANCE_S, infer, matched_frames,
                                  MAX_INSTRUCTION_CHARS, Observation, State)
from vla_ros.control.images import ConversionError
from vla_ros.policy import Action, base

T = 1000.0  # a node clock time, s
P = 0.05  # the control period of the chunk tests (20 Hz)


def action(value, rows=1):
    """Return a policy result whose rows are all ``value`` (a chunk when ``rows`` > 1)."""
    values = np.full((rows, 7), float(value)) if rows > 1 else np.full(7, float(value))
    return action_of(values, token_ids=np.arange(7))


def action_of(values, valid=True, token_ids=()):
    """Return an ``Action`` with these values (normalised: the same)."""
    return Action(values=values, valid=valid, token_ids=np.asarray(token_ids, np.int64),
                  normalized=values)


def chunk(first, rows=8):
    """Return a chunk whose row i is all ``first + i``."""
    return (first + np.arange(rows))[:, None] * np.ones(7)


class Policy(base.Policy):
    """Returns ``result``; with ``gate`` set, blocks in ``predict`` until the test releases it."""

    action_dim, unnorm_keys = 7, ('k',)

    def __init__(self, result, gate=None):
        self.result = result
        self.gate = gate
        self.entered = threading.Event()
        self.calls = []

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        self.calls.append((images, instruction, proprio, unnorm_key))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(5.0), 'the test never released the policy'
        return self.result


def make_core(**kwargs):
    out = []
    core = ControlCore(out.append, **{'max_image_age': 0.5, **kwargs})
    core.out = out
    return core


@pytest.fixture
def core():
    return make_core()


def fresh(now=T, age=0.1, msg='frame'):
    return Observation.single(Frame(msg, now - age))


def emitted(core, kinds=('action', 'hold')):
    return [(e.kind, None if e.values is None else float(e.values.flat[0])) for e in core.out
            if e.kind in kinds]


def test_verdicts_in_order(core):
    assert core.tick(T, fresh()).verdict == 'idle'  # no instruction yet
    core.set_instruction('pick up the cup')
    tick = core.tick(T, None)
    assert tick.verdict == 'stale' and 'no image received' in tick.detail
    assert core.tick(T, fresh(age=0.6)).verdict == 'stale'
    assert core.tick(T, fresh(age=-(FUTURE_TOLERANCE_S + 0.01))).verdict == 'future'
    assert core.tick(T, fresh(age=-FUTURE_TOLERANCE_S / 2)).verdict == 'ready'  # clock jitter
    assert core.tick(T, fresh(), busy=True).verdict == 'busy'
    tick = core.tick(T, fresh(age=0.2))
    assert tick.verdict == 'ready' and tick.age_s == pytest.approx(0.2)
    assert (tick.ticket.instruction, tick.ticket.observation.frames[0].msg) == \
        ('pick up the cup', 'frame')
    core.set_enabled(False, T)
    assert core.tick(T, fresh(), busy=True).verdict == 'disabled'
    core.max_image_age = None  # offline, camera stamps from another clock: no age checks
    core.set_enabled(True, T)
    assert core.tick(T, fresh(age=100.0)).verdict == 'ready'
    assert core.tick(T, fresh(age=-100.0)).verdict == 'ready'


def two_cameras(wrist_age=0.1, state=None, primary_age=0.1):
    frames = (Frame('primary', T - primary_age, 'front'), Frame('wrist', T - wrist_age, 'wrist'))
    return Observation(frames, ('front', 'wrist'), state, needs_state=state is not None)


def test_every_camera_and_the_state_are_checked():
    core = make_core(max_camera_skew=0.05, max_proprio_age=0.2)
    core.set_instruction('stack the cups')
    assert core.tick(T, two_cameras()).verdict == 'ready'
    tick = core.tick(T, Observation((Frame('p', T - 0.1, 'front'), None), ('front', 'wrist')))
    assert tick.verdict == 'stale' and tick.detail == 'no image received on wrist yet'
    tick = core.tick(T, two_cameras(wrist_age=0.7))
    assert tick.verdict == 'stale' and tick.detail.startswith('wrist: newest image 0.70 s old')
    tick = core.tick(T, two_cameras(wrist_age=0.3))
    assert tick.verdict == 'skewed' and 'stamped 0.200 s apart' in tick.detail \
        and 'wrist lags' in tick.detail
    ok = State(np.zeros(8), T - 0.1)
    assert core.tick(T, two_cameras(state=ok)).verdict == 'ready'
    tick = core.tick(T, two_cameras(state=State(np.zeros(8), T - 0.3)))
    assert tick.verdict == 'stale' and tick.detail.startswith('state 0.30 s old')
    tick = core.tick(T, two_cameras(state=State(problem='joint_states has no joint finger')))
    assert tick.verdict == 'bad_state' and 'finger' in tick.detail
    needs = Observation(two_cameras().frames, ('front', 'wrist'), None, needs_state=True)
    assert core.tick(T, needs).detail == 'no state received yet'


def test_a_camera_ahead_of_the_others_uses_its_frame_stamped_with_theirs():
    held = {'front': Recent(2), 'wrist': Recent(2), 'side': Recent(2)}
    for name in held:  # one trigger at T - 0.2: every camera's frame
        held[name].put(Frame(name + '0', T - 0.2, name))
    held['front'].put(Frame('front1', T - 0.1, 'front'))  # the next trigger, front first
    asked = []

    def pick(names, max_skew=0.05):
        return [f.msg for f in matched_frames([held[n].get() for n in names], max_skew,
                                              lambda f: asked.append(f.msg) or f.stamp_s)]
    assert pick(['front', 'wrist']) == ['front0', 'wrist0']
    assert pick(['front', 'wrist'], max_skew=None) == ['front1', 'wrist0']
    held['wrist'].put(Frame('wrist1', T - 0.1 + 0.02, 'wrist'))  # stamped 20 ms later
    assert pick(['front', 'wrist', 'side']) == ['front0', 'wrist0', 'side0']
    asked.clear()
    assert pick(['front', 'wrist']) == ['front1', 'wrist1']
    assert asked == ['front1', 'wrist1', 'front1', 'wrist1']  # a previous frame only as needed
    # A lag the frames held cannot bridge: the newest frames, and the core calls it skewed.
    held['front'].put(Frame('front2', T, 'front'))
    held['front'].put(Frame('front3', T + 0.1, 'front'))
    frames = matched_frames([held['front'].get(), held['side'].get()], 0.05, lambda f: f.stamp_s)
    assert [f.msg for f in frames] == ['front3', 'side0']
    core = make_core(max_camera_skew=0.05)
    core.set_instruction('stack the cups')
    tick = core.tick(T + 0.1, Observation(frames, ('front', 'side')))
    assert tick.verdict == 'skewed' and 'side lags' in tick.detail
    assert matched_frames([held['front'].get(), ()], 0.05, lambda f: f.stamp_s)[1] is None
    held['front'].clear()
    assert held['front'].get() == ()


def test_one_row_chunks_publish_as_before(core):
    """OpenVLA: each chunk's single row goes out when it arrives, once."""
    core.set_instruction('stack the blocks')
    ticket = core.tick(T, fresh(age=0.19)).ticket  # a late image: the time says row 1
    assert core.commit(ticket, np.ones((1, 7)), T + 0.04)
    assert emitted(core) == [('action', 1.0)]
    assert core.out[0].kind == 'chunk' and core.out[1].source is ticket.observation
    tick = core.tick(T + 0.2, fresh(T + 0.2))
    assert tick.verdict == 'ready' and tick.emitted is None  # no repeat, infer again


def schedule(mode, arrivals, ticks, execute_steps=0, decay=0.01, rows=8, latency=0.6,
             plans=None):
    """
    Drive a core at 20 Hz for ``ticks`` ticks; ``arrivals`` = {tick: chunk first value}.

    The chunk predicted from the observation of that tick (stamped at the tick) commits
    ``latency`` periods later; the other ready ticks' predictions are dropped. Return the
    published actions as (time in periods after the first tick, first value). ``plans``: a
    list that gets (time, the first values of the plan's rows) of each action with a plan.
    """
    core = make_core(period=P, chunk_mode=mode, execute_steps=execute_steps,
                     ensemble_decay=decay)
    core.set_instruction('wipe the table')
    events = [(k, 'tick', None) for k in range(ticks)]
    published = []

    def record(at):
        published.extend((round(at, 3), round(float(e.values[0]), 6)) for e in core.out
                         if e.kind == 'action')
        if plans is not None:
            plans.extend((round(at, 3), [float(v) for v in e.plan[:, 0]]) for e in core.out
                         if e.kind == 'action' and e.plan is not None)
        core.out.clear()

    while events:
        events.sort(key=lambda event: event[0])
        at, kind, payload = events.pop(0)
        now = T + at * P
        if kind == 'tick':
            tick = core.tick(now, fresh(now, age=0.0))
            if at in arrivals:
                assert tick.ticket is not None, (mode, at, tick.verdict)
                events.append((at + latency, 'commit', (tick.ticket, arrivals[at])))
        else:
            ticket, first = payload
            core.commit(ticket, chunk(first, rows), now)
        record(at)
    return published


def test_open_loop_executes_the_chunk_then_infers_again():
    # Row 0 as soon as it arrives (the output was idle), rows 1..7 at ticks 1..7; tick 7
    # publishes the last row and asks again, and the next chunk starts at tick 8.
    assert schedule('open_loop', {0: 100, 7: 200}, 11) == \
        [(0.6, 100), *[(k, 100 + k) for k in range(1, 8)], (8, 200), (9, 201), (10, 202)]
    assert schedule('open_loop', {0: 100, 3: 200}, 6, execute_steps=4) == \
        [(0.6, 100), (1, 101), (2, 102), (3, 103), (4, 200), (5, 201)]


def test_a_late_chunk_is_trimmed_not_replayed():
    # Committed 2.4 periods after its tick: rows 0 and 1 belonged to steps that have passed.
    assert schedule('open_loop', {0: 100}, 5, latency=2.4) == [(2.4, 102), (3, 103), (4, 104)]


def test_open_loop_gives_the_first_action_of_each_chunk_the_rows_it_will_execute():
    """The plan vla/joint_chunk carries: from the row emitted on, up to execute_steps rows."""
    plans = []
    schedule('open_loop', {0: 100, 3: 200}, 6, execute_steps=4, plans=plans)
    assert plans == [(0.6, [100, 101, 102, 103]), (4, [200, 201, 202, 203])]
    plans.clear()  # a late chunk: the rows whose step passed are in neither the plan nor output
    schedule('open_loop', {0: 100}, 5, latency=2.4, plans=plans)
    assert plans == [(2.4, [102 + k for k in range(6)])]
    for mode in ('receding', 'ensemble'):  # their rows may be replaced: no plan
        plans.clear()
        schedule(mode, {0: 100, 3: 200}, 6, plans=plans)
        assert plans == []


def test_receding_switches_to_the_new_chunk_at_its_step():
    # The second chunk was asked at tick 3, which still executed the first: its row 0 is tick 4.
    assert schedule('receding', {0: 100, 3: 200}, 6) == \
        [(0.6, 100), (1, 101), (2, 102), (3, 103), (4, 200), (5, 201)]
    # A model slower than the period: chunk B (asked at tick 2, idle output) lands at 4.4,
    # after ticks 3 and 4 executed chunk A; tick 5 takes B's row 3, not its stale rows 0..2.
    assert schedule('receding', {0: 100, 2: 200}, 7, latency=2.4) == \
        [(2.4, 102), (3, 103), (4, 104), (5, 203), (6, 204)]


def test_ensemble_averages_every_chunk_for_the_step():
    published = schedule('ensemble', {0: 100, 1: 200}, 3, decay=0.0)
    # Tick 2: chunk A's row 2 (102) and chunk B's row 0 (asked at tick 1, row 0 = tick 2).
    assert published == [(0.6, 100), (1, 101), (2, pytest.approx(151.0))]
    weighted = schedule('ensemble', {0: 100, 1: 200}, 3, decay=1.0)
    w = np.exp(-1.0)
    assert weighted[2][1] == pytest.approx((102 + 200 * w) / (1 + w))  # the oldest weighs most


@pytest.mark.parametrize('change', ['instruction', 'reset', 'disable', 'hold', 'long'])
def test_anything_that_changes_the_task_drops_in_flight_and_pending_chunks(change):
    core = make_core(period=P)
    holds = [('hold', None)] if change in ('disable', 'hold') else []

    def apply(now):
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

    core.set_instruction('open the drawer')
    ticket = core.tick(T, fresh(T, 0.0)).ticket  # the model is predicting from this
    apply(T + 0.01)
    assert not core.commit(ticket, chunk(100), T + 0.02)  # computed before: dropped
    assert emitted(core) == holds
    core.out.clear()
    core.set_enabled(True, T + 0.05)
    core.set_instruction('open the drawer')
    assert core.commit(core.tick(T + 0.05, fresh(T + 0.05, 0.0)).ticket, chunk(100), T + 0.06)
    assert core.tick(T + 0.1, None).emitted is not None  # the chunk executes
    apply(T + 0.12)
    assert core.tick(T + 0.15, None).emitted is None  # its remaining rows are gone
    assert emitted(core) == [('action', 100.0), ('action', 101.0)] + holds


def test_chunk_rows_expire_with_their_image(core):
    core = make_core(period=P, max_image_age=0.22)
    core.set_instruction('pour')
    ticket = core.tick(T, fresh(T, 0.0)).ticket
    core.commit(ticket, chunk(100), T + 0.01)
    published = [core.tick(T + k * P, None).emitted for k in range(1, 7)]  # image 0.05k s old
    assert [e is not None for e in published] == [True, True, True, True, False, False]


def test_disable_during_inference_nothing_follows_the_hold(core):
    """The race of a disable while the worker predicts, driven step by step."""
    gate = threading.Event()
    policy = Policy(action(0.5), gate)
    core.set_instruction('pick up the cup')
    ticket = core.tick(T, fresh()).ticket
    committed = []

    def worker():
        prediction = infer(policy, ticket, lambda msg: np.zeros((4, 4, 3), np.uint8), 'k')
        committed.append(core.commit(ticket, prediction.rows, T + 0.2))

    thread = threading.Thread(target=worker)
    thread.start()
    assert policy.entered.wait(5.0)  # the model is working on the ticket
    core.set_enabled(False, T + 0.1)  # the executor thread disables: the hold goes out now
    gate.set()  # the prediction finishes after the hold
    thread.join(5.0)
    assert committed == [False]
    assert emitted(core, ('action', 'hold', 'chunk')) == [('hold', None)]  # the last message
    core.set_enabled(True, T + 0.2)
    assert core.tick(T + 0.2, fresh(T + 0.2)).verdict == 'ready'  # and the loop goes on


def test_concurrent_commits_and_disables_never_emit_after_a_hold(core):
    """Hammer the gate from two threads: after a hold, no action of a ticket issued before it."""
    core.set_instruction('wipe the table')
    stop = threading.Event()
    ticket_generation = [None]  # of the commit in progress (only the worker commits)
    log = []  # (kind, generation): the ticket's for actions, the new one for holds

    def emit(emission):  # called under the core's lock
        if emission.kind == 'chunk':
            return
        generation = ticket_generation[0] if emission.kind == 'action' else core._generation
        log.append((emission.kind, generation))

    core._emit = emit

    def worker():
        while not stop.is_set():
            tick = core.tick(T, fresh())
            if tick.ticket is not None:
                ticket_generation[0] = tick.ticket.generation
                core.commit(tick.ticket, np.ones((1, 7)), T)

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


class ChunkPolicy(base.Policy):
    """An OpenVLA-OFT-like policy: a list of images and a state in."""

    num_images, proprio_dim, chunk_len, action_dim, unnorm_keys = 2, 8, 4, 7, ('k',)

    def __init__(self):
        self.calls = []

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        self.calls.append((images, instruction, proprio, unnorm_key))
        return action_of(chunk(0, 4))


def test_infer_classifies_bad_frames_invalid_and_non_finite_results(core):
    core.set_instruction('pick')
    ticket = core.tick(T, fresh()).ticket

    def refuse(msg):
        raise ConversionError('unknown image encoding')

    bad = infer(Policy(action(1.0)), ticket, refuse, 'k')
    assert bad.status == 'bad_image' and bad.detail == 'camera: unknown image encoding'
    invalid = action_of(np.ones(7), valid=False, token_ids=[2] * 7)
    result = infer(Policy(invalid), ticket, lambda msg: 'rgb', 'k')
    assert result.status == 'invalid' and 'non-action token' in result.detail
    assert infer(Policy(action(np.nan)), ticket, lambda msg: 'rgb', 'k').status == 'invalid'
    half = action_of(chunk(0, 3))
    half.values[1, 4] = np.inf  # one bad row refuses the whole chunk
    result = infer(Policy(half), ticket, lambda msg: 'rgb', 'k')
    assert (result.status, result.rows) == ('invalid', None)
    assert result.detail.endswith('(NaN or inf) in rows [1] of a chunk of 3')
    policy = Policy(action(0.25, rows=2))
    ok = infer(policy, ticket, lambda msg: f'rgb of {msg}', 'key')
    assert ok.status == 'ok' and ok.rows.shape == (2, 7) and ok.latency_s >= 0
    assert policy.calls == [(['rgb of frame'], 'pick', None, 'key')]  # a list of one image
    oft = ChunkPolicy()
    state = State(np.arange(8.0), T)
    both = Observation(two_cameras().frames, ('front', 'wrist'), state, needs_state=True)
    core.tick(T, both)
    ticket = core.tick(T, both).ticket
    assert infer(oft, ticket, lambda msg: msg.upper(), 'k').rows.shape == (4, 7)
    assert oft.calls[0][0] == ['PRIMARY', 'WRIST'] and oft.calls[0][2] is state.values


@pytest.mark.parametrize('mode', ['open_loop', 'receding', 'ensemble'])
def test_a_backward_clock_jump_drops_what_was_timed_on_the_old_time(mode):
    """A looping bag with use_sim_time: the first image on the new time acts at once."""
    core = make_core(period=P, chunk_mode=mode)
    core.set_instruction('wipe the table')
    assert core.commit(core.tick(T, fresh(T, 0.0)).ticket, chunk(100), T + 0.01)
    assert core.tick(T + P, None).emitted is not None  # row 1: the chunk executes
    back = T - 30.0
    # Before an image on the new time arrives, the newest is from before the jump: stale (not
    # future), and none of the old chunk's rows goes out.
    tick = core.tick(back, fresh(T + P, 0.0))
    assert tick.clock_jump_s == pytest.approx(30.0 + P)
    assert (tick.verdict, tick.emitted) == ('stale', None)
    assert 'from before it jumped back' in tick.detail
    core.out.clear()
    tick = core.tick(back + P, fresh(back + P, 0.0))
    assert tick.verdict == 'ready' and tick.clock_jump_s == 0.0
    assert core.commit(tick.ticket, chunk(300), back + P + 0.01)
    assert emitted(core) == [('action', 300.0)]  # at once, as from an idle output
    assert core.tick(back + 2 * P, None).emitted is not None  # and its rows follow on time
    # Ahead of the clock and past the time it jumped from: the future, as ever.
    assert core.tick(back + 3 * P, fresh(T + 1.0, 0.0)).verdict in ('future', 'queued', 'busy')


def test_a_prediction_in_flight_across_a_backward_clock_jump_is_dropped(core):
    core.set_instruction('pick')
    ticket = core.tick(T, fresh()).ticket
    assert not core.commit(ticket, np.ones((1, 7)), T - 5.0)  # the clock went back meanwhile
    ticket = core.tick(T + 0.2, fresh(T + 0.2)).ticket
    assert core.tick(T - 5.0, fresh(T - 5.0), busy=True).clock_jump_s == pytest.approx(5.2)
    assert not core.commit(ticket, np.ones((1, 7)), T + 0.3)  # the clock is past it again
    assert emitted(core) == []
