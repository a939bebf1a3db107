"""
The learned step period (vla_ros.control.step_period) and the twist speed it sets, without ROS.

Arrival sequences are simulated: a 5 Hz plain policy, a 20 Hz chunked one (rows of one chunk
share a stamp), with jitter, pauses, bursts and rate changes.
"""

import numpy as np
import pytest

from vla_ros.control.gripper import StepPairing
from vla_ros.control.safety import make_pose, SafetyLimits, TwistStreamer
from vla_ros.control.step_period import StepPeriod, WINDOW

T0 = 1000.0
STREAM = 0.02      # one stream period at 50 Hz: the shortest step
TIMEOUT = 0.5      # command_timeout: the longest step, and the first guess


def arrivals(rate_hz, count, jitter=0.0, start=T0, seed=0):
    """Return ``count`` arrival times at ``rate_hz``, each late by up to ``jitter`` seconds."""
    rng = np.random.default_rng(seed)
    return [start + k / rate_hz + rng.uniform(0.0, jitter) for k in range(count)]


def learn(times, estimator=None):
    estimator = estimator or StepPeriod(0.0, STREAM)
    for t in times:
        estimator.arrive(t, TIMEOUT)
    return estimator


@pytest.mark.parametrize('rate_hz, jitter', [(5.0, 0.0), (5.0, 0.03), (20.0, 0.0),
                                             (20.0, 0.012), (10.0, 0.02)])
def test_learns_the_period_of_a_policy_with_jitter(rate_hz, jitter):
    step = learn(arrivals(rate_hz, 30, jitter))
    assert step.source == 'learned'
    # Late-by-up-to-j arrivals: intervals in [T - j, T + j], median near T.
    assert step.seconds(TIMEOUT) == pytest.approx(1.0 / rate_hz, abs=jitter / 2 + 1e-9)


def test_first_guess_is_command_timeout_until_an_interval_is_known():
    step = StepPeriod(0.0, STREAM)
    assert (step.source, step.seconds(TIMEOUT)) == ('initial', TIMEOUT)
    step.arrive(T0, TIMEOUT)
    assert (step.source, step.seconds(TIMEOUT)) == ('initial', TIMEOUT)
    step.arrive(T0 + 0.05, TIMEOUT)
    assert (step.source, step.seconds(TIMEOUT)) == ('learned', pytest.approx(0.05))
    # The guess follows command_timeout (it may be tightened at run time).
    assert StepPeriod(0.0, STREAM).seconds(0.3) == 0.3


def test_pauses_are_not_steps():
    step = learn(arrivals(5.0, 8))
    # The policy stops for 3 s (disabled, a new instruction, a restart), then goes on at 5 Hz.
    learn(arrivals(5.0, 3, start=T0 + 1.4 + 3.0), step)
    assert step.seconds(TIMEOUT) == pytest.approx(0.2)
    # A policy slower than 1 / command_timeout has no interval that counts: the first guess stays.
    slow = learn(arrivals(1.0, 10))
    assert (slow.source, slow.seconds(TIMEOUT)) == ('initial', TIMEOUT)


def test_a_rate_change_takes_over_within_half_a_window():
    step = learn(arrivals(5.0, 20))
    start = T0 + 19 * 0.2 + 0.05
    needed = WINDOW // 2 + 1
    learn(arrivals(20.0, needed - 1, start=start), step)   # needed - 1 new intervals
    assert step.seconds(TIMEOUT) == pytest.approx(0.2)
    step.arrive(start + (needed - 1) * 0.05, TIMEOUT)
    assert step.seconds(TIMEOUT) == pytest.approx(0.05)
    # And back: slower again.
    learn(arrivals(5.0, needed + 1, start=start + needed * 0.05 + 0.2), step)
    assert step.seconds(TIMEOUT) == pytest.approx(0.2)


def test_a_few_outliers_do_not_move_the_period():
    times = arrivals(20.0, 40)
    times[20:] = [t + 0.3 for t in times[20:]]    # one late chunk boundary (a slow inference)
    times[30] -= 0.04                              # one early, one late delta
    times[31] += 0.04
    assert learn(times).seconds(TIMEOUT) == pytest.approx(0.05)


def test_bursts_count_as_one_arrival():
    # A 20 Hz stream, then a network hiccup delivers 8 deltas in 4 ms, then 20 Hz again: the
    # period stays 50 ms (counting the burst would drag it to the 20 ms floor: 2.5x too fast).
    times = arrivals(20.0, 12)
    hiccup = times[-1] + 0.4
    times += [hiccup + 0.0005 * k for k in range(8)]
    times += arrivals(20.0, 4, start=hiccup + 0.05)
    step = learn(times)
    assert step.seconds(TIMEOUT) == pytest.approx(0.05)
    # A policy faster than the stream: one step per stream period, the floor.
    for rate_hz in (60.0, 100.0, 500.0):
        assert learn(arrivals(rate_hz, 50)).seconds(TIMEOUT) == pytest.approx(STREAM)


def test_clamped_to_stream_period_and_command_timeout():
    step = learn(arrivals(2.5, 10))          # 0.4 s steps
    assert step.seconds(TIMEOUT) == pytest.approx(0.4)
    assert step.seconds(0.3) == 0.3         # command_timeout tightened below it
    assert step.seconds(0.01) == STREAM     # bounds cross: the longer (slower) one wins
    # Time going backwards (a bag replayed in a loop with use_sim_time) is no interval.
    step.arrive(T0 - 100.0, TIMEOUT)
    step.arrive(T0 - 99.6, TIMEOUT)
    assert step.seconds(TIMEOUT) == pytest.approx(0.4)


def test_a_fixed_period_is_never_learned():
    step = learn(arrivals(20.0, 30), StepPeriod(0.2, STREAM))
    assert (step.source, step.seconds(TIMEOUT), step.seconds(0.1)) == ('fixed', 0.2, 0.2)
    assert step.news(TIMEOUT) is None


def test_news_when_learned_and_when_it_moves_more_than_20_percent():
    step = StepPeriod(0.0, STREAM)
    step.arrive(T0, TIMEOUT)
    assert step.news(TIMEOUT) is None                    # still the first guess
    step.arrive(T0 + 0.2, TIMEOUT)
    assert step.news(TIMEOUT).startswith('step period learned: 0.2 s (5 Hz)')
    assert step.news(TIMEOUT) is None                    # said once
    learn(arrivals(5.0, 20, jitter=0.03, start=T0 + 0.4), step)
    assert step.news(TIMEOUT) is None                    # jitter is no news
    learn(arrivals(20.0, 12, start=T0 + 4.5), step)
    assert step.news(TIMEOUT) == 'step period changed: 0.2 s -> 0.05 s (20 Hz)'


# ------------------------------------------------------------------------------ the twist speed
def streamer(step_duration=0.0, limits=SafetyLimits()):
    core = TwistStreamer(limits, step_duration, STREAM)
    core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], T0))
    return core


def stream_chunks(core, rate_hz, rows, chunks, jitter=0.0, seed=0):
    """
    Play a chunked policy on ``core`` as the node does; return [(offer time, twist x, verdict)].

    Each chunk's ``rows`` deltas share one stamp (the image stamp) and differ in y; a row arrives
    every 1 / ``rate_hz`` s (late by up to ``jitter``) and is offered at the next 50 Hz tick.
    """
    rng = np.random.default_rng(seed)
    period = 1.0 / rate_hz
    out = []
    for n in range(rows * chunks):
        arrival = T0 + n * period + rng.uniform(0.0, jitter)
        tick = T0 + np.ceil((arrival - T0) / STREAM - 1e-9) * STREAM
        core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], tick))
        stamp = T0 + (n // rows) * rows * period - 0.03
        delta = [0.004, 0.0005 * (n % rows), 0, 0, 0, 0]
        verdict = core.offer(delta, stamp, tick, arrival)
        out.append((tick, core.tick(tick).linear[0], verdict))
    return out


@pytest.mark.parametrize('rate_hz, rows', [(5.0, 1), (20.0, 8)])
def test_twist_speed_is_delta_over_the_learned_period(rate_hz, rows):
    core = streamer()
    played = stream_chunks(core, rate_hz, rows, chunks=24 // rows, jitter=0.01)
    # Every row is a step: equal stamps with different values are not duplicates.
    assert all(v.events[0] == 'accepted' for _, _, v in played)
    first = played[0][1]
    assert first == pytest.approx(0.004 / TIMEOUT)       # the first guess: slower, never faster
    assert core.step.source == 'learned'
    speeds = [x for _, x, _ in played[12:]]
    np.testing.assert_allclose(speeds, 0.004 * rate_hz, rtol=0.2)
    # With the old fixed 0.2 s, a 20 Hz policy would move 4x too slowly.
    fixed = [x for _, x, _ in stream_chunks(streamer(0.2), rate_hz, rows, chunks=24 // rows)]
    assert fixed[-1] == pytest.approx(0.004 / 0.2)


def test_clamps_box_and_staleness_hold_for_every_row_of_a_chunk():
    # Speed limits far above these steps: the clips are under test here (test_safety: speeds).
    core = streamer(limits=SafetyLimits(workspace_max=(0.42, 0.4, 0.6), max_linear_speed=5.0,
                                        max_angular_speed=20.0))
    stream_chunks(core, 20.0, 8, chunks=2)                     # learn 20 Hz
    now = T0 + 0.8
    stamp = now - 0.31                                         # the chunk's image: 0.31 s old
    verdicts = []
    rows = [[0, 3.0, 0, 0, 0, 0], [0.05, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0.9]]
    rows += [[0, 0.001 * i, 0, 0, 0, 0] for i in range(5)]
    for i, delta in enumerate(rows):
        t = now + i * 0.05
        core.update_pose(make_pose([0.4, 0.0, 0.3], [0, 0, 0, 1], t))
        verdicts.append(core.offer(np.add(delta, [0, 0.0001 * i, 0, 0, 0, 0]), stamp, t))
        command = core.tick(t)
        if verdicts[-1].delta is not None:
            # One step per 50 ms: the twist, held one period, moves the clamped delta.
            np.testing.assert_allclose(np.r_[command.linear, command.angular] * 0.05,
                                       np.r_[verdicts[-1].delta[:3], 0, 0,
                                             verdicts[-1].delta[5]], atol=1e-9)
    assert 'clamped_translation' in verdicts[0].events
    assert 'clamped_box' in verdicts[1].events and verdicts[1].delta[0] <= 0.02 + 1e-9
    assert 'clamped_rotation' in verdicts[2].events
    # Rows 0-3 are 0.31-0.46 s old: accepted; rows 4-7 are older than command_timeout: dropped.
    assert [v.events[0] for v in verdicts] == ['accepted'] * 4 + ['dropped_stale'] * 4
    # The watchdog: command_timeout after the chunk's stamp, zeros, whatever the period says.
    assert core.tick(stamp + 0.5 + 1e-6).state == 'watchdog'


def test_a_repeated_row_is_dropped_but_the_period_is_unchanged():
    core = streamer()
    stream_chunks(core, 20.0, 8, chunks=2)
    period = core.step_duration
    delta = [0.004, 0.01, 0, 0, 0, 0]
    assert core.offer(delta, T0 + 0.85, T0 + 0.86, T0 + 0.851).events[0] == 'accepted'
    # The same message again 2 ms later: a repeat, which neither moves nor teaches a period.
    assert core.offer(delta, T0 + 0.85, T0 + 0.86, T0 + 0.853).events == ('dropped_duplicate',)
    assert core.step_duration == pytest.approx(period)
    # An equal row one control step later is a step of its own.
    assert core.offer(delta, T0 + 0.85, T0 + 0.9, T0 + 0.901).events[0] == 'accepted'


def test_an_arrival_before_the_last_is_no_interval():
    # The node clock jumped back (use_sim_time, a bag played in a loop): a negative gap is a
    # pause, not a step of negative length that would drag the period to the floor.
    step = StepPeriod(0.0, shortest=STREAM)
    for t in (T0, T0 + 0.2, T0 - 1.0, T0 - 2.0):  # two jumps back in a row
        step.arrive(t, TIMEOUT)
    assert step.seconds(TIMEOUT) == pytest.approx(0.2)  # not one stream period (10x too fast)


# ------------------------------------------------------------------------------ the gripper
def test_gripper_pairs_with_its_row_when_rows_share_a_stamp():
    # 20 Hz rows of one chunk: pairing goes by arrival, so shared stamps do not matter; DDS may
    # deliver the gripper of a row before or after its delta.
    pairing = StepPairing()
    settled = []
    for k in range(16):
        t = T0 + 0.05 * k
        if k % 2:
            settled += pairing.gripper(t, float(k))
            settled += pairing.delta(t + 0.003, accepted=k != 5)
        else:
            settled += pairing.delta(t, accepted=True)
            settled += pairing.gripper(t + 0.003, float(k))
        settled += pairing.expire(t + 0.02)
    assert [v for v, _ in settled] == [float(k) for k in range(16)]
    assert [o for _, o in settled] == ['applied'] * 5 + ['with_rejected_delta'] + \
        ['applied'] * 10
