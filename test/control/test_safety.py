"""
The arm bridge's safety core (vla_ros.control.safety): property tests over hostile delta streams.

The property tests drive ``TwistStreamer`` and ``TargetTracker`` exactly as the node does (pending
deltas offered at a tick, then ``tick``), with a simulated clock and a simulated arm that follows
the published commands, and check every output.
"""

import math

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest

from vla_ros.control.geometry import (matrix_to_quaternion, matrix_to_rpy, quaternion_to_matrix,
                                      rotation_from_vector, rotation_vector, rpy_to_matrix)
from vla_ros.control.gripper import StepPairing
from vla_ros.control.safety import (bound_translation, check_delta, make_pose, SafetyLimits,
                                    speed_share, TargetTracker, TwistStreamer)

LIMITS = SafetyLimits()
LOW = np.array(LIMITS.workspace_min)
HIGH = np.array(LIMITS.workspace_max)
TOL = 1e-9
T0 = 1000.0
NAN, INF = math.nan, math.inf


# ------------------------------------------------------------------------------ strategies
_translation = st.one_of(st.floats(-0.1, 0.1), st.floats(-1e6, 1e6),
                         st.sampled_from([1e6, -1e6, 0.05, -0.05, NAN, INF, -INF, 0.0, 1e300]))
_rotation = st.one_of(st.floats(-0.5, 0.5), st.floats(-3.1, 3.1), st.sampled_from([NAN, INF]))
_delta = st.tuples(_translation, _translation, _translation, _rotation, _rotation, _rotation)
# How a delta's stamp relates to the clock: fresh, stale, future, reordered, a burst at the same
# stamp, right at the timeout edge, NaN.
_stamp = st.one_of(st.tuples(st.just('fresh'), st.floats(0.0, 0.1)),
                   st.tuples(st.just('stale'), st.floats(0.0, 5.0)),
                   st.tuples(st.just('future'), st.floats(0.0, 1.0)),
                   st.tuples(st.just('reordered'), st.floats(0.0, 0.5)),
                   st.tuples(st.just('same'), st.just(0.0)),
                   st.tuples(st.just('edge'), st.floats(-0.03, 0.03)),
                   st.just(('nan', 0.0)))
_op = st.sampled_from(['none', 'none', 'none', 'none', 'disable', 'enable', 'reset'])
# One tick: a burst of 0 to 3 deltas, an operation, then 0 to 30 quiet ticks.
_tick = st.tuples(st.lists(st.tuples(_delta, _stamp), max_size=3), _op, st.integers(0, 30))
# Streams of valid deltas pushing one way at full steps: towards a face of the box, or away from
# an arm that does not follow (pose_target), where the box and the re-seeding matter.
_push = st.sampled_from([1e6, -1e6, 0.05, -0.05, 0.03, 0.0])
_push_tick = st.tuples(
    st.lists(st.tuples(st.tuples(_push, _push, _push, *[st.floats(-0.3, 0.3)] * 3),
                       st.tuples(st.just('fresh'), st.floats(0.0, 0.05))),
             min_size=1, max_size=2),
    st.just('none'), st.integers(0, 15))
_scenario = st.one_of(st.lists(_tick, max_size=15), st.lists(_push_tick, min_size=1, max_size=15))
PROPERTY_SETTINGS = settings(max_examples=120, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
_config = st.fixed_dictionaries({
    'period': st.sampled_from([0.01, 0.02, 0.05]),
    # The step period: fixed, or 0 = learned from the arrivals (here: the ticks of the offers).
    'step': st.sampled_from([0.0, 0.0, 0.05, 0.07, 0.2, 0.7]),
    'timeout': st.sampled_from([0.1, 0.5, 1.0]),
    'pose_every': st.sampled_from([1, 1, 3, 20, 60]),
    # Anywhere in the box, often on or near a face, where the box check matters.
    'start': st.tuples(*[st.one_of(st.floats(lo, hi), st.sampled_from([lo, hi]),
                                   st.floats(lo, lo + 0.03), st.floats(hi - 0.03, hi))
                         for lo, hi in zip(LOW, HIGH)]),
    'start_rpy': st.tuples(*[st.floats(-1.0, 1.0)] * 3),
    # pose_target: the share of the way to the target the arm goes per tick (0: blocked).
    'follow': st.one_of(st.just(0.0), st.floats(0.05, 1.0)),
    # The speed limits: far below, at and far above what the steps ask.
    'speeds': st.sampled_from([(0.05, 0.2), (0.5, 2.5), (5.0, 20.0), (0.5, 0.3), (0.05, 20.0)]),
})


def stamp_of(kind, value, now, limits, last_sent):
    return {'fresh': now - value, 'stale': now - limits.command_timeout - 1e-6 - value,
            'future': now + value, 'reordered': last_sent - value, 'same': last_sent,
            'edge': now - limits.command_timeout + value, 'nan': NAN}[kind]


def rpy_of_vector(vec):
    return np.array(matrix_to_rpy(rotation_from_vector(vec)))


def drive(core, config, scenario, follow_twist):
    """
    Run ``scenario`` through ``core`` tick by tick; yield (now, command, context) per tick.

    The simulated arm integrates the twist (servo) or moves ``follow`` of the way to the target
    (pose target); ``core`` sees its pose every ``pose_every`` ticks.
    """
    period = config['period']
    position = np.array(config['start'], dtype=np.float64)
    rotation = rpy_to_matrix(*config['start_rpy'])
    limits = core.limits
    last_sent = T0
    k = 0
    for inputs, op, quiet in scenario:
        for tick in range(1 + quiet):
            now = T0 + k * period
            if k % config['pose_every'] == 0:
                core.update_pose(make_pose(position, matrix_to_quaternion(rotation), now))
            accepted = []
            if tick == 0:
                if op == 'disable':
                    core.set_enabled(False, now)
                elif op == 'enable':
                    core.set_enabled(True, now)
                elif op == 'reset':
                    core.reset(now)
                for delta, (kind, value) in inputs:
                    stamp = stamp_of(kind, value, now, limits, last_sent)
                    if math.isfinite(stamp):
                        last_sent = stamp
                    measured = core.fresh_pose(now)
                    verdict = core.offer(delta, stamp, now)
                    if verdict.delta is not None:
                        accepted.append((stamp, verdict, measured))
            command = core.tick(now)
            yield now, command, {'op': op if tick == 0 else 'none', 'accepted': accepted,
                                 'position': position.copy(), 'measured': core.pose}
            if follow_twist:
                position = position + command.linear * period
                rotation = rotation_from_vector(command.angular * period) @ rotation
            elif command.pose is not None:
                position = position + config['follow'] * (command.pose.position - position)
                rotation = quaternion_to_matrix(command.pose.quaternion)
            k += 1


def limits_for(config):
    linear, angular = config['speeds']
    return SafetyLimits(command_timeout=config['timeout'], max_linear_speed=linear,
                        max_angular_speed=angular)


@PROPERTY_SETTINGS
@given(config=_config, scenario=_scenario)
def test_servo_twist_outputs_are_bounded_fresh_and_inside_the_box(config, scenario):
    check_servo_run(config, scenario)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_config.flatmap(lambda c: st.sampled_from([0.0, 0.7]).map(
    lambda step: {**c, 'step': step, 'timeout': 0.1})),
       scenario=st.lists(_push_tick, min_size=1, max_size=6))
def test_servo_twist_stream_ends_at_the_command_timeout(config, scenario):
    check_servo_run(config, scenario)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_config.flatmap(lambda c: st.integers(2, 30).map(
    lambda n: {**c, 'pose_every': n, 'period': 0.01})),
       scenario=st.lists(_push_tick, min_size=2, max_size=15))
def test_servo_twist_box_holds_with_a_lagging_pose(config, scenario):
    check_servo_run(config, scenario)


def check_servo_run(config, scenario):
    """Drive a TwistStreamer through ``scenario`` and check every output (the properties)."""
    limits = limits_for(config)
    learned = config['step'] == 0.0
    step = 0.0 if learned else max(config['step'], config['period'])
    core = TwistStreamer(limits, step, config['period'])
    last_accepted = None
    watch_from = None  # the newest accepted stamp, or the last enable after it
    enabled = True
    for now, command, ctx in drive(core, config, scenario, follow_twist=True):
        if ctx['op'] == 'enable' and not enabled and last_accepted is not None:
            watch_from = max(watch_from, now)
        if ctx['op'] in ('disable', 'enable'):
            enabled = ctx['op'] == 'enable'
        for stamp, verdict, _ in ctx['accepted']:
            # Accepted stamps never go backwards (reordered deltas are dropped).
            assert last_accepted is None or stamp >= last_accepted
            last_accepted = watch_from = stamp
            assert enabled
            assert now - stamp <= limits.command_timeout + TOL
            assert stamp - now <= limits.future_tolerance + TOL
        # Where the arm is now: inside the box (it started inside and only ever moves inside).
        assert np.all(ctx['position'] >= LOW - TOL) and np.all(ctx['position'] <= HIGH + TOL)
        moving = np.any(command.linear != 0) or np.any(command.angular != 0)
        if learned:  # the period of the newest step: one stream period up to command_timeout
            step = core.step_duration
            assert config['period'] <= step <= max(config['period'], limits.command_timeout)
        # Every twist, held for one step, stays within the per-step limits.
        assert np.all(np.abs(command.linear) * step <= limits.max_step_translation + TOL)
        assert np.all(np.abs(rpy_of_vector(command.angular * step))
                      <= limits.max_step_rotation + 1e-7)
        # And within the speed limits, however fast the deltas come.
        assert np.linalg.norm(command.linear) <= limits.max_linear_speed + TOL
        assert np.linalg.norm(command.angular) <= limits.max_angular_speed + TOL
        if moving:
            assert command.state == 'moving' and enabled
            # Never from a delta older than command_timeout at publication.
            assert now - command.source_stamp < limits.command_timeout + TOL
        # The watchdog: past the timeout of the newest accepted delta, only zeros; ticks come
        # every stream period, so the zero arrives within one period of the timeout.
        if last_accepted is None or now - last_accepted >= limits.command_timeout:
            assert not moving
            if enabled and watch_from is not None and now - watch_from > limits.command_timeout:
                assert command.state == 'watchdog'
        if not enabled:
            assert not moving and command.state == 'disabled'


def _within_step(new, base, limits):
    dpos = np.abs(new.position - base.position)
    drot = np.abs(matrix_to_rpy(quaternion_to_matrix(new.quaternion)
                                @ quaternion_to_matrix(base.quaternion).T))
    return (np.all(dpos <= limits.max_step_translation + TOL)
            and np.all(drot <= limits.max_step_rotation + 1e-7))


def _same(a, b):
    return (np.allclose(a.position, b.position, atol=1e-12)
            and np.allclose(a.quaternion, b.quaternion, atol=1e-12))


def _within_speed(new, base, seconds, limits):
    """Return True if going from ``base`` to ``new`` in ``seconds`` keeps to the speed limits."""
    angle = np.linalg.norm(rotation_vector(quaternion_to_matrix(new.quaternion)
                                           @ quaternion_to_matrix(base.quaternion).T))
    return (np.linalg.norm(new.position - base.position)
            <= limits.max_linear_speed * seconds + TOL
            and angle <= limits.max_angular_speed * seconds + 1e-7)


@PROPERTY_SETTINGS
@given(config=_config, scenario=_scenario)
def test_pose_target_outputs_are_bounded_fresh_and_inside_the_box(config, scenario):
    limits = limits_for(config)
    core = TargetTracker(limits, config['period'])
    previous = None
    enabled = True
    held = None
    last_accepted = -math.inf
    moved = None  # the tick at which a delta last moved the target
    for now, command, ctx in drive(core, config, scenario, follow_twist=False):
        if ctx['op'] in ('disable', 'enable'):
            enabled = ctx['op'] == 'enable'
        for stamp, _, _ in ctx['accepted']:
            assert enabled and stamp >= last_accepted
            assert now - stamp <= limits.command_timeout + TOL
            last_accepted = stamp
        if command.state == 'waiting':
            assert ctx['measured'] is None and previous is None
            continue
        target = command.pose
        assert np.all(target.position >= LOW - TOL) and np.all(target.position <= HIGH + TOL)
        if not enabled:
            assert command.state == 'disabled'
            if ctx['op'] == 'disable':
                held = target
            elif held is not None:
                assert _same(target, held), 'a disabled bridge holds one pose'
        if previous is not None and not _same(target, previous):
            measured = ctx['measured']
            if ctx['accepted']:
                stamp, _, fresh = ctx['accepted'][-1]
                assert command.state == 'moving'
                assert now - command.source_stamp <= limits.command_timeout + TOL
                assert command.source_stamp == stamp
                # One step from the previous target, or from the measured pose when re-seeded.
                assert (_within_step(target, previous, limits)
                        or _within_step(target, fresh, limits))
                # No faster than the speed limits since the last move (a pause counts up to
                # command_timeout), from the previous target or, re-seeded, the measured pose.
                since = limits.command_timeout if moved is None else \
                    min(now - moved, limits.command_timeout)
                assert (_within_speed(target, previous, since, limits)
                        or _within_speed(target, fresh, since, limits))
                drift = np.linalg.norm(target.position - fresh.position)
                assert drift <= limits.reseed_distance + math.sqrt(3) * \
                    limits.max_step_translation + TOL
            else:
                # No delta this tick: only a hold at the measured pose (disable, reset).
                assert ctx['op'] in ('disable', 'reset') and _same(target, measured)
        if command.state == 'watchdog' and ctx['op'] != 'reset':
            assert previous is not None and _same(target, previous)
        if ctx['accepted']:
            moved = now
        previous = target


# ------------------------------------------------------------------------------ examples
def test_check_delta_clips_per_axis_and_counts():
    verdict = check_delta([0.2, -0.01, -0.3, 0.5, 0.0, -1.0], T0, T0, LIMITS)
    np.testing.assert_allclose(verdict.delta, [0.05, -0.01, -0.05, 0.25, 0.0, -0.25])
    assert verdict.events == ('accepted', 'clamped_translation', 'clamped_rotation')
    verdict = check_delta([0.01, 0, 0, 0, 0, 0.1], T0, T0, LIMITS)
    assert verdict.events == ('accepted',)


@pytest.mark.parametrize('delta, stamp, last, event', [
    ([NAN, 0, 0, 0, 0, 0], T0, -INF, 'rejected_nan'),
    ([0, 0, 0, 0, INF, 0], T0, -INF, 'rejected_nan'),
    ([0, 0, 0, 0, 0, 0], NAN, -INF, 'rejected_nan'),
    ([0.01, 0, 0, 0, 0, 0], T0 - 0.51, -INF, 'dropped_stale'),
    ([0.01, 0, 0, 0, 0, 0], T0 + 0.06, -INF, 'dropped_future'),
    ([0.01, 0, 0, 0, 0, 0], T0 - 0.1, T0 - 0.05, 'dropped_reordered'),
])
def test_check_delta_drops(delta, stamp, last, event):
    verdict = check_delta(delta, stamp, T0, LIMITS, last)
    assert verdict.delta is None and verdict.events == (event,) and verdict.reason


def test_check_delta_accepts_an_equal_stamp_and_small_future():
    assert check_delta([0.01, 0, 0, 0, 0, 0], T0 - 0.1, T0, LIMITS, T0 - 0.1).delta is not None
    assert check_delta([0.01, 0, 0, 0, 0, 0], T0 + 0.04, T0, LIMITS).delta is not None


def test_bound_translation_inside_and_outside_the_box():
    step, cut = bound_translation([0.68, 0.0, 0.3], np.array([0.05, 0.0, -0.01]), LIMITS)
    np.testing.assert_allclose(step, [0.02, 0.0, -0.01])
    assert cut
    # Outside (x above the box): further out is refused, back towards the box is allowed.
    step, cut = bound_translation([0.8, 0.0, 0.3], np.array([0.05, 0.0, 0.0]), LIMITS)
    np.testing.assert_allclose(step, [0.0, 0.0, 0.0])
    step, cut = bound_translation([0.8, 0.0, 0.3], np.array([-0.05, 0.01, 0.0]), LIMITS)
    np.testing.assert_allclose(step, [-0.05, 0.01, 0.0])
    assert not cut


def test_twist_is_delta_over_step_for_one_step_then_zero():
    core = TwistStreamer(LIMITS, 0.2, 0.02)
    core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0))
    verdict = core.offer([0.02, 0, 0, 0, 0, 0.1], T0, T0)
    assert verdict.events == ('accepted',)
    commands = [core.tick(T0 + k * 0.02) for k in range(15)]
    moving = [c for c in commands if c.state == 'moving']
    assert len(moving) == 10
    np.testing.assert_allclose(moving[0].linear, [0.1, 0, 0])
    np.testing.assert_allclose(moving[0].angular, [0, 0, 0.5])
    assert all(c.state == 'idle' and not c.linear.any() for c in commands[10:])
    assert sum(c.linear[0] * 0.02 for c in commands) == pytest.approx(0.02)
    # Past command_timeout since the stamp: the watchdog.
    assert core.tick(T0 + 0.51).state == 'watchdog'


def test_twist_stream_stops_at_the_command_timeout_of_its_stamp():
    core = TwistStreamer(SafetyLimits(command_timeout=0.3), 1.0, 0.02)
    core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0))
    core.offer([0.01, 0, 0, 0, 0, 0], T0 - 0.1, T0)
    assert core.tick(T0 + 0.18).state == 'moving'
    zero = core.tick(T0 + 0.2)  # the first tick at or after stamp + timeout
    assert zero.state == 'watchdog' and not zero.linear.any()


def test_twist_box_uses_the_commanded_motion_since_the_last_pose():
    core = TwistStreamer(LIMITS, 0.2, 0.02)
    core.update_pose(make_pose([0.6, 0.0, 0.3], [0, 0, 0, 1], T0))
    core.offer([0.05, 0, 0, 0, 0, 0], T0, T0)
    # 0.1 s later, no new pose: the arm is predicted at x = 0.625, so only 0.075 m remain.
    verdict = core.offer([0.05, 0, 0, 0, 0, 0], T0 + 0.1, T0 + 0.1)
    assert core.predicted_position(T0 + 0.1)[0] == pytest.approx(0.625)
    assert 'clamped_box' not in verdict.events
    # 0.3 s: both streams done, x = 0.675 predicted: 0.025 m left to the box.
    verdict = core.offer([0.05, 0, 0, 0, 0, 0], T0 + 0.3, T0 + 0.3)
    assert 'clamped_box' in verdict.events
    assert verdict.delta[0] == pytest.approx(0.7 - 0.675)


# ------------------------------------------------------------------------------ equal rows
STREAM = 0.02  # the node's default stream period (50 Hz)
MODES = ['servo_twist', 'pose_target']
HOME = np.array([0.4, 0.0, 0.3])


def make_core(mode, limits=LIMITS):
    core = TwistStreamer(limits, 0.0, STREAM) if mode == 'servo_twist' else \
        TargetTracker(limits, STREAM)
    core.update_pose(make_pose(HOME, [0, 0, 0, 1], T0))
    return core


def play(core, offers, until):
    """
    Tick ``core`` every stream period from T0 to ``until`` as the node does; return the outcome.

    ``offers`` are ``(arrival, delta, stamp)``; each is offered at the first tick at or after its
    arrival, in arrival order. The arm (``ee_pose``) stays at HOME. Returns (the verdicts in
    order, the motion streamed: the sum of twist * STREAM (6,), [(tick, Command)]).
    """
    pending = sorted(offers, key=lambda offer: offer[0])
    verdicts, streamed, commands = [], np.zeros(6), []
    k = 0
    while T0 + k * STREAM <= until + TOL:
        now = T0 + k * STREAM
        core.update_pose(make_pose(HOME, [0, 0, 0, 1], now))
        while pending and pending[0][0] <= now:
            arrival, delta, stamp = pending.pop(0)
            verdicts.append(core.offer(delta, stamp, now, arrival))
        command = core.tick(now)
        if command.linear is not None:
            streamed += np.r_[command.linear, command.angular] * STREAM
        commands.append((now, command))
        k += 1
    return verdicts, streamed, commands


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('rate_hz, rows', [(10.0, 5), (20.0, 8)])
def test_equal_rows_of_a_chunk_are_steps_and_the_same_message_twice_is_one(mode, rate_hz, rows):
    # One chunk of equal rows (one image stamp), one row per control step, then the last row
    # delivered a second time 2 ms later (a DDS repeat, a re-publish).
    core = make_core(mode)
    delta = [0.004, -0.002, 0.0, 0.0, 0.0, 0.02]
    stamp = T0 - 0.03
    arrivals = [T0 + 0.003 + n / rate_hz for n in range(rows)]
    offers = [(t, list(delta), stamp) for t in arrivals] + [(arrivals[-1] + 0.002, delta, stamp)]
    verdicts, streamed, commands = play(core, offers, arrivals[-1] + 0.3)
    assert [v.events for v in verdicts] == [('accepted',)] * rows + [('dropped_duplicate',)]
    if mode == 'servo_twist':
        # Each row streams delta / period for its step; the first step, before a period is
        # known, and a step the next row cuts at a tick (20 Hz rows on 50 Hz ticks) give less.
        assert 0.75 * (rows - 1) * 0.004 <= streamed[0] <= rows * 0.004 + TOL
        np.testing.assert_allclose(streamed[1] / streamed[0], -0.5)
        np.testing.assert_allclose(streamed[5] / streamed[0], 0.02 / 0.004)
    else:
        target = commands[-1][1].pose
        np.testing.assert_allclose(target.position, HOME + rows * np.array(delta[:3]), atol=TOL)
        np.testing.assert_allclose(matrix_to_rpy(quaternion_to_matrix(target.quaternion)),
                                   [0, 0, rows * 0.02], atol=1e-9)
    # The gripper command of each row pairs with its own row's delta (the node does not feed a
    # repeat to the pairing: it is no new step).
    pairing, settled = StepPairing(), []
    for arrival, verdict in zip(arrivals, verdicts):
        settled += pairing.delta(arrival, verdict.delta is not None)
        settled += pairing.gripper(arrival + 0.001, 0.0)
    assert [outcome for _, outcome in settled] == ['applied'] * rows


@pytest.mark.parametrize('mode', MODES)
def test_a_repeat_is_the_same_stamp_and_values_within_half_a_stream_period(mode):
    core = make_core(mode)
    delta = [0.02, 0, 0, 0, 0, 0.1]
    assert core.offer(delta, T0, T0, T0 - 0.015).events[0] == 'accepted'
    # 9.9 ms after it: the same message twice. 11 ms after (half a stream period is 10 ms), or
    # with other values: a new step.
    assert core.offer(list(delta), T0, T0, T0 - 0.0051).events == ('dropped_duplicate',)
    core.tick(T0)
    assert core.offer(list(delta), T0, T0 + STREAM, T0 - 0.004).events[0] == 'accepted'
    core.tick(T0 + STREAM)
    assert core.offer([0.01, 0, 0, 0, 0, 0], T0, T0 + 2 * STREAM).events[0] == 'accepted'
    # After enable, an equal delta with a new stamp is a new step again, however soon.
    core.set_enabled(False, T0 + 0.2)
    core.set_enabled(True, T0 + 0.2)
    assert core.offer(delta, T0 + 0.25, T0 + 0.25).events[0] == 'accepted'


def test_no_motion_without_a_fresh_pose():
    core = TwistStreamer(LIMITS, 0.2, 0.02)
    assert core.offer([0.01, 0, 0, 0, 0, 0], T0, T0).events == ('dropped_no_pose',)
    core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0 - 0.6))
    assert core.offer([0.01, 0, 0, 0, 0, 0], T0, T0).events == ('dropped_no_pose',)


def test_target_reseeds_when_it_drifts_from_the_measured_pose():
    core = TargetTracker(LIMITS, 0.02)
    assert core.tick(T0).state == 'waiting'
    core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0))
    assert core.tick(T0).state == 'idle'  # holds the measured pose
    verdict = core.offer([0.03, 0, 0, 0, 0, 0], T0, T0)
    assert 'reseeds' not in verdict.events
    core.tick(T0)
    core.offer([0.03, 0, 0, 0, 0, 0], T0 + 0.2, T0 + 0.2)
    np.testing.assert_allclose(core.tick(T0 + 0.2).pose.position, [0.46, 0.0, 0.3])
    # The arm did not follow (blocked at 0.4): the target is 0.06 m away, more than 0.05.
    core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0 + 0.4))
    verdict = core.offer([0.03, 0, 0, 0, 0, 0], T0 + 0.4, T0 + 0.4)
    assert 'reseeds' in verdict.events
    np.testing.assert_allclose(core.tick(T0 + 0.4).pose.position, [0.43, 0.0, 0.3])
    assert core.tick(T0 + 1.0).state == 'watchdog'


def test_a_burst_within_one_period_moves_one_step_the_newest_wins():
    core = TargetTracker(LIMITS, 0.02)
    core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0))
    core.tick(T0)
    core.offer([0.03, 0, 0, 0, 0, 0], T0 + 0.01, T0 + 0.02)
    verdict = core.offer([0.0, 0.02, 0, 0, 0, 0], T0 + 0.01, T0 + 0.02)
    assert verdict.events == ('accepted', 'superseded')
    np.testing.assert_allclose(core.tick(T0 + 0.02).pose.position, [0.4, 0.02, 0.3])
    servo = TwistStreamer(LIMITS, 0.2, 0.02)
    servo.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0))
    servo.offer([0.03, 0, 0, 0, 0, 0], T0, T0)
    servo.offer([0.0, 0.02, 0, 0, 0, 0], T0, T0)
    np.testing.assert_allclose(servo.tick(T0).linear, [0.0, 0.1, 0.0])


def test_disable_holds_the_measured_pose_and_enable_refuses_older_deltas():
    core = TargetTracker(LIMITS, 0.02)
    core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0))
    core.offer([0.03, 0, 0, 0, 0, 0], T0, T0)
    core.set_enabled(False, T0 + 0.02)
    command = core.tick(T0 + 0.02)
    assert command.state == 'disabled'
    np.testing.assert_allclose(command.pose.position, [0.4, 0.0, 0.3])
    assert core.offer([0.01, 0, 0, 0, 0, 0], T0 + 0.03, T0 + 0.03).events == \
        ('dropped_disabled',)
    core.set_enabled(True, T0 + 0.05)
    assert core.offer([0.01, 0, 0, 0, 0, 0], T0 + 0.04, T0 + 0.06).events == \
        ('dropped_reordered',)


def test_limits_validate_names_parameter_and_range():
    assert SafetyLimits().validate() == []
    problems = SafetyLimits(max_step_translation=-1.0, command_timeout=0.0,
                            workspace_min=(0.8, 0.0, 0.0)).validate()
    text = '\n'.join(problems)
    assert "'max_step_translation' is -1.0; allowed range (0.0, 0.5] m" in text
    assert "'command_timeout' is 0.0; allowed range (0.0, 60.0] s" in text
    assert "'workspace_min'" in text and "'workspace_max'" in text
    problems = SafetyLimits(workspace_max=(1.0, NAN, 1.0)).validate()
    assert "'workspace_max'" in problems[0] and '3 finite numbers' in problems[0]
    text = '\n'.join(SafetyLimits(max_linear_speed=0.0, max_angular_speed=INF).validate())
    assert "'max_linear_speed' is 0.0; allowed range (0.0, 5.0] m/s" in text
    assert "'max_angular_speed' is inf; allowed range (0.0, 20.0] rad/s" in text


# ------------------------------------------------------------------------------ speed limits
def test_speed_share_scales_translation_and_rotation_together():
    limits = SafetyLimits(max_linear_speed=0.5, max_angular_speed=2.0)
    assert speed_share([0.01, 0, 0], [0, 0, 0.04], 0.02, limits) == 1.0  # right at both limits
    assert speed_share([0.05, 0, 0], [0, 0, 0], 0.02, limits) == pytest.approx(0.2)
    assert speed_share([0.03, 0.04, 0], [0, 0, 0], 0.05, limits) == pytest.approx(0.5)  # norm
    assert speed_share([0.01, 0, 0], [0, 0.2, 0], 0.05, limits) == pytest.approx(0.5)  # angle
    assert speed_share([0.01, 0, 0], [0, 0, 0], 0.0, limits) == 0.0
    assert speed_share([0.0, 0, 0], [0, 0, 0], 0.0, limits) == 1.0


def _norms(commands):
    return np.array([[np.linalg.norm(c.linear), np.linalg.norm(c.angular)] for _, c in commands])


def test_servo_deltas_at_60hz_stream_no_faster_than_the_speed_limits():
    # 0.05 m on each axis and 0.25 rad of roll per delta, 60 deltas a second: the learned period
    # follows the arrivals down to one stream period, 4.3 m/s and 12.5 rad/s without the limit.
    core = make_core('servo_twist')
    delta = [0.05, 0.05, 0.05, 0.25, 0.0, 0.0]
    offers = [(T0 + n / 60, delta, T0 + n / 60 - 0.01) for n in range(30)]
    verdicts, _, commands = play(core, offers, T0 + 0.8)
    assert all(v.events[0] == 'accepted' for v in verdicts) and len(verdicts) == 30
    norms = _norms(commands)
    assert np.all(norms[:, 0] <= LIMITS.max_linear_speed + TOL)
    assert np.all(norms[:, 1] <= LIMITS.max_angular_speed + TOL)
    assert norms[:, 0].max() == pytest.approx(LIMITS.max_linear_speed)  # the linear limit binds
    # One factor for both: the rotation slows with the translation, the twist keeps its screw.
    moving = [c for _, c in commands if c.state == 'moving']
    for command in moving[1:]:
        np.testing.assert_allclose(command.angular[0] / command.linear[0], 0.25 / 0.05)
    # Every slowed delta is counted: all but the first (its period, before one is learned, is
    # command_timeout: 0.17 m/s).
    slowed = [v for v in verdicts if 'clamped_speed' in v.events]
    assert len(slowed) == 29 and 'clamped_speed' not in verdicts[0].events
    assert 'asks 4.33 m/s' in slowed[-1].reason and 'max_linear_speed 0.5 m/s' in slowed[-1].reason


def test_a_slowed_step_lasts_longer_and_moves_its_whole_delta():
    core = TwistStreamer(LIMITS, STREAM, STREAM)  # a fixed period of one stream period
    verdicts, streamed, commands = play(core, [(T0, [0.05, 0, 0, 0, 0, 0], T0)], T0 + 0.3)
    assert verdicts[0].events == ('accepted', 'clamped_speed')
    np.testing.assert_allclose(commands[0][1].linear, [0.5, 0, 0])  # not 2.5 m/s
    np.testing.assert_allclose(streamed, [0.05, 0, 0, 0, 0, 0], atol=1e-9)  # over 0.1 s


def test_pose_target_moves_no_faster_than_the_speed_limits_even_in_bursts():
    # The arm does not follow here: reseed_distance 1 m keeps the target composing on itself.
    limits = SafetyLimits(reseed_distance=1.0)
    core = make_core('pose_target', limits)
    delta = [0.05, 0.05, 0.05, 0.25, 0.0, 0.0]
    offers = [(T0 + n / 60, delta, T0 + n / 60 - 0.01) for n in range(30)]
    # Then, after a 0.1 s pause, a burst: five deltas delivered at once.
    offers += [(T0 + 0.595, delta, T0 + 0.59 - 0.001 * n) for n in range(5, 0, -1)]
    verdicts, _, commands = play(core, offers, T0 + 0.8)
    assert [v.events[0] for v in verdicts] == ['accepted'] * 35
    moved = None  # the tick of the last move
    for (_, before), (now, after) in zip(commands, commands[1:]):
        step = np.linalg.norm(after.pose.position - before.pose.position)
        if step == 0.0:
            continue
        rotation = rotation_vector(quaternion_to_matrix(after.pose.quaternion)
                                   @ quaternion_to_matrix(before.pose.quaternion).T)
        since = limits.command_timeout if moved is None else now - moved
        assert step <= limits.max_linear_speed * since + TOL, (now - T0, step, since)
        assert np.linalg.norm(rotation) <= limits.max_angular_speed * since + 1e-9
        if moved is not None and now < T0 + 0.6:  # at 60 Hz the target moves every tick
            assert step == pytest.approx(limits.max_linear_speed * STREAM)
        moved = now
    # The burst: the newest of the five replaces the others and moves the target once, by what
    # 0.5 m/s allows in the 0.1 s since the last move.
    assert [v.events for v in verdicts[30:]] == [('accepted', 'clamped_speed')] + \
        [('accepted', 'superseded', 'clamped_speed')] * 4
    before, after = commands[29][1].pose, commands[30][1].pose  # the ticks at 0.58 and 0.6 s
    assert np.linalg.norm(after.position - before.position) == pytest.approx(0.05)
    # Every slowed delta counted: all but the first (nothing moved the target for a pause).
    assert sum('clamped_speed' in v.events for v in verdicts) == 34


# ------------------------------------------------------------------------------ clock jumps
JUMP = 30.0  # the node clock goes back this far (use_sim_time, every loop of a looping bag)
STEP = [0.01, 0, 0, 0, 0, 0]


def test_after_a_clock_jump_back_no_twist_from_before_it_and_deltas_wait_for_a_new_pose():
    core = make_core('servo_twist')  # the step period learned from 5 Hz arrivals
    play(core, [(T0 + n * 0.2, STEP, T0 + n * 0.2 - 0.03) for n in range(5)], T0 + 0.84)
    last = T0 + 0.84
    assert core.step_duration == pytest.approx(0.2)
    assert core.tick(last).state == 'moving'  # the step of 0.8 s streams until 1.0 s
    now = last - JUMP + STREAM
    core.clock_jumped(now, last)
    # The stream stops at once (its step ended on the old time: 'moving' for the whole jump),
    # as a fresh start: no watchdog for deltas timed on the old time.
    command = core.tick(now)
    assert command.state == 'idle' and not command.linear.any() and not command.angular.any()
    assert core.tick(now + STREAM).state == 'idle'
    # The pose arrived on the old time: it is not fresh, so a delta on the new time waits for
    # an ee_pose on the new time (the box needs where the arm is now).
    assert core.fresh_pose(now) is None
    assert core.offer(STEP, now - 0.03, now).events == ('dropped_no_pose',)
    now += STREAM
    core.update_pose(make_pose(HOME, [0, 0, 0, 1], now))
    # A delta stamped before the jump (ahead of the clock, up to where it jumped from) is stale,
    # not 'future'; one on the new time is followed (not 'reordered' behind the old stamps),
    # with the learned period kept: 0.01 m / 0.2 s.
    verdict = core.offer(STEP, last - 0.03, now)
    assert verdict.events == ('dropped_stale',) and 'before it jumped back' in verdict.reason
    assert core.offer(STEP, last + 0.5, now).events == ('dropped_future',)  # after it too
    assert core.offer(STEP, now - 0.03, now).events == ('accepted',)
    assert core.step_duration == pytest.approx(0.2)
    command = core.tick(now)
    assert command.state == 'moving' and command.source_stamp == pytest.approx(now - 0.03)
    np.testing.assert_allclose(command.linear, [0.05, 0, 0])
    # The watchdog runs again on the new time.
    assert core.tick(now + 0.6).state == 'watchdog'


def test_after_a_clock_jump_back_the_target_is_held_and_moves_again_on_the_new_time():
    core = make_core('pose_target')
    play(core, [(T0, [0.02, 0, 0, 0, 0, 0], T0 - 0.03)], T0 + 0.1)
    last = T0 + 0.1
    held = core.tick(last)
    assert held.state == 'moving'
    np.testing.assert_allclose(held.pose.position, HOME + [0.02, 0, 0])
    now = last - JUMP + STREAM
    core.clock_jumped(now, last)
    command = core.tick(now)  # the target held, not 'moving' for the whole jump
    assert command.state == 'idle'
    np.testing.assert_allclose(command.pose.position, held.pose.position)
    assert core.offer(STEP, now - 0.03, now).events == ('dropped_no_pose',)
    core.update_pose(make_pose(HOME, [0, 0, 0, 1], now))
    # The full step: the speed limit does not count the time since the target last moved from
    # the old time (a negative time: no motion at all for the whole jump).
    verdict = core.offer([0.02, 0, 0, 0, 0, 0], now - 0.03, now)
    assert verdict.events == ('accepted',)
    command = core.tick(now)
    assert command.state == 'moving'
    np.testing.assert_allclose(command.pose.position, HOME + [0.04, 0, 0], atol=TOL)


@pytest.mark.parametrize('mode', MODES)
def test_a_clock_jump_back_keeps_the_enable_state_and_the_enable_rule(mode):
    core = make_core(mode)
    assert core.offer(STEP, T0, T0).events[0] == 'accepted'
    core.tick(T0)
    core.set_enabled(False, T0 + 0.1)
    now = T0 + 0.1 - JUMP
    core.clock_jumped(now, T0 + 0.1)
    assert core.tick(now).state == 'disabled' and not core.enabled
    core.update_pose(make_pose(HOME, [0, 0, 0, 1], now))
    assert core.offer(STEP, now, now).events == ('dropped_disabled',)
    # Enabled on the new time: deltas stamped before the enable are refused, later ones
    # followed (not refused behind the stamps of the old time).
    core.set_enabled(True, now + 0.02)
    assert core.offer(STEP, now + 0.01, now + 0.03).events == ('dropped_reordered',)
    assert core.offer(STEP, now + 0.03, now + 0.03).events[0] == 'accepted'
    assert core.tick(now + 0.04).state == 'moving'
