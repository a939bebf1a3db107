"""sim_arm with robot aloha as a user runs it: its own process, JTC's topics over DDS."""

import json
import time

from builtin_interfaces.msg import Duration
from conftest import wait_until
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.nodes import diagnostics
from vla_ros.sim.aloha import CAMERAS, CONTROLLERS, cube_start, JOINTS

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
STATE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
LEFT = 'left_arm_controller'
OFFSETS = np.array([0.3, -0.2, 0.25, 0.2, -0.3, 0.4, 0.02])  # rad; m for left_finger
ROW_S = 0.04  # 25 rows at 25 Hz: one second


def start_aloha(launch, *params):
    args = ['--ros-args', '-p', 'robot:=aloha', '-p', 'task:=transfer_cube', '-p',
            'camera_width:=48', '-p', 'camera_height:=32', '-p', 'camera_rate_hz:=5.0']
    for param in params:
        args += ['-p', param]
    sim = launch('sim_arm', *args)
    sim.wait_for_output('started:', timeout=60.0)
    return sim


def stamp_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def trajectory(names, rows, stamp_ns_=0):
    msg = JointTrajectory(joint_names=list(names))
    msg.header.stamp = Time(nanoseconds=stamp_ns_).to_msg()
    for i, row in enumerate(rows):
        t = int(round((i + 1) * ROW_S * 1e9))
        msg.points.append(JointTrajectoryPoint(
            positions=[float(v) for v in row],
            time_from_start=Duration(sec=t // 10**9, nanosec=t % 10**9)))
    return msg


def positions(state, names):
    return np.array([state.position[state.name.index(n)] for n in names])


def sim_diagnostics(inbox):
    for msg in reversed(inbox.messages):
        for status in msg.status:
            if status.name.startswith('sim_arm:'):
                return diagnostics.values_of(status)
    return None


@pytest.mark.dds
def test_a_chunk_sent_as_one_trajectory_is_followed_and_a_refused_one_moves_nothing(ros, launch):
    joints = ros.subscribe(JointState, 'joint_states', STATE)
    task = ros.subscribe(String, 'sim/task', RELIABLE)
    diags = ros.subscribe(DiagnosticArray, '/diagnostics', RELIABLE)
    images = {topic: ros.subscribe(Image, f'{topic}/image_raw', qos_profile_sensor_data)
              for topic in CAMERAS}
    sim = start_aloha(launch)
    state = joints.wait_for(5, timeout=10.0)[-1]
    assert state.name == list(JOINTS) and len(state.velocity) == 16
    for inbox in images.values():
        msg = inbox.wait_for(1, timeout=10.0)[-1]
        assert (msg.encoding, msg.width, msg.height) == ('rgb8', 48, 32)
    status = json.loads(task.wait_for(1)[-1].data)
    assert (status['task'], status['seed'], status['success']) == ('transfer_cube', 0, False)
    pub = ros.publisher(JointTrajectory, f'{LEFT}/joint_trajectory', RELIABLE)
    ros.wait_for_subscribers(pub)
    time.sleep(0.3)  # let the subscription see the publisher too (reliable, not yet matched)

    # Refused (a joint the controller does not have): counted, nothing moves.
    names = list(CONTROLLERS[LEFT])
    before = positions(joints.messages[-1], JOINTS)
    wrong = trajectory(['vx300s_left/no_such_joint'] + names[1:], [before[:7] + OFFSETS])
    pub.publish(wrong)
    wait_until(lambda: (d := sim_diagnostics(diags)) and d['refused_trajectories'] == '1',
               5.0, message='refused_trajectories 1 in /diagnostics')
    time.sleep(0.3)
    assert positions(joints.messages[-1], JOINTS) == pytest.approx(before, abs=2e-3)
    assert "joint 'vx300s_left/no_such_joint' is not one of the controller's joints" in \
        sim.output()

    # 25 rows, one trajectory, started 0.3 s ahead (so its times are known here).
    start = positions(joints.messages[-1], names)
    rows = start + np.linspace(0.0, 1.0, 26)[1:, None] * OFFSETS[None, :]
    begin = ros.node.get_clock().now().nanoseconds + int(0.3e9)
    joints.clear()
    pub.publish(trajectory(names, rows, begin))
    last = begin + int(25 * ROW_S * 1e9)
    wait_until(lambda: joints.messages and stamp_ns(joints.messages[-1]) > last + int(0.3e9),
               10.0, message='joint_states past the trajectory')
    states = joints.messages
    stamps = np.array([stamp_ns(m) for m in states])
    errors = []
    for i, row in enumerate(rows):
        at = begin + int(round((i + 1) * ROW_S * 1e9))
        nearest = states[int(np.abs(stamps - at).argmin())]
        assert abs(stamp_ns(nearest) - at) < 15e6  # joint_states at 50 Hz
        errors.append(np.abs(positions(nearest, names) - row))
    errors = np.array(errors)
    assert errors[:, :6].max() < 0.1, errors  # rad
    assert errors[:, 6].max() < 0.01, errors  # m, the finger lags most
    final = positions(states[-1], names)
    assert final[:3] == pytest.approx(rows[-1][:3], abs=0.03)
    assert sim_diagnostics(diags)['refused_trajectories'] == '1'
    right = list(CONTROLLERS['right_arm_controller'])
    assert positions(states[-1], right) == pytest.approx(before[8:15], abs=2e-3)


@pytest.mark.dds
def test_reset_starts_the_seeds_episode_and_a_task_of_the_other_robot_is_refused(ros, launch):
    task = ros.subscribe(String, 'sim/task', RELIABLE)
    start_aloha(launch, 'seed:=3')
    status = json.loads(task.wait_for(1, timeout=10.0)[-1].data)
    assert status['seed'] == 3
    assert status['cube_position'][:2] == pytest.approx(cube_start(3)[:2], abs=1e-3)
    reply = ros.call(SetParameters, 'sim_arm/set_parameters', SetParameters.Request(
        parameters=[Parameter('task', Parameter.Type.STRING, 'reach').to_parameter_msg()]))
    assert not reply.results[0].successful
    assert "robot 'aloha' does not run" in reply.results[0].reason
    reply = ros.call(SetParameters, 'sim_arm/set_parameters', SetParameters.Request(
        parameters=[Parameter('seed', Parameter.Type.INTEGER, 11).to_parameter_msg()]))
    assert reply.results[0].successful
    reply = ros.call(Trigger, 'sim_arm/reset', Trigger.Request())
    assert reply.success and 'seed 11' in reply.message
    status = wait_until(lambda: (m := json.loads(task.messages[-1].data))['seed'] == 11 and m,
                        5.0, message='seed 11 on sim/task')
    assert status['cube_position'][:2] == pytest.approx(cube_start(11)[:2], abs=1e-3)
    assert status['time_since_reset'] < 1.0


@pytest.mark.dds
def test_a_gripper_task_with_robot_aloha_is_a_clear_error_at_start(ros_env, launch):
    sim = launch('sim_arm', '--ros-args', '-p', 'robot:=aloha')
    assert sim.wait_exit(timeout=30.0) == 1
    assert "parameter 'task' is 'reach', a task robot 'aloha' does not run; its tasks: " \
        'transfer_cube' in sim.output()
