"""
arm_bridge as a user runs it: its own process, talking over DDS to the test, which plays the arm.

The test publishes ``ee_pose`` (the arm), ``vla/ee_delta`` and ``vla/gripper`` (the policy) and
watches ``servo_node/delta_twist_cmds``, ``target_pose``, ``gripper/command`` and ``/diagnostics``.
"""

import math
import threading
import time

from conftest import wait_until
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Float64
from std_srvs.srv import SetBool

from vla_ros.control.geometry import quaternion_to_matrix, rpy_to_matrix, rpy_to_quaternion
from vla_ros.nodes import diagnostics
from vla_ros.nodes.arm_bridge import configuration, PARAMS

QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TWIST = 'servo_node/delta_twist_cmds'
PARAM_DEFAULTS = {p.name: p.default for p in PARAMS}
HOME = (0.4, 0.0, 0.3)


def start_bridge(launch, *params):
    args = ['--ros-args']
    for param in params:
        args += ['-p', param]
    return launch('arm_bridge', *args)


def set_time(msg_time, seconds):
    """Set a builtin_interfaces Time to ``seconds``."""
    msg_time.sec = int(math.floor(seconds))
    msg_time.nanosec = int((seconds - math.floor(seconds)) * 1e9)


def seconds_of(msg_time):
    return msg_time.sec + msg_time.nanosec * 1e-9


def pose_msg(ros, position, rpy=(0.0, 0.0, 0.0), frame='base_link', age=0.0, stamp=None):
    msg = PoseStamped()
    if stamp is None:
        stamp = ros_now(ros) - age
    set_time(msg.header.stamp, stamp)
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = map(float, position)
    q = msg.pose.orientation
    q.x, q.y, q.z, q.w = rpy_to_quaternion(*rpy)
    return msg


def ros_now(ros):
    return ros.node.get_clock().now().nanoseconds * 1e-9


class Background:
    """Run ``_run`` on a thread while in a ``with`` block; ``_stop`` ends it."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Arm(Background):
    """The test playing the arm: publishes ee_pose at 50 Hz from a thread until stopped."""

    def __init__(self, ros, position=HOME, rpy=(0.0, 0.0, 0.0)):
        super().__init__()
        self.ros = ros
        self.position, self.rpy = position, rpy
        self.publisher = ros.publisher(PoseStamped, 'ee_pose', QOS)

    def _run(self):
        while not self._stop.wait(0.02):
            self.publisher.publish(pose_msg(self.ros, self.position, self.rpy))


class Policy:
    """The test playing vla_node: deltas and gripper values."""

    def __init__(self, ros):
        self.ros = ros
        self.deltas = ros.publisher(PoseStamped, 'vla/ee_delta', QOS)
        self.gripper = ros.publisher(Float64, 'vla/gripper', QOS)
        ros.wait_for_subscribers(self.deltas)
        ros.wait_for_subscribers(self.gripper)

    def delta(self, xyz, rpy=(0.0, 0.0, 0.0), frame='base_link', age=0.0):
        self.deltas.publish(pose_msg(self.ros, xyz, rpy, frame, age))


def twist_values(msg):
    t = msg.twist
    return np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z])


def moving(inbox):
    return [m for m in inbox.messages if np.any(twist_values(m) != 0)]


def step_done(inbox):
    """Return True once a moving twist has been followed by a zero one."""
    values = [np.any(twist_values(m) != 0) for m in inbox.messages]
    return True in values and False in values[values.index(True):]


def in_state(values, state):
    """Return the diagnostics ``values`` if arm_bridge reports ``state``, else None."""
    return values if values['state'] == state else None


def safety_status(inbox, timeout=5.0):
    """Return the next arm_bridge diagnostics values (strings) published after now."""
    inbox.clear()

    def found():
        for msg in inbox.messages:
            for status in msg.status:
                if status.name.endswith(': safety'):
                    return diagnostics.values_of(status)
        return None
    return wait_until(found, timeout, message='arm_bridge diagnostics')


def handshake(send, diag, key):
    """Call ``send()`` until arm_bridge's diagnostics count ``key`` (the link is up both ways)."""
    def counted():
        send()
        values = safety_status(diag, timeout=2.0)
        return int(values[key]) > 0
    wait_until(counted, 15.0, interval=0.0, message=f'arm_bridge to count {key}')


@pytest.mark.dds
def test_servo_twist_streams_clamps_drops_and_watchdog(ros, launch):
    twists = ros.subscribe(TwistStamped, TWIST, QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    # A fixed step period (the learned one is tested below): each delta lasts 0.2 s.
    bridge = start_bridge(launch, 'output_mode:=servo_twist', 'step_duration:=0.2')
    policy = Policy(ros)
    bridge.wait_for_output('waiting for ee_pose on /ee_pose')
    # No ee_pose yet: zero twist streams and deltas are dropped (the box needs the arm position).
    # Sending until one is counted also makes sure the bridge hears this publisher.
    twists.wait_for(5)
    handshake(lambda: policy.delta((0.02, 0.0, 0.0)), diag, 'dropped_no_pose')
    assert not moving(twists)
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        time.sleep(0.2)
        twists.clear()
        # +x 0.02 m in a 0.2 s step: 0.1 m/s for 0.2 s, then zeros.
        policy.delta((0.02, 0.0, 0.0))
        wait_until(lambda: step_done(twists), 5.0, message='one step streamed, then a zero')
        time.sleep(0.1)
        stream = [twist_values(m) for m in twists.messages]
        nonzero = [v for v in stream if np.any(v != 0)]
        # About 10 ticks of 20 ms (fewer when a busy machine delays the timer); the tick that
        # ends the step is scaled down so the step adds up to the delta. A late timer tick can
        # make that the second-to-last one, so only the ticks before those two must be exact.
        assert 6 <= len(nonzero) <= 11, f'{len(nonzero)} moving twists for one 0.2 s step'
        for values in nonzero[:-2]:
            np.testing.assert_allclose(values, [0.1, 0, 0, 0, 0, 0], atol=1e-9)
        for values in nonzero[-2:]:
            assert 0 < values[0] <= 0.1 + 1e-9 and not np.any(values[1:]), values
        assert not np.any(stream[-1]), 'zeros after the step'
        # A huge delta is clamped to 0.05 m per step: 0.25 m/s.
        twists.clear()
        policy.delta((3.0, 0.0, 0.0), rpy=(0.0, 0.0, 0.1))
        wait_until(lambda: step_done(twists), 5.0, message='the clamped step, then a zero')
        np.testing.assert_allclose(twist_values(moving(twists)[0])[:3], [0.25, 0, 0], atol=1e-9)
        np.testing.assert_allclose(twist_values(moving(twists)[0])[5], 0.5, atol=1e-9)
        # Stale (stamped 2 s ago), wrong frame and NaN: dropped, nothing moves.
        twists.clear()
        policy.delta((0.02, 0.0, 0.0), age=2.0)
        policy.delta((0.02, 0.0, 0.0), frame='camera_link')
        policy.delta((math.nan, 0.0, 0.0))
        time.sleep(0.8)
        assert twists.messages and not moving(twists)
        bridge.wait_for_output("vla/ee_delta is in frame 'camera_link', expected 'base_link'")
        # The watchdog: long after the last delta, zero twists keep coming at the stream rate.
        values = wait_until(lambda: in_state(safety_status(diag), 'watchdog'), 5.0,
                            message='the watchdog state in diagnostics')
        assert float(values['stream_rate_hz']) == pytest.approx(50.0, rel=0.3)
        for key, count in (('accepted', 2), ('clamped_translation', 1), ('dropped_stale', 1),
                           ('rejected_frame', 1), ('rejected_nan', 1)):
            assert int(values[key]) == count, (key, values)
        assert int(values['watchdog_zeros']) > 10
        twists.clear()
        time.sleep(0.3)
        assert len(twists.messages) >= 10 and not moving(twists)
    assert bridge.output().count('waiting for ee_pose') == 1
    assert bridge.alive


class Stream(Background):
    """
    The test playing a policy on a thread: delta ``n`` goes out at ``start + n / rate_hz``.

    ``rows[n]`` is ``(xyz, rpy, age)``; a chunk of ``chunk`` rows shares one stamp, taken when
    its first row goes out, ``age`` seconds back (vla_node stamps every row of a chunk with its
    image's stamp). ``grippers[n]``, if given, goes out on vla/gripper right after delta ``n``,
    as vla_node publishes them. ``sent`` holds the node-clock time each row went out.
    """

    def __init__(self, policy, rate_hz, rows, chunk=1, grippers=None):
        super().__init__()
        self.policy, self.rate_hz, self.rows, self.chunk = policy, rate_hz, rows, chunk
        self.grippers = grippers
        self.sent = []

    def _run(self):
        start = time.monotonic()
        for n, (xyz, rpy, age) in enumerate(self.rows):
            if self._stop.wait(max(0.0, start + n / self.rate_hz - time.monotonic())):
                return
            now = ros_now(self.policy.ros)
            if n % self.chunk == 0:
                stamp = now - age
            self.policy.deltas.publish(pose_msg(self.policy.ros, xyz, rpy, stamp=stamp))
            if self.grippers is not None:
                self.policy.gripper.publish(Float64(data=float(self.grippers[n])))
            self.sent.append(now)

    def wait_sent(self, count):
        wait_until(lambda: len(self.sent) >= count, 2.0 + count / self.rate_hz,
                   message=f'{count} deltas sent')


# The learned step period: the policy's rate is configured once, in the policy. Speeds are checked
# within 20 %: a learned period is the median of 11 arrival intervals, which scheduling jitter
# of a few ms does not move that far, while each way to get it wrong is far outside: the old fixed
# 0.2 s streams a 20 Hz policy 4x too slowly, the first guess (command_timeout) 2.5x (5 Hz) or
# 10x (20 Hz), the one-stream-period floor a 5 Hz policy 10x too fast.
SPEED_TOL = 0.2


@pytest.mark.dds
def test_servo_twist_learns_the_step_period_of_a_5hz_policy(ros, launch):
    twists = ros.subscribe(TwistStamped, TWIST, QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    bridge = start_bridge(launch)  # no step_duration: learned
    policy = Policy(ros)
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        twists.clear()
        with Stream(policy, 5.0, [((0.01, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0)] * 18) as stream:
            stream.wait_sent(12)
            first = moving(twists)[0]
            twists.clear()
            stream.wait_sent(17)
            learned = [twist_values(m) for m in moving(twists)]
        # The first delta, before any interval is known: command_timeout (0.5 s), 2.5x slower
        # than asked, never faster.
        np.testing.assert_allclose(twist_values(first), [0.01 / 0.5, 0, 0, 0, 0, 0], atol=1e-9)
        # Learned: 0.01 m per 0.2 s, 0.05 m/s (the last tick of a step may be scaled down).
        assert len(learned) >= 20
        speed = np.median([v[0] for v in learned])
        assert speed == pytest.approx(0.05, rel=SPEED_TOL), [v[0] for v in learned]
        assert max(v[0] for v in learned) <= 0.05 * (1 + SPEED_TOL)
        values = safety_status(diag)
        assert values['step_period_source'] == 'learned'
        assert float(values['step_period_s']) == pytest.approx(0.2, rel=SPEED_TOL)
    output = bridge.output()
    assert 'step_duration=learned from the deltas' in output
    assert 'step period learned: ' in output
    assert 'not below command_timeout' not in output


@pytest.mark.dds
def test_servo_twist_learns_a_20hz_chunked_policy_and_bounds_every_row(ros, launch):
    twists = ros.subscribe(TwistStamped, TWIST, QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    # The workspace 3 cm ahead of the arm in x; speed limits far above these steps (the clips are
    # under test here; the speed limits below).
    bridge = start_bridge(launch, 'workspace_max:=[0.43,0.4,0.6]', 'max_linear_speed:=5.0',
                          'max_angular_speed:=20.0')
    policy = Policy(ros)
    # Five chunks of 8 rows at 20 Hz, one stamp per chunk, rows differing in y: 0.004 m in x per
    # row, y = x * row / 8. Then one chunk whose image is 0.25 s old: row 0 too far in y (clip),
    # row 1 out of the box in x, row 2 too far in yaw (clip), and rows 4-7 older than
    # command_timeout (0.5 s) by the time they go out.
    rows = [((0.004, 0.0005 * (n % 8), 0.0), (0.0, 0.0, 0.0), 0.0) for n in range(40)]
    rows += [((0.0, 3.0, 0.0), (0.0, 0.0, 0.0), 0.25), ((0.05, 0.0, 0.0), (0.0, 0.0, 0.0), 0.25),
             ((0.0, 0.0, 0.0), (0.0, 0.0, 0.9), 0.25)]
    rows += [((0.0, 0.001 * k, 0.0), (0.0, 0.0, 0.0), 0.25) for k in range(1, 6)]
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        with Stream(policy, 20.0, rows, chunk=8) as stream:
            stream.wait_sent(24)  # three chunks: 23 intervals, the window is full
            twists.clear()
            stream.wait_sent(40)
            learned = [twist_values(m) for m in moving(twists)]
            twists.clear()
            stream.wait_sent(48)
            time.sleep(0.2)
            last_chunk = [twist_values(m) for m in moving(twists)]
            stamp = stream.sent[40] - 0.25
            ages = [t - stamp for t in stream.sent[40:]]
        # 0.004 m per 50 ms: 0.08 m/s; each twist is the one of its row (y / x = row / 8).
        assert len(learned) >= 20
        speed = np.median([v[0] for v in learned])
        assert speed == pytest.approx(0.08, rel=SPEED_TOL), [v[0] for v in learned]
        for v in learned:
            if v[0] > 0:  # (the first row of the last chunk, x = 0, may just be in)
                assert v[1] / v[0] * 8 == pytest.approx(round(v[1] / v[0] * 8), abs=1e-6), v
        # The last chunk, row by row: clipped to 0.05 m in y (1 m/s, not 60), cut by the box
        # to <= 0.03 m in x (0.6 m/s, not 1), clipped to 0.25 rad in yaw (5 rad/s, not 18).
        assert max(v[1] for v in last_chunk) == pytest.approx(1.0, rel=SPEED_TOL)
        assert 0.0 < max(v[0] for v in last_chunk) <= 0.6 * (1 + SPEED_TOL)
        assert max(v[5] for v in last_chunk) == pytest.approx(5.0, rel=SPEED_TOL)
        # Staleness per row: rows that went out older than command_timeout were dropped, rows
        # that went out younger than 0.45 s (50 ms to reach the bridge's tick) were accepted.
        values = wait_until(lambda: in_state(safety_status(diag), 'watchdog'), 5.0,
                            message='the watchdog after the last chunk')
        stale = int(values['dropped_stale'])
        assert sum(a > 0.5 for a in ages) <= stale <= sum(a >= 0.45 for a in ages), (stale, ages)
        assert int(values['accepted']) == 48 - stale, values
        for key, count in (('clamped_translation', 1), ('clamped_box', 1),
                           ('clamped_rotation', 1), ('dropped_duplicate', 0)):
            assert int(values[key]) == count, (key, values)
        assert values['step_period_source'] == 'learned'
        assert float(values['step_period_s']) == pytest.approx(0.05, rel=SPEED_TOL)
        twists.clear()
        time.sleep(0.1)
        assert twists.messages and not moving(twists)
    assert 'step period learned: ' in bridge.output()


MODES = ('servo_twist', 'pose_target')


def watch_output(ros, mode):
    """Subscribe to what arm_bridge commands in ``mode``: twists or targets."""
    if mode == 'servo_twist':
        return ros.subscribe(TwistStamped, TWIST, QOS)
    return ros.subscribe(PoseStamped, 'target_pose', QOS)


def counted(diag, key, count, timeout=5.0):
    """Wait until arm_bridge's diagnostics count ``count`` of ``key``; return the values."""
    return wait_until(lambda: (lambda v: v if int(v[key]) >= count else None)(
        safety_status(diag)), timeout, interval=0.0, message=f'{count} {key}')


@pytest.mark.dds
@pytest.mark.parametrize('mode', MODES)
def test_equal_rows_of_a_chunk_each_move_one_step_at_20_and_10_hz(ros, launch, mode):
    # A chunk of equal rows (one image stamp, a policy holding a direction) published one per
    # control step, each with its gripper command (alternating, so each one shows): every row is
    # a step, every gripper command applied. The old rule dropped 7 of 8 rows at 20 Hz.
    out = watch_output(ros, mode)
    commands = ros.subscribe(Float64, 'gripper/command', QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    # pose_target: the test's arm does not follow, so the target composes on itself throughout.
    bridge = start_bridge(launch, f'output_mode:={mode}', 'gripper_consecutive:=1',
                          'reseed_distance:=1.0')
    policy = Policy(ros)
    d = np.array([0.004, -0.002, 0.0])
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        targets_now = _position(out.wait_for(1)[-1]) if mode == 'pose_target' else None
        done = 0
        for rate_hz, rows in ((20.0, 8), (10.0, 5)):  # 10 Hz: 5 rows stay within command_timeout
            out.clear()
            grippers = [float(n % 2) for n in range(rows)]
            with Stream(policy, rate_hz, [(tuple(d), (0.0, 0.0, 0.0), 0.0)] * rows, chunk=rows,
                        grippers=grippers) as stream:
                stream.wait_sent(rows)
            done += rows
            values = counted(diag, 'accepted', done)
            assert int(values['accepted']) == done and int(values['dropped_duplicate']) == 0, \
                values
            assert int(values['gripper_applied']) == done, values
            assert int(values['superseded']) == 0, 'a busy bridge merged rows: rerun'
            if mode == 'servo_twist':
                wait_until(lambda: step_done(out), 5.0, message='the steps streamed')
                streamed = sum(twist_values(m)[:3] for m in moving(out)) * 0.02  # metres
                # Each row streams delta / period for its step. The first step of the bridge
                # (no period learned yet), a step the next row cuts at a tick, and timer jitter
                # on a busy machine (ticks summed as 20 ms each) move the sum, but it stays far
                # above the one step of one row.
                assert 0.5 * (rows - 1) * d[0] <= streamed[0] <= 1.2 * rows * d[0], streamed
                np.testing.assert_allclose(streamed[1] / streamed[0], -0.5, rtol=1e-6)
            else:
                expected = targets_now + rows * d
                wait_until(lambda: np.allclose(_position(out.messages[-1]), expected, atol=1e-9),
                           2.0, message=f'the target {rows} steps on')
                targets_now = expected
            time.sleep(0.6)  # past command_timeout: the next chunk starts after a pause
        assert [m.data for m in commands.messages] == [float(n % 2) for n in range(8)] + \
            [float(n % 2) for n in range(5)]
        # The same message twice within a few ms (a re-publish) is one step, and the gripper
        # command after both copies pairs with it.
        out.clear()
        repeat = pose_msg(ros, tuple(d))
        policy.deltas.publish(repeat)
        policy.deltas.publish(repeat)
        time.sleep(0.003)  # the gripper after both copies (two topics: no order otherwise)
        policy.gripper.publish(Float64(data=0.0))
        values = counted(diag, 'dropped_duplicate', 1)
        assert int(values['accepted']) == done + 1 and int(values['dropped_duplicate']) == 1
        values = counted(diag, 'gripper_applied', done + 1)
        assert int(values['gripper_with_rejected_delta']) == 0, values
        if mode == 'servo_twist':
            wait_until(lambda: step_done(out), 5.0, message='the step streamed')
            streamed = sum(twist_values(m)[0] for m in moving(out)) * 0.02
            assert streamed == pytest.approx(d[0], abs=0.2 * d[0]), streamed
        else:
            time.sleep(0.2)
            np.testing.assert_allclose(_position(out.messages[-1]), targets_now + d, atol=1e-9)
    assert bridge.alive


# Deltas far too fast for their size: 0.05 m on each axis and 0.25 rad of roll, at 60 Hz (a
# wrong control_rate_hz, two publishers, a replay), 4.3 m/s without a speed limit.
FAST = [((0.05, 0.05, 0.05), (0.25, 0.0, 0.0), 0.0)] * 30
MAX_LINEAR, MAX_ANGULAR = PARAM_DEFAULTS['max_linear_speed'], PARAM_DEFAULTS['max_angular_speed']


@pytest.mark.dds
def test_servo_deltas_at_60hz_never_stream_faster_than_the_speed_limit(ros, launch):
    twists = ros.subscribe(TwistStamped, TWIST, QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    bridge = start_bridge(launch, 'output_mode:=servo_twist')
    policy = Policy(ros)
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        twists.clear()
        with Stream(policy, 60.0, FAST) as stream:
            stream.wait_sent(len(FAST))
        values = wait_until(lambda: in_state(safety_status(diag), 'watchdog'), 5.0,
                            message='the watchdog after the stream')
    norms = np.array([[np.linalg.norm(v[:3]), np.linalg.norm(v[3:])]
                      for v in map(twist_values, twists.messages)])
    assert np.all(norms[:, 0] <= MAX_LINEAR + 1e-9), norms[:, 0].max()
    assert np.all(norms[:, 1] <= MAX_ANGULAR + 1e-9), norms[:, 1].max()
    assert norms[:, 0].max() == pytest.approx(MAX_LINEAR), 'the limit binds'
    # Every slowed delta counted: all but the first (before a period is learned, a step lasts
    # command_timeout: 0.17 m/s).
    assert int(values['accepted']) == len(FAST), values
    assert int(values['clamped_speed']) == len(FAST) - 1, values
    assert bridge.output().count('step slowed to the speed limit') == 1  # throttled


@pytest.mark.dds
def test_pose_target_at_60hz_never_moves_faster_than_the_speed_limit(ros, launch):
    targets = ros.subscribe(PoseStamped, 'target_pose', QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    # The test's arm does not follow: the target composes on itself, inside the box throughout.
    bridge = start_bridge(launch, 'output_mode:=pose_target', 'reseed_distance:=1.0')
    policy = Policy(ros)
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        targets.wait_for(1)
        targets.clear()
        with Stream(policy, 60.0, FAST) as stream:
            stream.wait_sent(len(FAST))
        values = wait_until(lambda: in_state(safety_status(diag), 'watchdog'), 5.0,
                            message='the watchdog after the stream')
    track = [(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, _position(m))
             for m in targets.messages]
    moves = [(t, np.linalg.norm(p - q)) for (_, q), (t, p) in zip(track, track[1:])
             if np.any(p != q)]
    times = [t for t, _ in moves]
    # The first move may use the pause before it; from then on, each move is at most the limit
    # times the time since the previous one (each target is stamped with its tick's clock), and
    # over the whole stream the target goes at the limit, not faster.
    for (before, _), (t, step) in zip(moves, moves[1:]):
        assert step <= MAX_LINEAR * (t - before) + 1e-6, (t - before, step)
    speed = sum(step for _, step in moves[1:]) / (times[-1] - times[0])
    assert 0.8 * MAX_LINEAR <= speed <= 1.05 * MAX_LINEAR, speed
    assert int(values['accepted']) == len(FAST), values
    # A 0.087 m delta is within the limit after 0.17 s: the first one (the target had not moved
    # for command_timeout) and any that the bridge handles that long after the one before (a
    # loaded machine stalls a 60 Hz stream now and then) go whole; the rest are slowed.
    assert len(FAST) - 3 <= int(values['clamped_speed']) <= len(FAST) - 1, values
    assert bridge.output().count('step slowed to the speed limit') == 1


@pytest.mark.dds
@pytest.mark.parametrize('mode', MODES)
def test_a_chunk_of_nan_rows_and_rows_stamped_in_the_future_move_nothing(ros, launch, mode):
    out = watch_output(ros, mode)
    commands = ros.subscribe(Float64, 'gripper/command', QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    bridge = start_bridge(launch, f'output_mode:={mode}', 'gripper_consecutive:=1')
    policy = Policy(ros)
    nan, inf = math.nan, math.inf
    # A chunk of 8 rows with NaN / inf (position) or NaN (rotation: its quaternion), then 5 rows
    # stamped 1 s ahead of the clock (future_tolerance 0.05 s), each with a gripper command: all
    # dropped and counted.
    bad = [((nan, 0.0, 0.0), (0.0, 0.0, 0.0)), ((0.0, inf, 0.0), (0.0, 0.0, 0.0)),
           ((0.0, 0.0, -inf), (0.0, 0.0, 0.0)), ((0.01, 0.0, 0.0), (nan, 0.0, 0.0)),
           ((0.01, 0.0, 0.0), (0.0, 0.0, nan)), ((nan,) * 3, (nan,) * 3),
           ((0.0, 0.0, 0.0), (0.0, nan, 0.0)), ((inf, -inf, inf), (0.0, 0.0, 0.0))]
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        out.clear()
        with Stream(policy, 20.0, [(xyz, rpy, 0.0) for xyz, rpy in bad], chunk=8,
                    grippers=[0.0] * 8) as stream:
            stream.wait_sent(8)
        with Stream(policy, 20.0, [((0.01, 0.0, 0.0), (0.0, 0.0, 0.0), -1.0)] * 5,
                    grippers=[0.0] * 5) as stream:
            stream.wait_sent(5)
        values = counted(diag, 'gripper_with_rejected_delta', 13)
        for key, count in (('rejected_nan', 8), ('dropped_future', 5), ('accepted', 0),
                           ('gripper_with_rejected_delta', 13), ('gripper_applied', 0)):
            assert int(values[key]) == count, (key, values)
        assert 'in the future' in bridge.output() and 'non-finite delta' in bridge.output()
        assert out.messages and commands.messages == []
        if mode == 'servo_twist':
            assert not moving(out)
        else:
            assert all(np.allclose(_position(m), HOME) for m in out.messages)
        # The bridge keeps running: a good delta moves.
        policy.delta((0.01, 0.0, 0.0))
        counted(diag, 'accepted', 1)
    assert bridge.alive


@pytest.mark.dds
def test_enable_false_stops_at_once(ros, launch):
    twists = ros.subscribe(TwistStamped, TWIST, QOS)
    start_bridge(launch, 'output_mode:=servo_twist', 'step_duration:=0.5',
                 'command_timeout:=0.6')
    policy = Policy(ros)
    stop = threading.Event()

    def keep_sending():  # a policy at 5 Hz that never stops
        while not stop.wait(0.2):
            policy.delta((0.01, 0.0, 0.0))
    sender = threading.Thread(target=keep_sending, daemon=True)
    with Arm(ros):
        sender.start()
        try:
            wait_until(lambda: moving(twists), 10.0, message='a moving twist')
            time.sleep(0.3)  # steps of 0.5 s every 0.2 s: the arm is moving without pause
            before = len(twists.messages)
            assert np.any(twist_values(twists.messages[-1]))
            response = ros.call(SetBool, '/arm_bridge/enable', SetBool.Request(data=False))
            assert response.success
            # The zero twist was published before the response: it is (nearly) here already,
            # and from it on there are only zeros.
            first_zero = wait_until(
                lambda: next((i for i, m in enumerate(twists.messages[before:], before)
                              if not np.any(twist_values(m))), None), 0.25,
                message='a zero twist at once')
            time.sleep(1.0)  # deltas keep coming
            after = twists.messages[first_zero:]
            assert len(after) >= 30 and not any(np.any(twist_values(m)) for m in after)
            twists.clear()
            response = ros.call(SetBool, '/arm_bridge/enable', SetBool.Request(data=True))
            assert response.success
            wait_until(lambda: moving(twists), 2.0, message='motion again after enable')
        finally:
            stop.set()
            sender.join()


class SimClockArm(Background):
    """
    The test playing ``ros2 bag play --clock`` and the arm: /clock at 100 Hz, ee_pose at 50 Hz.

    Simulated time is monotonic + an offset; ``jump(seconds)`` moves it back, as every loop of
    ``ros2 bag play --loop --clock`` does. ``pose_on`` cleared: no ee_pose (the clock goes on).
    """

    def __init__(self, ros, start=1000.0):
        super().__init__()
        self.ros = ros
        self.clock = ros.publisher(Clock, '/clock', QOS)
        self.poses = ros.publisher(PoseStamped, 'ee_pose', QOS)
        self._offset = start - time.monotonic()
        self._lock = threading.Lock()
        self.pose_on = threading.Event()
        self.pose_on.set()

    def now(self):
        with self._lock:
            return time.monotonic() + self._offset

    def jump(self, seconds):
        with self._lock:
            self._offset -= seconds

    def _run(self):
        step = 0
        while not self._stop.wait(0.01):
            now, msg = self.now(), Clock()
            set_time(msg.clock, now)
            self.clock.publish(msg)
            if step % 2 == 0 and self.pose_on.is_set():
                self.poses.publish(pose_msg(self.ros, HOME, stamp=now))
            step += 1


@pytest.mark.dds
def test_a_backward_clock_jump_stops_the_stream_at_once_counted_and_logged(ros, launch):
    """use_sim_time with a clock that jumps back 30 s in the middle of a step (a looping bag)."""
    twists = ros.subscribe(TwistStamped, TWIST, QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    # Steps of 2 s (0.01 m/s for a 0.02 m delta): the step still streams when the clock jumps.
    bridge = start_bridge(launch, 'use_sim_time:=true', 'step_duration:=2.0',
                          'command_timeout:=3.0')
    policy = Policy(ros)
    with SimClockArm(ros) as sim:
        bridge.wait_for_output('ee_pose received')
        policy.deltas.publish(pose_msg(ros, (0.02, 0.0, 0.0), stamp=sim.now() - 0.03))
        wait_until(lambda: moving(twists), 5.0, message='the step streaming')
        time.sleep(0.2)
        sim.pose_on.clear()  # the last ee_pose arrived on the old time
        before = sim.now()
        sim.jump(30.0)
        jumped = time.monotonic()

        def on_new_time():  # [(receive time, twist)] stamped on the jumped-back clock
            return [(t, m) for t, m in twists.stamped if seconds_of(m.header.stamp) < before - 20]
        wait_until(lambda: len(on_new_time()) >= 10, 3.0, message='twists on the new time')
        # Zero from the first tick on the new time (within a few stream periods of wall time),
        # not the old step streamed on for as long as the jump.
        assert on_new_time()[0][0] - jumped < 0.25, on_new_time()[0][0] - jumped
        assert not any(np.any(twist_values(m)) for _, m in on_new_time())
        # A delta on the new time waits for an ee_pose on the new time, then it is followed.
        policy.deltas.publish(pose_msg(ros, (0.02, 0.0, 0.0), stamp=sim.now() - 0.03))
        counted(diag, 'dropped_no_pose', 1)
        assert not any(np.any(twist_values(m)) for _, m in on_new_time())
        sim.pose_on.set()
        bridge.wait_for_output('is fresh again')
        policy.deltas.publish(pose_msg(ros, (0.02, 0.0, 0.0), stamp=sim.now() - 0.03))
        wait_until(lambda: any(np.any(twist_values(m)) for _, m in on_new_time()), 2.0,
                   message='a step on the new time')
        values = counted(diag, 'accepted', 2)
    for key, count in (('clock_jumps', 1), ('accepted', 2), ('dropped_no_pose', 1),
                       ('dropped_reordered', 0), ('dropped_future', 0)):
        assert int(values[key]) == count, (key, values)
    output = bridge.output()
    assert output.count('the clock jumped back') == 1, output
    assert 'is stale' not in output and 'watchdog' not in output, 'one line for the jump'
    assert bridge.alive


@pytest.mark.dds
def test_pose_target_waits_for_ee_pose_then_composes_inside_the_box(ros, launch):
    targets = ros.subscribe(PoseStamped, 'target_pose', QOS)
    commands = ros.subscribe(Float64, 'gripper/command', QOS)
    bridge = start_bridge(launch, 'output_mode:=pose_target', 'workspace_max:=[0.44,0.4,0.6]',
                          'gripper_convention:=signed', 'gripper_consecutive:=2',
                          'gripper_open_position:=0.08', 'gripper_closed_position:=0.0')
    policy = Policy(ros)
    bridge.wait_for_output('waiting for ee_pose on /ee_pose')
    policy.delta((0.02, 0.0, 0.0))
    time.sleep(0.5)
    assert not targets.messages, 'nothing is published before ee_pose'
    # An ee_pose in another frame is refused by the shared reader: still nothing to hold.
    elsewhere = ros.publisher(PoseStamped, 'ee_pose', QOS)
    ros.wait_for_subscribers(elsewhere)
    for _ in range(5):
        elsewhere.publish(pose_msg(ros, HOME, frame='world'))
        time.sleep(0.05)
    bridge.wait_for_output("ee_pose refused: /ee_pose is in frame 'world', expected 'base_link' "
                           "(parameter 'base_frame'")
    assert not targets.messages, 'nothing is published from an ee_pose in another frame'
    ee_rpy = (0.0, 0.3, 0.0)
    with Arm(ros, HOME, ee_rpy):
        bridge.wait_for_output('ee_pose received')
        # First: a hold at the measured pose.
        first = targets.wait_for(3)[-1].pose
        assert (first.position.x, first.position.y, first.position.z) == pytest.approx(HOME)
        delta_xyz, delta_rpy = (0.02, -0.01, 0.03), (0.1, 0.0, 0.2)
        policy.delta(delta_xyz, delta_rpy)
        expected = np.add(HOME, delta_xyz)
        wait_until(lambda: np.allclose(_position(targets.messages[-1]), expected, atol=1e-9),
                   2.0, message='target = ee_pose + delta')
        target = targets.messages[-1]
        assert target.header.frame_id == 'base_link'
        q = target.pose.orientation
        rot = rpy_to_matrix(*delta_rpy) @ rpy_to_matrix(*ee_rpy)  # base axes, left-multiplied
        np.testing.assert_allclose(quaternion_to_matrix((q.x, q.y, q.z, q.w)), rot, atol=1e-9)
        # The next step starts from the target (0.42 in x) and stops at the box (x <= 0.44).
        time.sleep(0.2)  # a control period later: 0.02 m in 0.2 s is within max_linear_speed
        policy.delta((0.05, 0.0, 0.0))
        wait_until(lambda: _position(targets.messages[-1])[0] == pytest.approx(0.44), 2.0,
                   message='a target clipped to the box')
        assert all(_position(m)[0] <= 0.44 + 1e-12 for m in targets.messages)
        # Gripper, signed (-1 = open): two agreeing values flip it.
        # Each with a zero delta of its step: a gripper command alone moves nothing.
        for value in (-1.0, -1.0, 1.0, -1.0, 1.0, 1.0):
            policy.delta((0.0, 0.0, 0.0))
            policy.gripper.publish(Float64(data=value))
            time.sleep(0.05)
        commands.wait_for(5)
        assert [m.data for m in commands.messages] == [0.08, 0.08, 0.08, 0.08, 0.0]
        # Disable: the measured pose is held at once.
        ros.call(SetBool, '/arm_bridge/enable', SetBool.Request(data=False))
        wait_until(lambda: np.allclose(_position(targets.messages[-1]), HOME), 0.5,
                   message='a hold at the measured pose')
    assert bridge.output().count('waiting for ee_pose') == 1
    assert bridge.output().count('ee_pose received') == 1


@pytest.mark.dds
def test_gripper_moves_only_with_a_fresh_accepted_delta_of_its_step(ros, launch):
    commands = ros.subscribe(Float64, 'gripper/command', QOS)
    twists = ros.subscribe(TwistStamped, TWIST, QOS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', QOS)
    bridge = start_bridge(launch, 'output_mode:=servo_twist', 'gripper_consecutive:=1')
    policy = Policy(ros)
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        # A gripper command alone: ignored, however many (the hostile run closed the gripper).
        handshake(lambda: policy.gripper.publish(Float64(data=0.0)), diag,
                  'gripper_without_delta')
        # With a delta stamped 5 s ago: the delta is dropped as stale, and its gripper with it.
        for _ in range(3):
            policy.delta((0.01, 0.0, 0.0), age=5.0)
            policy.gripper.publish(Float64(data=0.0))
            time.sleep(0.05)
        wait_until(lambda: int(safety_status(diag)['gripper_with_rejected_delta']) >= 3, 5.0,
                   message='three commands ignored with their stale deltas')
        assert commands.messages == [], 'a bare or stale gripper command moved the gripper'
        assert not moving(twists)
        # With a fresh delta of the same step: the gripper closes.
        policy.delta((0.01, 0.0, 0.0))
        policy.gripper.publish(Float64(data=0.0))
        assert [m.data for m in commands.wait_for(1, timeout=5.0)] == [0.0]
        values = safety_status(diag)
        assert int(values['gripper_applied']) == 1 and values['gripper_state'] == 'closed'
        # The same delta delivered twice within a few ms (a re-publish) is one step, not two;
        # the gripper command of its step, after both copies, pairs with it.
        duplicate = pose_msg(ros, (0.02, 0.0, 0.0))
        twists.clear()
        policy.deltas.publish(duplicate)
        policy.deltas.publish(duplicate)
        time.sleep(0.003)  # the gripper after both copies (two topics: no order otherwise)
        policy.gripper.publish(Float64(data=1.0))
        values = wait_until(lambda: in_state(safety_status(diag), 'watchdog'), 5.0,
                            message='the watchdog after the step')
        assert int(values['dropped_duplicate']) == 1 and int(values['accepted']) == 2, values
        assert int(values['gripper_applied']) == 2 and values['gripper_state'] == 'open', values
        assert int(values['gripper_with_rejected_delta']) == 3, values
        step = sum(twist_values(m)[0] for m in moving(twists)) * 0.02  # metres streamed
        assert step == pytest.approx(0.02, abs=0.004), f'{step} m streamed for one 0.02 m step'
    assert bridge.alive


def set_param(ros, node, name, value):
    from rcl_interfaces.msg import Parameter, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter as RclpyParameter
    value_msg = RclpyParameter(name, value=value).get_parameter_value()
    request = SetParameters.Request(parameters=[Parameter(name=name, value=value_msg)])
    assert isinstance(value_msg, ParameterValue)
    return ros.call(SetParameters, f'/{node}/set_parameters', request).results[0]


def get_param(ros, node, name):
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python
    response = ros.call(GetParameters, f'/{node}/get_parameters',
                        GetParameters.Request(names=[name]))
    return parameter_value_to_python(response.values[0])


@pytest.mark.dds
def test_run_time_changes_tighten_limits_or_are_refused(ros, launch):
    twists = ros.subscribe(TwistStamped, TWIST, QOS)
    bridge = start_bridge(launch, 'output_mode:=servo_twist', 'step_duration:=0.2')
    policy = Policy(ros)
    with Arm(ros):
        bridge.wait_for_output('ee_pose received')
        result = set_param(ros, 'arm_bridge', 'max_step_translation', 0.01)
        assert result.successful, result.reason
        bridge.wait_for_output('safety limits tightened')
        twists.clear()
        policy.delta((3.0, 0.0, 0.0))  # clamped to the new 0.01 m per 0.2 s step: 0.05 m/s
        wait_until(lambda: step_done(twists), 5.0, message='the clamped step')
        np.testing.assert_allclose(twist_values(moving(twists)[0])[:3], [0.05, 0, 0], atol=1e-9)
        # The speed limits tighten too: the same 0.01 m step at 0.03 m/s, over 0.33 s.
        assert set_param(ros, 'arm_bridge', 'max_linear_speed', 0.03).successful
        assert set_param(ros, 'arm_bridge', 'max_angular_speed', 1.0).successful
        twists.clear()
        policy.delta((3.0, 0.0, 0.0))
        wait_until(lambda: step_done(twists), 5.0, message='the slowed step')
        np.testing.assert_allclose(twist_values(moving(twists)[0])[:3], [0.03, 0, 0], atol=1e-9)
        refused = [
            ('max_step_translation', 0.1, 'would loosen the limit in force (0.01)'),
            ('max_linear_speed', 0.5, "'max_linear_speed' 0.5 would loosen the limit in force "
                                      '(0.03)'),
            ('max_angular_speed', 2.5, 'would loosen the limit in force (1.0)'),
            ('max_linear_speed', 0.0, "'max_linear_speed' is 0.0; allowed range (0.0, 5.0] m/s"),
            ('workspace_max', [0.8, 0.4, 0.6], 'would loosen the limit in force'),
            ('output_mode', 'pose_target', "'output_mode' cannot change while the node runs"),
            ('command_timeout', 'abc', "'command_timeout' is 'abc' (a string); it must be a "
                                       'number'),
            ('command_timeout', -1.0, "'command_timeout' is -1.0; allowed range (0.0, 60.0]"),
        ]
        for name, value, reason in refused:
            result = set_param(ros, 'arm_bridge', name, value)
            assert not result.successful and reason in result.reason, (name, result.reason)
        # What get_parameters shows is what is in force.
        assert get_param(ros, 'arm_bridge', 'max_step_translation') == 0.01
        assert get_param(ros, 'arm_bridge', 'max_linear_speed') == 0.03
        assert get_param(ros, 'arm_bridge', 'output_mode') == 'servo_twist'
        assert list(get_param(ros, 'arm_bridge', 'workspace_max')) == [0.7, 0.4, 0.6]
        assert set_param(ros, 'arm_bridge', 'workspace_max', [0.45, 0.4, 0.6]).successful
        assert list(get_param(ros, 'arm_bridge', 'workspace_max')) == [0.45, 0.4, 0.6]
    assert bridge.alive


def _position(msg):
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


@pytest.mark.dds
@pytest.mark.parametrize('params, expected', [
    (['stream_rate_hz:=0'], "parameter 'stream_rate_hz' is 0.0; allowed: (0, 1000] Hz"),
    (['max_step_translation:=-1'], "parameter 'max_step_translation' is -1.0; allowed range "
                                   '(0.0, 0.5] m'),
    (['workspace_min:=[0.8,0.0,0.0]'], 'each axis of workspace_min must be < the same axis of '
                                       'workspace_max'),
    (['output_mode:=velocity'], "parameter 'output_mode' is 'velocity'; allowed: servo_twist, "
                                'pose_target'),
    (['gripper_convention:=inverted', 'gripper_consecutive:=0'],
     "parameter 'gripper_consecutive' is 0; allowed: an integer in [1, 100]"),
])
def test_out_of_range_parameters_are_refused_at_start(launch, params, expected):
    bridge = start_bridge(launch, *params)
    assert bridge.wait_exit(timeout=30.0) == 1, bridge.output()
    output = bridge.output()
    assert expected in output, output
    assert 'cannot start' in output


@pytest.mark.dds
def test_step_duration_not_below_command_timeout_is_warned_at_start(launch):
    bridge = start_bridge(launch, 'step_duration:=0.5', 'command_timeout:=0.4')
    bridge.wait_for_output('waiting for ee_pose')
    assert 'step_duration 0.5 s is not below command_timeout 0.4 s' in bridge.output()
    fine = start_bridge(launch, 'step_duration:=0.2')
    fine.wait_for_output('waiting for ee_pose')
    assert 'not below command_timeout' not in fine.output()
    assert bridge.alive and fine.alive


def _defaults(**overrides):
    values = {p.name: p.default for p in PARAMS}
    values.update(overrides)
    return values


@pytest.mark.parametrize('overrides, expected', [
    ({}, None),
    ({'workspace_min': [0, -1, 0], 'stream_rate_hz': 100}, None),   # integers are numbers
    ({'gripper_consecutive': 3.0}, None),
    ({'stream_rate_hz': 'fast'}, "'stream_rate_hz' is 'fast' (a string); it must be a number: "
                                 '(0, 1000] Hz'),
    ({'step_duration': 0.0}, None),                                # 0: learned
    ({'step_duration': 0.01}, "'step_duration' is 0.01; allowed: 0 (learn the step period from "
                              'the deltas) or [0.02 (one stream period), 10] s'),
    ({'step_duration': -0.2}, "'step_duration' is -0.2; allowed: 0"),
    ({'step_duration': 10.5}, "'step_duration' is 10.5; allowed: 0"),
    ({'workspace_max': [1.0, 1.0]}, "'workspace_max' is (1.0, 1.0); allowed: 3 finite numbers"),
    ({'base_frame': ''}, "'base_frame' is ''; allowed: a non-empty frame name"),
    ({'command_timeout': math.inf}, "'command_timeout' is inf; allowed range (0.0, 60.0] s"),
    ({'gripper_threshold': 0.0}, "'gripper_threshold' is 0.0; allowed range (0.0, 1.0)"),
    ({'max_linear_speed': 6.0}, "'max_linear_speed' is 6.0; allowed range (0.0, 5.0] m/s"),
    ({'max_angular_speed': -1.0}, "'max_angular_speed' is -1.0; allowed range (0.0, 20.0] rad/s"),
])
def test_configuration_checks_every_parameter(overrides, expected):
    _, _, _, problems = configuration(_defaults(**overrides))
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
