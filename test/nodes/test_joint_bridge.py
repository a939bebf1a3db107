"""
arm_bridge ``output_mode: joint_trajectory`` as a user runs it, over DDS: ALOHA's two arms.

The test plays the arms (``joint_states``) and vla_node (``vla/joint_command`` and
``vla/joint_chunk``, the spec's types and names) and watches each controller's
``joint_trajectory`` and ``/diagnostics``. Start-up checks of the configuration run without DDS.
"""

import math
import re
import time
import types

from conftest import wait_until
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool
from test_arm_bridge import Background, ros_now
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from vla_ros.control.joints import ALOHA_GRIPPER, GripperRange, PRESETS
from vla_ros.control.trajectory import jtc_refusal
from vla_ros.nodes import diagnostics, messages
from vla_ros.nodes.joint_bridge import configuration, PARAMS
import yaml

QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
ARM = ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate', 'left_finger')
CONTROLLERS = {side: tuple(f'vx300s_{side}/{j}' for j in ARM) for side in ('left', 'right')}
TOPICS = {side: f'{side}_arm_controller/joint_trajectory' for side in CONTROLLERS}
JOINTS = CONTROLLERS['left'] + CONTROLLERS['right']
NAMES = list(PRESETS['aloha'])  # vla_node's action_joints: gripper:... for the fingers
LOWER = [-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158, 0.0184] * 2
UPPER = [3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158, 0.058] * 2
SPEED = [3.0] * 6 + [0.5] + [3.0] * 6 + [0.5]
HOME = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.03] * 2)  # measured, JOINTS' order
P = 0.04  # 25 Hz, ALOHA's control rate
GRIP = GripperRange(*ALOHA_GRIPPER)


def settings(**changes):
    """Return the ALOHA parameters of the bridge, with ``changes``."""
    values = {'output_mode': 'joint_trajectory',
              'controllers': ['left_arm_controller', 'right_arm_controller'],
              'left_arm_controller.joints': list(CONTROLLERS['left']),
              'right_arm_controller.joints': list(CONTROLLERS['right']),
              'joint_lower': LOWER, 'joint_upper': UPPER, 'joint_velocity': SPEED}
    return {**values, **changes}


def start_bridge(launch, tmp_path, **changes):
    path = tmp_path / 'joint_bridge.yaml'
    path.write_text(yaml.safe_dump({'/**/arm_bridge': {'ros__parameters': settings(**changes)}}))
    return launch('arm_bridge', '--ros-args', '--params-file', path)


def set_time(msg_time, seconds):
    msg_time.sec = int(math.floor(seconds))
    msg_time.nanosec = int(round((seconds - math.floor(seconds)) * 1e9)) % 10**9


class Arms(Background):
    """The test playing the arms: joint_states at 50 Hz from a thread, ``position`` settable."""

    def __init__(self, ros):
        super().__init__()
        self.ros, self.position = ros, HOME.copy()
        self.publisher = ros.publisher(JointState, 'joint_states', QOS)

    def _run(self):
        while not self._stop.wait(0.02):
            msg = JointState(name=list(JOINTS), position=[float(v) for v in self.position])
            set_time(msg.header.stamp, ros_now(self.ros))
            self.publisher.publish(msg)


class Policy:
    """The test playing vla_node: vla/joint_command and vla/joint_chunk."""

    def __init__(self, ros, chunks=False):
        self.ros = ros
        self.out = ros.publisher(JointTrajectory if chunks else JointState,
                                 'vla/joint_chunk' if chunks else 'vla/joint_command', QOS)
        ros.wait_for_subscribers(self.out)

    def command(self, values, names=NAMES, age=0.0):
        msg = JointState(name=list(names), position=[float(v) for v in values])
        set_time(msg.header.stamp, ros_now(self.ros) - age)
        self.out.publish(msg)

    def chunk(self, rows, age=0.0):
        """Publish ``rows`` at i * P from a stamp ``age`` s ago; return the stamp (s)."""
        msg = JointTrajectory(joint_names=NAMES)
        stamp = ros_now(self.ros) - age
        set_time(msg.header.stamp, stamp)
        for i, row in enumerate(rows):
            point = JointTrajectoryPoint(positions=[float(v) for v in row])
            set_time(point.time_from_start, i * P)
            msg.points.append(point)
        self.out.publish(msg)
        return stamp


def action(positions, gripper=(0.5, 0.5)):
    """Return a 14-D action in vla_node's order: the joints, the normalised grippers."""
    values = np.array(positions, dtype=np.float64).copy()
    values[[6, 13]] = gripper
    return values


def received(inboxes, count=1, timeout=5.0):
    """Return the ``count`` newest trajectories per arm, in JOINTS' order: (count, K, 14)."""
    for inbox in inboxes.values():
        inbox.wait_for(count, timeout)
    found = {}
    for side, inbox in inboxes.items():
        found[side] = [messages.trajectory_from_msg(m) for m in inbox.messages[-count:]]
        for sent in found[side]:
            assert sent.joint_names == CONTROLLERS[side]
            assert jtc_refusal(sent, CONTROLLERS[side], 0) == ''
    return found


def points(found, index=-1):
    """Return the positions (K, 14) of the ``index``-th trajectory of both arms."""
    return np.hstack([np.array([p.positions for p in found[side][index].points])
                      for side in ('left', 'right')])


def counters(diag, timeout=5.0):
    """Return the next arm_bridge diagnostics values (strings)."""
    diag.clear()

    def found():
        for msg in diag.messages:
            for status in msg.status:
                if status.name.endswith(': safety'):
                    return diagnostics.values_of(status)
        return None
    return wait_until(found, timeout, message='arm_bridge diagnostics')


def subscribe(ros):
    return ({side: ros.subscribe(JointTrajectory, topic, QOS) for side, topic in TOPICS.items()},
            ros.subscribe(DiagnosticArray, '/diagnostics', QOS))


@pytest.mark.dds
def test_a_25_row_aloha_chunk_leaves_as_one_trajectory_per_arm_and_a_stale_one_never(
        ros, launch, tmp_path):
    arms, diag = subscribe(ros)
    bridge = start_bridge(launch, tmp_path, trajectory_points='chunk')
    policy = Policy(ros, chunks=True)
    rows = np.array([action(HOME + 0.004 * (i + 1), (0.3 + 0.01 * i, 0.3 - 0.01 * i))
                     for i in range(25)])
    with Arms(ros):
        bridge.wait_for_output('joint_states received')
        policy.chunk(rows, age=0.6)  # stale: older than command_timeout 0.5 s
        stamp = policy.chunk(rows)
        found = received(arms)
        time.sleep(0.2)
        values = counters(diag)
    assert all(len(inbox.messages) == 1 for inbox in arms.values())  # the stale one: nothing
    assert values['dropped_stale'] == '1' and values['sent_chunks'] == '1', values
    # Row i is due at the chunk's stamp + i periods: the rows due by the time the bridge sent
    # (row 0 at least; more when delivery lags) are past; the rest go from one period after
    # arrival, one period apart, the grippers in metres.
    sent = len(found['left'][0].points)
    lag = arms['left'].stamped[0][0] + time.time() - time.monotonic() - stamp  # sent -> here
    assert 1 <= sent <= 24 and (24 - sent) * P <= lag + 0.002, (sent, lag)
    for side in found:
        assert [p.time_from_start_ns for p in found[side][0].points] == \
            [round(P * 1e9) * (i + 1) for i in range(sent)]
        assert found[side][0].stamp_ns == 0
    expected = rows[25 - sent:].copy()
    expected[:, 6] = [GRIP.position(v) for v in expected[:, 6]]
    expected[:, 13] = [GRIP.position(v) for v in expected[:, 13]]
    np.testing.assert_allclose(points(found), expected, atol=1e-12)


@pytest.mark.dds
@pytest.mark.parametrize('mode', ('chunk', 'step'))
def test_vla_nodes_hold_cuts_the_chunk_short_at_the_measured_positions(
        ros, launch, tmp_path, mode):
    arms, diag = subscribe(ros)
    bridge = start_bridge(launch, tmp_path, trajectory_points=mode)
    policy = Policy(ros, chunks=mode == 'chunk')
    holds = Policy(ros, chunks=True)  # vla_node's hold: a vla/joint_chunk without points
    rows = np.array([action(HOME + 0.004 * (i + 1)) for i in range(25)])
    with Arms(ros) as state:
        bridge.wait_for_output('joint_states received')
        if mode == 'chunk':
            policy.chunk(rows)
        else:
            policy.command(rows[0])
        received(arms)
        state.position = HOME + 0.002
        time.sleep(0.1)
        holds.chunk([])
        found = received(arms, count=2)
        policy.command(rows[1], age=0.05) if mode == 'step' else policy.chunk(rows, age=0.05)
        time.sleep(0.3)
        values = counters(diag)
    np.testing.assert_allclose(points(found), [HOME + 0.002], atol=1e-12)
    assert all(len(inbox.messages) == 2 for inbox in arms.values())  # computed before: dropped
    assert values['policy_holds'] == '1' and values['dropped_reordered'] == '1', values
    assert 'vla_node held' in bridge.output()


@pytest.mark.dds
def test_steps_are_points_clipped_to_limits_and_speed_and_bad_ones_refused(
        ros, launch, tmp_path):
    arms, diag = subscribe(ros)
    bridge = start_bridge(launch, tmp_path, step_duration=0.1)
    policy = Policy(ros)
    with Arms(ros):
        bridge.wait_for_output('joint_states received')
        target = HOME + 0.02
        policy.command(action(target, (0.0, 1.0)))
        found = received(arms)
        assert [p.time_from_start_ns for p in found['left'][0].points] == [100_000_000]
        expected = target.copy()
        expected[[6, 13]] = ALOHA_GRIPPER  # left closed, right open, in metres
        np.testing.assert_allclose(points(found)[0], expected, atol=1e-12)
        # Beyond a limit (below the shoulder's -1.85): clipped to it, then slowed (0.89 rad in
        # 0.1 s). Too fast (the waist 0.6 rad in 0.1 s, twice its 3 rad/s): every joint slowed
        # by one factor, so the right waist's 0.06 rad becomes 0.03.
        beyond = HOME.copy()
        beyond[1] = -1.9
        fast = HOME.copy()
        fast[0], fast[7] = 0.6, 0.06
        for values in (beyond, fast):
            policy.command(action(values, (0.3, 0.3)))
        found = received(arms, 3)
        assert -1.85 < points(found, 1)[0][1] < HOME[1]
        np.testing.assert_allclose(points(found, 2)[0][[0, 7]], [0.3, 0.03])
        # NaN, a joint no controller has, a stale command: nothing sent, counted.
        policy.command(action(np.r_[math.nan, HOME[1:]]))
        policy.command(action(HOME), names=NAMES[:13] + ['vx300s_right/gripper'])
        policy.command(action(HOME), age=1.0)
        # Then the watchdog, command_timeout after the last step: one hold where the arms are.
        found = received(arms, 4)
        np.testing.assert_allclose(points(found), [HOME])
        time.sleep(0.3)
        values = counters(diag)
    assert all(len(inbox.messages) == 4 for inbox in arms.values())
    for key, count in (('sent_steps', 3), ('clipped_velocity', 2), ('rejected_nan', 1),
                       ('rejected_unknown_joint', 1), ('dropped_stale', 1),
                       ('watchdog_holds', 1)):
        assert values[key] == str(count), (key, values)
    assert int(values['clipped_limit']) >= 1
    assert "names joint 'vx300s_right/gripper', which no controller has" in bridge.output()


@pytest.mark.dds
def test_refuse_modes_send_nothing_and_disable_holds_the_measured_position(
        ros, launch, tmp_path):
    arms, diag = subscribe(ros)
    bridge = start_bridge(launch, tmp_path, beyond_limit='refuse', too_fast='refuse')
    policy = Policy(ros)
    with Arms(ros) as played:
        bridge.wait_for_output('joint_states received')
        beyond = HOME.copy()
        beyond[1] = -1.9
        policy.command(action(beyond))
        time.sleep(0.3)
        values = counters(diag)
        assert values['refused_beyond_limit'] == '1', values
        assert not any(inbox.messages for inbox in arms.values())
        played.position = HOME + 0.01
        time.sleep(0.1)
        asked = time.monotonic()
        ros.call(SetBool, 'arm_bridge/enable', SetBool.Request(data=False))
        found = received(arms)
        arrival = arms['left'].stamped[-1][0]
        assert arrival - asked < 0.5  # the service call's own round trip; the hold went first
        np.testing.assert_allclose(points(found), [HOME + 0.01])
        assert found['left'][0].points[0].time_from_start_ns == 20_000_000  # one tick
        policy.command(action(HOME + 0.01))
        time.sleep(0.3)
        values = counters(diag)
    assert values['dropped_disabled'] == '1' and values['disable_holds'] == '1', values
    assert all(len(inbox.messages) == 1 for inbox in arms.values())


def cfg(**changes):
    values = {p.name: (list(p.default) if isinstance(p.default, tuple) else p.default)
              for p in PARAMS}
    values.update({k: v for k, v in settings(**changes).items() if '.' not in k})
    return types.SimpleNamespace(**values)


URDF = ('<robot name="aloha"><link name="a"/><link name="b"/><joint name="vx300s_left/waist" '
        'type="revolute"><parent link="a"/><child link="b"/></joint></robot>')


@pytest.mark.parametrize('changes, controllers, message', [
    ({}, {}, "'controllers' is empty"),
    ({}, {'left': CONTROLLERS['left'], 'right': CONTROLLERS['left'][:1]},
     "'vx300s_left/waist' is named in controllers 'left' and 'right'"),
    ({'joint_upper': UPPER[:13]}, dict(CONTROLLERS), 'joint_upper has 13 value.s. for 14'),
    ({'joint_lower': [], 'joint_upper': [], 'joint_velocity': [], 'robot_description': URDF},
     {'left': CONTROLLERS['left'][:1]}, "gives joint 'vx300s_left/waist' .revolute. no <limit"),
    ({'joint_lower': [], 'joint_upper': [], 'joint_velocity': [], 'robot_description': URDF},
     {'left': CONTROLLERS['left'][1:2]}, "the robot has no joint 'vx300s_left/shoulder'"),
    ({'joint_lower': [], 'joint_upper': [], 'joint_velocity': []}, dict(CONTROLLERS),
     'no joint limits'),
    ({'step_duration': 0.001}, dict(CONTROLLERS), "'step_duration' is 0.001"),
])
def test_configurations_that_cannot_work_are_refused_at_start_with_the_fix(
        changes, controllers, message):
    config, problems = configuration(cfg(**changes), controllers, 0.02)
    assert config is None and len(problems) == 1
    assert re.search(message, problems[0]), problems


@pytest.mark.dds
def test_a_urdf_without_limits_stops_the_bridge_at_start(launch, tmp_path):
    bridge = start_bridge(launch, tmp_path, joint_lower=[], joint_upper=[], joint_velocity=[],
                          robot_description=URDF, controllers=['c'],
                          **{'c.joints': ['vx300s_left/waist']})
    assert bridge.wait_exit() == 1
    assert "the URDF gives joint 'vx300s_left/waist' (revolute) no <limit" in bridge.output()
