"""sim_arm as a user runs it: its own process (with arm_bridge in another), talking over DDS."""

import json
import math
import time

from conftest import wait_until
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import SetBool, Trigger

from vla_ros.nodes import diagnostics
from vla_ros.sim import tasks
from vla_ros.sim.arm import CAMERAS, FINGER_JOINTS, HOME_POSITION, SimArm, WORKSPACE_HIGH
from vla_ros.sim.camera import SimCamera
from vla_ros.sim.loop import Pacer, Schedule

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
TWIST_TIMEOUT = 0.3
# Deep enough that no ee_pose sample of a move is lost before the test reads it.
STATE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


def start_sim(launch, *params):
    """Start sim_arm with ``name:=value`` overrides and wait until it is running."""
    args = ['--ros-args']
    for param in params:
        args += ['-p', param]
    sim = launch('sim_arm', *args)
    sim.wait_for_output('started:', timeout=30.0)
    return sim


def position(msg):
    p = msg.pose.position
    return np.array([p.x, p.y, p.z])


def stamp_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def pixels(msg):
    """Return an rgb8 Image's pixels as (height, width, 3) int16 (room for differences)."""
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3).astype(np.int16)


def difference(a, b):
    """Return the mean absolute difference of two images, in intensity levels."""
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def fresh(inbox, timeout=5.0):
    """Return the first message that arrives after now."""
    after = time.monotonic()
    return wait_until(lambda: next((m for t, m in inbox.stamped if t > after), None), timeout,
                      message='a fresh message')


def fingers(state):
    """Return the finger joint positions of a JointState, looked up by name."""
    return [state.position[state.name.index(name)] for name in FINGER_JOINTS]


def latest_position(inbox, after=None):
    """Return the position of the newest ee_pose (received after monotonic time ``after``)."""
    def newest():
        items = [m for t, m in inbox.stamped if after is None or t > after]
        return items[-1] if items else None
    return position(wait_until(newest, 5.0, message='a fresh ee_pose'))


def twist(ros, vx=0.0, vy=0.0, vz=0.0, age=0.0, frame='base_link'):
    msg = TwistStamped()
    stamp = ros.node.get_clock().now().nanoseconds - int(age * 1e9)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
    msg.header.frame_id = frame
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = vx, vy, vz
    return msg


def stream(ros, publisher, duration, rate=50.0, **kwargs):
    """Publish freshly stamped twists at ``rate`` for ``duration`` seconds."""
    end = time.monotonic() + duration
    while time.monotonic() < end:
        publisher.publish(twist(ros, **kwargs))
        time.sleep(1.0 / rate)


def pose_msg(ros, xyz, frame='base_link'):
    msg = PoseStamped()
    msg.header.stamp = ros.node.get_clock().now().to_msg()
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = map(float, xyz)
    msg.pose.orientation.w = 1.0
    return msg


def node_diagnostics(inbox, node='sim_arm'):
    """Return the newest diagnostics values of ``node`` as a dict of strings (or None)."""
    for msg in reversed(inbox.messages):
        for status in msg.status:
            if status.name.startswith(node + ':'):
                return diagnostics.values_of(status)
    return None


def handshake(publisher, make_msg, diags, key, node='sim_arm'):
    """
    Publish ``make_msg()`` until ``node`` counts one in its /diagnostics value ``key``.

    A publisher can see its subscriber before the subscriber sees it, and what is sent in between
    is lost; after this, the connection is up both ways.
    """
    def counted():
        publisher.publish(make_msg())
        values = node_diagnostics(diags, node)
        return values is not None and int(values[key]) > 0
    wait_until(counted, 15.0, interval=0.1, message=f'{node} to count {key}')


def go_to(ros, pub, poses, xyz, tolerance=0.005, timeout=6.0):
    """Send the target (again every 0.2 s, it is absolute) until the end effector is there."""
    last = [0.0]

    def arrived():
        if time.monotonic() - last[0] > 0.2:
            pub.publish(pose_msg(ros, xyz))
            last[0] = time.monotonic()
        return np.linalg.norm(latest_position(poses) - xyz) < tolerance
    wait_until(arrived, timeout, message=f'the end effector at {list(xyz)}')


# ---------------------------------------------------------------- the ROS-free core
def test_core_twist_is_clamped_held_until_timeout_and_clipped_to_the_workspace():
    arm = SimArm(max_linear_speed=0.1, twist_timeout=0.1)
    start = arm.ee_pose()[0]
    arm.command_twist([1.0, 0.0, 0.0], [0.0, 0.0, 0.0])  # clamped to 0.1 m/s, held 0.1 s
    arm.step(0.5)
    assert arm.ee_pose()[0][0] - start[0] == pytest.approx(0.01, abs=0.001)
    with pytest.raises(ValueError):
        arm.command_twist([math.nan, 0.0, 0.0], [0.0, 0.0, 0.0])
    arm.command_pose([5.0, 0.0, 0.2], [0.0, 0.0, 0.0, 1.0])  # far outside: stops at the edge
    arm.step(8.0)
    assert arm.ee_pose()[0][0] == pytest.approx(WORKSPACE_HIGH[0], abs=0.003)


def test_core_grasps_and_lifts_the_cube():
    arm = SimArm(seed=3)
    cube = arm.scene_state().object_positions['cube']
    for xyz, opening, seconds in (((cube[0], cube[1], 0.1), 1.0, 1.5),
                                  ((cube[0], cube[1], 0.02), 1.0, 1.0),
                                  ((cube[0], cube[1], 0.02), 0.0, 0.5),
                                  ((cube[0], cube[1], 0.15), 0.0, 1.0)):
        arm.command_gripper(opening)
        arm.command_pose(xyz, (0.0, 0.0, 0.0, 1.0))
        arm.step(seconds)
    assert tasks.success('lift', 'red cube', arm.scene_state())
    arm.reset()
    assert not tasks.success('lift', 'red cube', arm.scene_state())
    assert np.allclose(arm.ee_pose()[0], HOME_POSITION, atol=1e-6)


def test_core_renders_both_views_of_one_snapshot_and_the_wrist_view_rides_on_the_gripper():
    arm = SimArm()
    camera = SimCamera(arm.model, 96, 72, CAMERAS)
    try:
        scene, wrist = camera.render(arm.snapshot())
        assert scene.shape == wrist.shape == (72, 96, 3) and scene.dtype == np.uint8
        assert difference(scene, wrist) > 10, 'two cameras, two different views'
        arm.command_pose(HOME_POSITION + [0.1, 0.1, -0.1], (0.0, 0.0, 0.0, 1.0))
        arm.step(1.5)
        moved_scene, moved_wrist = camera.render(arm.snapshot())
        # The fixed camera sees a small gripper move; the wrist camera sees its whole view move.
        assert difference(wrist, moved_wrist) > max(5.0, 3 * difference(scene, moved_scene))
    finally:
        camera.close()


def test_pacer_runs_whole_steps_to_the_clock_and_skips_a_stall():
    pacer = Pacer(step_ns=2_000_000, epoch_ns=10**9, max_steps=50)
    assert pacer.advance(10**9 + 9_000_000) == 4  # 9 ms: four 2 ms steps, 1 ms carried
    assert pacer.now_ns == 10**9 + 8_000_000
    assert pacer.advance(10**9 + 10_000_000) == 1
    assert pacer.advance(10**9) == 0  # a clock going back runs nothing
    assert pacer.advance(10**9 + 10_000_000 + 500_000_000) == 50  # a 0.5 s stall: 0.1 s run
    assert pacer.skips == 1 and pacer.now_ns == 10**9 + 510_000_000
    schedule = Schedule(15.0)
    due = sum(schedule.due(tick * 10_000_000) for tick in range(1000))  # 10 s of 100 Hz ticks
    assert due == pytest.approx(150, abs=1)


# ---------------------------------------------------------------- the node over DDS
@pytest.mark.dds
def test_publishes_both_cameras_ee_pose_and_joint_states(ros, launch):
    images = ros.subscribe(Image, 'camera/image_raw', qos_profile_sensor_data)
    wrist = ros.subscribe(Image, 'wrist_camera/image_raw', qos_profile_sensor_data)
    poses = ros.subscribe(PoseStamped, 'ee_pose', STATE)
    joints = ros.subscribe(JointState, 'joint_states', STATE)
    task = ros.subscribe(String, 'sim/task', RELIABLE)
    start_sim(launch, 'camera_width:=200', 'camera_height:=150', 'camera_rate_hz:=15.0')
    frames = images.wait_for(12, timeout=20.0)
    now = ros.node.get_clock().now().nanoseconds * 1e-9
    for msg in frames:
        assert (msg.encoding, msg.width, msg.height, msg.step) == ('rgb8', 200, 150, 600)
        assert len(msg.data) == 600 * 150 and msg.header.frame_id == 'sim_camera'
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in frames]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), stamps
    assert abs(now - stamps[-1]) < 0.5, (now, stamps[-1])
    # A frame is dropped when the previous one still renders (a busy CPU); the rest keep the rate.
    intervals = np.diff(stamps[2:])
    assert np.median(intervals) == pytest.approx(1 / 15.0, rel=0.2), intervals
    assert intervals.min() > 0.8 / 15.0, intervals
    assert pixels(frames[-1]).std() > 10, 'the image should show a scene, not one colour'
    # The wrist camera: same size, encoding and rate, its own frame, one stamp per frame pair.
    wrist_frames = wrist.wait_for(12, timeout=5.0)
    for msg in wrist_frames:
        assert (msg.encoding, msg.width, msg.height, msg.step) == ('rgb8', 200, 150, 600)
        assert msg.header.frame_id == 'sim_wrist_camera'
    intervals = np.diff([stamp_ns(m) * 1e-9 for m in wrist_frames[2:]])
    assert np.median(intervals) == pytest.approx(1 / 15.0, rel=0.2), intervals
    scene_stamps = [stamp_ns(m) for m in images.messages]
    wrist_stamps = [stamp_ns(m) for m in wrist.messages]
    low = max(scene_stamps[0], wrist_stamps[0])
    high = min(scene_stamps[-1], wrist_stamps[-1])  # a newest twin may still be on its way
    paired = [t for t in scene_stamps if low <= t <= high]
    assert len(paired) >= 10 and paired == [t for t in wrist_stamps if low <= t <= high], \
        (scene_stamps, wrist_stamps)
    scene_view, wrist_view = ({stamp_ns(m): pixels(m) for m in inbox.messages}[paired[-1]]
                              for inbox in (images, wrist))
    assert wrist_view.std() > 10
    assert difference(scene_view, wrist_view) > 10, 'two cameras, two views'
    pose = poses.wait_for(5)[-1]
    assert pose.header.frame_id == 'base_link'
    assert np.allclose(position(pose), HOME_POSITION, atol=0.005)
    assert pose.pose.orientation.w == pytest.approx(1.0, abs=1e-3)
    state = joints.wait_for(5)[-1]
    assert len(state.name) == len(state.position) == len(state.velocity) == 8
    assert state.name[6:] == ['left_finger_joint', 'right_finger_joint']
    assert fingers(state) == pytest.approx([0.04, 0.04], abs=0.002)  # metres: open
    status = json.loads(task.wait_for(1)[-1].data)
    assert status['object_lifted'] is False and abs(status['object_height']) < 0.005
    assert (status['task'], status['seed'], status['instruction']) == \
        ('reach', 0, tasks.episode(0).instruction)


@pytest.mark.dds
def test_twist_stream_moves_by_speed_times_duration_and_stops(ros, launch):
    poses = ros.subscribe(PoseStamped, 'ee_pose', STATE)
    diags = ros.subscribe(DiagnosticArray, '/diagnostics', RELIABLE)
    # A twist holds until a newer one replaces it or twist_timeout passes: 0.3 s (not Servo's
    # 0.1 s) keeps the distance from depending on this process's publishing jitter under load.
    start_sim(launch, f'twist_timeout:={TWIST_TIMEOUT}')
    pub = ros.publisher(TwistStamped, 'servo_node/delta_twist_cmds', RELIABLE)
    handshake(pub, lambda: twist(ros), diags, 'twists')

    def two_seconds(vx):
        start = latest_position(poses, after=time.monotonic())
        stream(ros, pub, 2.0, vx=vx)  # long enough that a hiccup of 0.2 s stays inside 10 %
        pub.publish(twist(ros))  # a zero twist ends the motion, as arm_bridge's watchdog does
        time.sleep(0.3)
        return latest_position(poses, after=time.monotonic()) - start

    # As in the arm_bridge test below: a scheduling hiccup spoils one attempt, not two.
    moved = two_seconds(0.05)
    if moved[0] != pytest.approx(0.1, rel=0.1):
        print(f'first attempt moved {moved}; trying back along -x')
        moved = -two_seconds(-0.05)
    assert moved[0] == pytest.approx(0.1, rel=0.1), moved
    assert np.all(np.abs(moved[1:]) < 0.005), moved
    # The stream just stops (no zero twist): motion ends at the twist timeout.
    stream(ros, pub, 0.3, vx=0.05)
    time.sleep(TWIST_TIMEOUT + 0.15)  # twist_timeout, then the weld settles
    before = latest_position(poses, after=time.monotonic())
    time.sleep(0.5)
    after = latest_position(poses, after=time.monotonic())
    assert np.linalg.norm(after - before) < 0.002, (before, after)


@pytest.mark.dds
def test_stale_nan_and_foreign_frame_twists_do_not_move_and_are_counted(ros, launch):
    poses = ros.subscribe(PoseStamped, 'ee_pose', STATE)
    diags = ros.subscribe(DiagnosticArray, '/diagnostics', RELIABLE)
    start_sim(launch)
    pub = ros.publisher(TwistStamped, 'servo_node/delta_twist_cmds', RELIABLE)
    handshake(pub, lambda: twist(ros), diags, 'twists')
    time.sleep(0.2)
    start = latest_position(poses, after=time.monotonic())
    stream(ros, pub, 0.3, vx=0.1, age=1.0)
    stream(ros, pub, 0.3, vx=math.nan)
    stream(ros, pub, 0.3, vx=0.1, frame='tool0')
    time.sleep(0.2)
    assert np.linalg.norm(latest_position(poses, after=time.monotonic()) - start) < 0.001

    def counted():
        values = node_diagnostics(diags)
        return values and int(values['stale_twists']) > 0 and \
            int(values['rejected_nonfinite']) > 0 and int(values['rejected_frame']) > 0
    wait_until(counted, 5.0, message='the rejected twists counted in /diagnostics')


@pytest.mark.dds
def test_target_pose_is_reached_within_the_speed_limit(ros, launch):
    poses = ros.subscribe(PoseStamped, 'ee_pose', STATE)
    diags = ros.subscribe(DiagnosticArray, '/diagnostics', RELIABLE)
    start_sim(launch, 'max_linear_speed:=0.1')
    pub = ros.publisher(PoseStamped, 'target_pose', RELIABLE)
    start = latest_position(poses)
    # A target in another frame is refused: counted, and no motion.
    handshake(pub, lambda: pose_msg(ros, start + [0.1, 0.0, 0.0], frame='world'), diags,
              'rejected_frame')
    assert np.linalg.norm(latest_position(poses, after=time.monotonic()) - start) < 0.001
    goal = start + np.array([0.08, -0.06, -0.05])
    poses.clear()
    go_to(ros, pub, poses, goal)
    samples = [(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, position(m))
               for m in poses.messages]
    speeds = [np.linalg.norm(b[1] - a[1]) / (b[0] - a[0])
              for a, b in zip(samples[::5], samples[5::5])]
    assert max(speeds) <= 0.1 * 1.05, max(speeds)
    assert max(speeds) >= 0.1 * 0.8, 'the move should run at about the speed limit'


@pytest.mark.dds
def test_gripper_closes_and_opens_on_joint_states_and_in_the_wrist_view(ros, launch):
    joints = ros.subscribe(JointState, 'joint_states', STATE)
    wrist = ros.subscribe(Image, 'wrist_camera/image_raw', qos_profile_sensor_data)
    start_sim(launch)
    pub = ros.publisher(Float64, 'gripper/command', RELIABLE)
    ros.wait_for_subscribers(pub)

    def command(opening):
        pub.publish(Float64(data=opening))  # absolute, so sending it again is harmless
        return fingers(joints.wait_for(1)[-1])
    assert min(fingers(joints.wait_for(1)[-1])) > 0.035
    open_view = pixels(fresh(wrist))
    wait_until(lambda: max(command(0.0)) < 0.003, 5.0, interval=0.1, message='closed fingers')
    # The fingers are in the wrist camera's view: closing them changes it.
    assert difference(open_view, pixels(fresh(wrist))) > 5
    wait_until(lambda: min(command(1.0)) > 0.037, 5.0, interval=0.1, message='open fingers')


@pytest.mark.dds
def test_wrist_camera_moves_with_the_gripper(ros, launch):
    poses = ros.subscribe(PoseStamped, 'ee_pose', STATE)
    scene = ros.subscribe(Image, 'camera/image_raw', qos_profile_sensor_data)
    wrist = ros.subscribe(Image, 'wrist_camera/image_raw', qos_profile_sensor_data)
    start_sim(launch)
    pub = ros.publisher(PoseStamped, 'target_pose', RELIABLE)
    wrist.wait_for(3)
    scene_before, before = pixels(fresh(scene)), pixels(fresh(wrist))
    assert difference(before, pixels(fresh(wrist))) < 1, 'at rest the view holds still'
    go_to(ros, pub, poses, HOME_POSITION + [0.1, 0.1, -0.1])
    scene_after, after = pixels(fresh(scene)), pixels(fresh(wrist))
    # The fixed camera sees a small gripper move; the wrist camera sees its whole view move.
    assert difference(before, after) > max(5.0, 3 * difference(scene_before, scene_after))


@pytest.mark.dds
def test_wrist_camera_false_publishes_the_scene_camera_only(ros, launch):
    images = ros.subscribe(Image, 'camera/image_raw', qos_profile_sensor_data)
    wrist = ros.subscribe(Image, 'wrist_camera/image_raw', qos_profile_sensor_data)
    diags = ros.subscribe(DiagnosticArray, '/diagnostics', RELIABLE)
    sim = start_sim(launch, 'wrist_camera:=false')
    assert 'wrist camera off' in sim.output()
    images.wait_for(5)
    values = wait_until(lambda: node_diagnostics(diags), 5.0, message='sim_arm diagnostics')
    assert values['wrist_camera'] == 'false' and values['wrist_render_time_p50_ms'] == 'nan'
    assert ros.node.count_publishers('/wrist_camera/image_raw') == 0 and not wrist.messages


def set_parameters(ros, *params):
    """Set sim_arm parameters as `ros2 param set` does; return the results."""
    request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in params])
    return ros.call(SetParameters, 'sim_arm/set_parameters', request).results


@pytest.mark.dds
def test_lift_episode_succeeds_on_sim_task_and_a_seed_change_starts_at_reset(ros, launch):
    poses = ros.subscribe(PoseStamped, 'ee_pose', STATE)
    task = ros.subscribe(String, 'sim/task', RELIABLE)
    lifted = ros.subscribe(Bool, 'sim/object_lifted', RELIABLE)
    start_sim(launch, 'task:=lift', 'seed:=7')
    pub = ros.publisher(PoseStamped, 'target_pose', RELIABLE)
    grip = ros.publisher(Float64, 'gripper/command', RELIABLE)
    ros.wait_for_subscribers(pub)
    ros.wait_for_subscribers(grip)
    episode = tasks.episode(7, 'lift')
    status = json.loads(task.wait_for(1)[-1].data)
    assert {k: status[k] for k in ('task', 'object', 'instruction', 'seed')} == \
        {'task': 'lift', 'object': episode.object, 'instruction': episode.instruction, 'seed': 7}
    assert status['success'] is False and status['time_to_success'] is None
    assert status['time_since_reset'] > 0
    target = np.array(status['object_position'])  # the named object's
    go_to(ros, pub, poses, [target[0], target[1], 0.10])
    go_to(ros, pub, poses, [target[0], target[1], 0.02])
    for _ in range(5):
        grip.publish(Float64(data=0.0))
        time.sleep(0.1)
    assert not lifted.wait_for(1)[-1].data
    go_to(ros, pub, poses, [target[0], target[1], 0.15])
    wait_until(lambda: lifted.messages[-1].data, 2.0, message='object_lifted true')
    status = wait_until(lambda: (m := json.loads(task.messages[-1].data))['success'] and m, 2.0,
                        message='success on sim/task')
    assert status['object_height'] > 0.08 and status['object_position'][2] > 0.1
    assert 0 < status['time_to_success'] <= status['time_since_reset']
    # seed and task change at run time and take effect at the next reset.
    refused = set_parameters(ros, Parameter('task', Parameter.Type.STRING, 'push'))
    assert not refused[0].successful and 'reach, lift' in refused[0].reason
    assert all(r.successful for r in set_parameters(
        ros, Parameter('seed', Parameter.Type.INTEGER, 8),
        Parameter('task', Parameter.Type.STRING, 'reach')))
    time.sleep(0.3)
    assert json.loads(task.messages[-1].data)['seed'] == 7, 'not before the reset'
    reply = ros.call(Trigger, 'sim_arm/reset', Trigger.Request())
    assert reply.success and tasks.episode(8).instruction in reply.message
    status = wait_until(lambda: (m := json.loads(task.messages[-1].data))['seed'] == 8 and m,
                        2.0, message='the seed 8 episode on sim/task')
    assert (status['task'], status['object']) == ('reach', tasks.episode(8).object)
    assert status['success'] is False and status['time_to_success'] is None
    assert status['object_position'][:2] == pytest.approx(
        tasks.object_layout(8)[tasks.scene_object(status['object']).body][:2], abs=1e-4)
    wait_until(lambda: not lifted.messages[-1].data, 2.0, message='object_lifted false')
    assert np.allclose(latest_position(poses, after=time.monotonic()), HOME_POSITION, atol=0.002)


@pytest.mark.dds
def test_out_of_range_parameter_exits_naming_it(launch):
    sim = launch('sim_arm', '--ros-args', '-p', 'camera_rate_hz:=-1.0')
    assert sim.wait_exit(timeout=30.0) == 1, sim.output()
    out = sim.output()
    assert "'camera_rate_hz'" in out and '0 < rate <= 60' in out, out


@pytest.mark.dds
def test_publish_clock_publishes_advancing_sim_time(ros, launch):
    clock = ros.subscribe(Clock, '/clock', QoSProfile(depth=10,
                                                      reliability=ReliabilityPolicy.BEST_EFFORT))
    images = ros.subscribe(Image, 'camera/image_raw', qos_profile_sensor_data)
    start_sim(launch, 'publish_clock:=true')
    clock.wait_for(10)
    images.wait_for(3)
    first = clock.messages[-1].clock
    time.sleep(1.0)
    last = clock.messages[-1].clock
    advanced = (last.sec - first.sec) + (last.nanosec - first.nanosec) * 1e-9
    assert 0.5 < advanced < 1.1, advanced
    stamp = images.messages[-1].header.stamp
    assert stamp.sec < 100, 'images are stamped with sim time, which starts at 0'


# ---------------------------------------------------------------- with arm_bridge
@pytest.mark.dds
def test_arm_bridge_deltas_move_by_the_clamped_step_and_enable_false_stops(ros, launch):
    poses = ros.subscribe(PoseStamped, 'ee_pose', STATE)
    diags = ros.subscribe(DiagnosticArray, '/diagnostics', RELIABLE)
    start_sim(launch, f'twist_timeout:={TWIST_TIMEOUT}')  # arm_bridge ends each step with zeros
    # 5 cm steps over 1 s: 5 cm/s keeps the gripper well inside the sim's 1.5 cm lead limit, and
    # leaves a scheduling hiccup of a few tenths of a second inside the 10 % (see four_steps).
    bridge = launch('arm_bridge', '--ros-args', '-p', 'output_mode:=servo_twist',
                    '-p', 'max_step_translation:=0.05', '-p', 'step_duration:=1.0',
                    '-p', 'command_timeout:=1.5')  # a stream never outlives command_timeout
    bridge.wait_for_output('ee_pose received', timeout=30.0)
    deltas = ros.publisher(PoseStamped, 'vla/ee_delta', RELIABLE)
    handshake(deltas, lambda: pose_msg(ros, [0.0, 0.0, 0.0]), diags, 'accepted', 'arm_bridge')
    enable = ros.node.create_client(SetBool, 'arm_bridge/enable')
    assert enable.wait_for_service(timeout_sec=15.0)
    time.sleep(0.3)  # the zero steps run out

    def four_steps(sign):
        """Send 4 deltas of 8 cm along x (clamped to 5 cm); return the measured motion."""
        start = latest_position(poses, after=time.monotonic())
        for _ in range(4):
            deltas.publish(pose_msg(ros, [sign * 0.08, 0.0, 0.0]))
            time.sleep(1.2)  # > step_duration: each step runs out before the next
        return start, latest_position(poses, after=time.monotonic()) - start

    # A velocity stream is exposed to scheduling hiccups of the three processes on this 2-core
    # VM (0.1-0.3 s now and then): a systematic error shows on both attempts, a hiccup on one.
    start, moved = four_steps(+1)
    if moved[0] != pytest.approx(4 * 0.05, rel=0.1):
        print(f'first attempt moved {moved}; trying back along -x')
        start, moved = four_steps(-1)
        moved = -moved
    assert moved[0] == pytest.approx(4 * 0.05, rel=0.1), moved
    assert np.all(np.abs(moved[1:]) < 0.005), moved
    moved = latest_position(poses, after=time.monotonic()) - start
    time.sleep(0.3)
    stopped = latest_position(poses, after=time.monotonic())
    assert np.linalg.norm(stopped - start - moved) < 0.002, 'no deltas: no motion'
    deltas.publish(pose_msg(ros, [0.08, 0.0, 0.0]))
    time.sleep(0.1)  # early in the 1 s step: moving at 0.05 m/s
    reply = enable.call_async(SetBool.Request(data=False))
    wait_until(reply.done, 5.0, message='arm_bridge/enable to answer')
    assert reply.result().success
    time.sleep(0.2)  # the zero twist lands and the weld settles
    at_disable = latest_position(poses, after=time.monotonic())
    time.sleep(0.5)
    after = latest_position(poses, after=time.monotonic())
    assert np.linalg.norm(after - at_disable) < 0.004, (at_disable, after)
    assert after[0] - stopped[0] < 0.015, 'the step in flight was cut short'
