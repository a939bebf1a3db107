"""
arm_bridge (joint_trajectory) driving the simulated ALOHA (sim_arm robot aloha), over DDS.

The test plays vla_node: a 25-row, 14-D ALOHA chunk on ``vla/joint_chunk`` (or its rows one per
step on ``vla/joint_command``) goes through the real arm_bridge to the real sim_arm, and the
joints the simulator reports on ``joint_states`` must be at the rows at their times; a stale
chunk moves nothing; ``enable: false`` on the bridge stops the arms within a period.
"""

import time

from conftest import wait_until
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool
from test_joint_bridge import GRIP, JOINTS, P, Policy, start_bridge
from test_sim_aloha import positions, stamp_ns, start_aloha

pytestmark = pytest.mark.dds  # every test here talks DDS

STATE = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
# A slow sweep of every joint (rad; the grippers from 0.3 to 0.9 open), over 25 rows = 1 s.
SWEEP = np.array([0.25, -0.2, 0.2, 0.25, -0.25, 0.3, 0.0] * 2)


def plan(start):
    """Return 25 action rows (vla_node's 14-D order) from ``start`` (JOINTS' order, metres)."""
    rows = start + np.linspace(0.0, 1.0, 26)[1:, None] * SWEEP[None, :]
    rows[:, [6, 13]] = np.linspace(0.3, 0.9, 25)[:, None]
    return rows


def as_positions(rows):
    """Return ``rows`` with the grippers in finger metres, as the arm should reach them."""
    out = np.array(rows, dtype=np.float64)
    out[:, [6, 13]] = np.vectorize(GRIP.position)(out[:, [6, 13]])
    return out


def followed(states, rows, start_ns):
    """Return |joint_states - row| (25, 14) with row i due at ``start_ns + i * P``."""
    stamps = np.array([stamp_ns(m) for m in states])
    errors = []
    for i, row in enumerate(as_positions(rows)):
        at = start_ns + int(round(i * P * 1e9))
        nearest = states[int(np.abs(stamps - at).argmin())]
        assert abs(stamp_ns(nearest) - at) < 25e6  # joint_states at 50 Hz
        errors.append(np.abs(positions(nearest, JOINTS) - row))
    return np.array(errors)


def run_plan(ros, policy, joints, chunk):
    """Send ``plan`` as one chunk or one row per period; return (rows, start stamp, states)."""
    start = positions(joints.wait_for(1)[-1], JOINTS)
    rows = plan(start)
    joints.clear()
    begin = ros.node.get_clock().now().nanoseconds
    if chunk:
        policy.chunk(rows)
    else:
        for i, row in enumerate(rows):  # as vla_node: each step stamped with its own image
            time.sleep(max(0.0, begin * 1e-9 + i * P - time.time()))
            policy.command(row)
    wait_until(lambda: joints.messages and stamp_ns(joints.messages[-1]) > begin + int(1.5e9),
               10.0,
               message='joint_states past the plan')
    return rows, begin, list(joints.messages)


@pytest.mark.parametrize('mode', ('chunk', 'step'))
def test_a_25_row_aloha_chunk_through_the_bridge_moves_the_joints_to_the_rows_in_time(
        ros, launch, tmp_path, mode):
    joints = ros.subscribe(JointState, 'joint_states', STATE)
    start_aloha(launch)
    bridge = start_bridge(launch, tmp_path, trajectory_points=mode, step_duration=P,
                          command_timeout=1.5)
    bridge.wait_for_output('joint_states received', timeout=30.0)
    policy = Policy(ros, chunks=mode == 'chunk')
    if mode == 'chunk':  # a stale chunk (older than command_timeout) moves nothing
        before = positions(joints.wait_for(1)[-1], JOINTS)
        policy.chunk(plan(before), age=1.6)
        time.sleep(0.5)
        assert positions(joints.messages[-1], JOINTS) == pytest.approx(before, abs=2e-3)
    rows, begin, states = run_plan(ros, policy, joints, mode == 'chunk')
    # Row i is due at the stamp + i periods; the bridge sends it one period after it arrives
    # (chunk: the rows not yet due; step: each as its point), JTC interpolates to it, and the
    # position actuators lag: each joint within 0.1 rad of its row one period after the row's
    # time (a finger, 24 mm in 1 s, within 12 mm), and at the last row at the end.
    errors = followed(states, rows, begin + int(P * 1e9))
    arm = np.delete(errors, [6, 13], axis=1)
    assert arm.max() < 0.1 and errors[:, [6, 13]].max() < 0.012, errors.max(axis=0)
    final = positions(states[-1], JOINTS)
    assert np.delete(np.abs(final - as_positions(rows)[-1]), [6, 13]).max() < 0.03
    assert np.abs(final - positions(states[0], JOINTS)).max() > 0.2  # it did move


def test_enable_false_on_the_bridge_stops_the_arms_within_a_period(ros, launch, tmp_path):
    joints = ros.subscribe(JointState, 'joint_states', STATE)
    start_aloha(launch)
    bridge = start_bridge(launch, tmp_path, trajectory_points='chunk', command_timeout=1.5)
    bridge.wait_for_output('joint_states received', timeout=30.0)
    policy = Policy(ros, chunks=True)
    start = positions(joints.wait_for(1)[-1], JOINTS)
    policy.chunk(plan(start))
    time.sleep(0.4)  # mid-chunk, the arms moving at 0.2-0.3 rad/s
    assert ros.call(SetBool, '/arm_bridge/enable', SetBool.Request(data=False)).success
    stopped_at = ros.node.get_clock().now().nanoseconds
    time.sleep(0.8)
    after = [m for m in joints.messages if stamp_ns(m) > stopped_at + int(0.1e9)]
    track = np.array([positions(m, JOINTS) for m in after])
    moving = np.abs(positions(joints.messages[-1], JOINTS) - start).max()
    # From one period (the hold's point, plus the actuators settling) after the disable on,
    # the joints stay put, short of where the chunk was going.
    assert np.delete(np.ptp(track, axis=0), [6, 13]).max() < 0.01, np.ptp(track, axis=0)
    assert 0.03 < moving < 0.2
