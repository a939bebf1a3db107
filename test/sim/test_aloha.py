"""The simulated ALOHA, ROS-free: scene, JTC-style controllers, transfer_cube's success, expert."""

import math

import numpy as np
import pytest

from vla_ros.control.joints import PRESETS
from vla_ros.control.trajectory import chunk_trajectory, Point, Trajectory
from vla_ros.sim import aloha
from vla_ros.sim.aloha_expert import expert_actions, Kinematics, LEFT_MEET, PERIOD, rollout

LEFT = 'left_arm_controller'
LEFT_JOINTS = aloha.CONTROLLERS[LEFT]
PERIOD_NS = int(PERIOD * 1e9)


@pytest.fixture(scope='module')
def sim():
    arm = aloha.SimAloha(width=32, height=24)
    yield arm
    arm.close()


@pytest.fixture
def fresh(sim):
    sim.reset(0)
    return sim


def chunk(sim, offsets, rows=25):
    """Return 25 rows from the left controller's targets now to ``offsets`` added to them."""
    start = np.array(sim.targets(LEFT_JOINTS))
    return start + np.linspace(0.0, 1.0, rows + 1)[1:, None] * np.asarray(offsets)[None, :]


OFFSETS = (0.3, -0.2, 0.25, 0.2, -0.3, 0.4, 0.02)  # rad per joint, m for left_finger


# ---------------------------------------------------------------- the scene
def test_the_scene_has_the_joints_actuators_and_cameras_of_the_interface(fresh):
    model = fresh.model
    names, positions, velocities = fresh.joint_state()
    assert names == list(aloha.JOINTS) and len(names) == 16
    assert len(positions) == len(velocities) == 16
    assert model.nu == 16 and model.opt.timestep == pytest.approx(0.002)
    assert LEFT_JOINTS == tuple(e.replace('gripper:', '') for e in PRESETS['aloha'][:7])
    assert aloha.CONTROLLERS['right_arm_controller'] == tuple(
        e.replace('gripper:', '') for e in PRESETS['aloha'][7:])
    cameras = {model.camera(i).name for i in range(model.ncam)}
    assert set(aloha.CAMERAS.values()) <= cameras
    # the start pose is the scene's keyframe, and it is what the actuators hold
    key = model.key_qpos[0]
    assert positions == pytest.approx([key[model.joint(n).qposadr[0]] for n in names])
    assert fresh.targets(names) == pytest.approx(positions)


def test_the_cube_starts_at_a_seeded_place_in_acts_range(sim):
    places = []
    for seed in range(10):
        sim.reset(seed)
        places.append(sim.cube_position())
        assert np.all(places[-1] >= aloha.CUBE_LOW) and np.all(places[-1] <= aloha.CUBE_HIGH)
    sim.reset(3)
    assert sim.cube_position() == pytest.approx(places[3])
    assert len({tuple(p) for p in places}) == 10


def test_a_missing_scene_names_make_setup(monkeypatch):
    monkeypatch.setattr(aloha, 'SCENE_FILE', 'no_such_scene.xml')
    with pytest.raises(aloha.SceneMissing, match='make setup.*pip install --no-deps gym-aloha'):
        aloha.scene_path()


# ---------------------------------------------------------------- JTC semantics
def test_a_trajectory_is_followed_at_its_rows_times(fresh):
    rows = chunk(fresh, OFFSETS)
    assert fresh.take(LEFT, chunk_trajectory(LEFT_JOINTS, rows, PERIOD)) == ''
    right_before = fresh.targets(aloha.CONTROLLERS['right_arm_controller'])
    errors = []
    for row in rows:
        fresh.step(PERIOD)
        # the command at a row's time is the row (JTC's linear interpolation hits it)...
        assert fresh.targets(LEFT_JOINTS) == pytest.approx(row, abs=1e-9)
        errors.append(np.abs(np.array(fresh.positions(LEFT_JOINTS)) - row))
    fresh.step(0.3)
    # ...and the arm follows it: the joints are near the rows at their times, then on the last
    errors = np.array(errors)
    assert errors[:, :6].max() < 0.1 and errors[:, 6].max() < 0.008  # rad; m (finger lag)
    assert fresh.positions(LEFT_JOINTS)[:3] == pytest.approx(rows[-1][:3], abs=0.02)
    # the mirrored finger, and the other arm untouched
    fingers = ['vx300s_left/left_finger', 'vx300s_left/right_finger']
    assert fresh.targets(fingers)[1] == -fresh.targets(fingers)[0]
    assert fresh.positions(fingers)[1] == pytest.approx(-fresh.positions(fingers)[0], abs=3e-3)
    assert fresh.targets(aloha.CONTROLLERS['right_arm_controller']) == right_before


def test_stamp_zero_starts_at_the_first_sample_and_a_stamp_later_waits(fresh):
    start = np.array(fresh.targets(LEFT_JOINTS))
    goal = start + np.array(OFFSETS)
    fresh.step(0.1)  # the time line moves on; stamp 0 still means "when it arrives"
    measured = np.array(fresh.positions(LEFT_JOINTS))  # where the motion starts from
    fresh.take(LEFT, Trajectory(LEFT_JOINTS, 0, (Point(tuple(goal), 10 * PERIOD_NS),)))
    fresh.run_steps(5 * PERIOD_NS // fresh.step_ns)
    assert fresh.targets(LEFT_JOINTS) == pytest.approx((measured + goal) / 2, abs=1e-9)
    fresh.reset(0)
    later = fresh.now_ns + 10 * PERIOD_NS
    fresh.take(LEFT, Trajectory(LEFT_JOINTS, later, (Point(tuple(goal), 10 * PERIOD_NS),)))
    fresh.run_steps(10 * PERIOD_NS // fresh.step_ns)  # at its start: half way from the take
    assert fresh.targets(LEFT_JOINTS) == pytest.approx(start + 0.5 * np.array(OFFSETS), abs=1e-9)
    fresh.step(10 * PERIOD)
    assert fresh.targets(LEFT_JOINTS) == pytest.approx(goal, abs=1e-9)


def test_a_new_trajectory_replaces_the_old_one(fresh):
    start = np.array(fresh.targets(LEFT_JOINTS))
    fresh.take(LEFT, chunk_trajectory(LEFT_JOINTS, chunk(fresh, OFFSETS), PERIOD))
    fresh.step(5 * PERIOD)
    other = start - 0.5 * np.array(OFFSETS)
    other[6] = start[6]
    fresh.take(LEFT, chunk_trajectory(LEFT_JOINTS, [other], PERIOD))
    fresh.step(PERIOD)
    assert fresh.targets(LEFT_JOINTS) == pytest.approx(other, abs=1e-9)
    fresh.step(30 * PERIOD)  # the first trajectory's rows never come back
    assert fresh.targets(LEFT_JOINTS) == pytest.approx(other, abs=1e-9)


def test_names_in_another_order_command_their_own_joints(fresh):
    goal = np.array(fresh.targets(LEFT_JOINTS)) + np.array(OFFSETS)
    order = list(reversed(range(7)))
    fresh.take(LEFT, chunk_trajectory([LEFT_JOINTS[i] for i in order], [goal[order]], PERIOD))
    fresh.step(PERIOD)
    assert fresh.targets(LEFT_JOINTS) == pytest.approx(goal, abs=1e-9)


@pytest.mark.parametrize('case', ['unknown joint', 'missing joint', 'not increasing', 'nan',
                                  'unknown controller', 'ended in the past'])
def test_what_jtc_refuses_changes_nothing(fresh, case):
    before = fresh.targets(aloha.JOINTS)
    names, rows, stamp, controller = list(LEFT_JOINTS), chunk(fresh, OFFSETS, 3), 0, LEFT
    if case == 'unknown joint':
        names[0] = 'vx300s_left/no_such_joint'
    elif case == 'missing joint':
        names, rows = names[:6], rows[:, :6]
    elif case == 'nan':
        rows[1, 2] = math.nan
    elif case == 'unknown controller':
        controller = 'gripper_controller'
    elif case == 'ended in the past':
        fresh.step(1.0)
        stamp = fresh.now_ns - int(0.5e9)
    trajectory = chunk_trajectory(names, rows, PERIOD, stamp)
    if case == 'not increasing':
        points = list(trajectory.points)
        points[2] = Point(points[2].positions, points[1].time_from_start_ns)
        trajectory = Trajectory(trajectory.joint_names, 0, tuple(points))
    assert fresh.take(controller, trajectory) != ''
    fresh.step(0.2)
    assert fresh.targets(aloha.JOINTS) == before


# ---------------------------------------------------------------- success
def test_transfer_stage_is_acts_reward_from_contacts():
    def pairs(*names):
        return {frozenset(('red_box', n)) for n in names}
    left, right = aloha.finger_geoms('left'), aloha.finger_geoms('right')
    assert aloha.transfer_stage(pairs('table')) == 0
    assert aloha.transfer_stage(pairs('table', right[0])) == 1
    assert aloha.transfer_stage(pairs(right[1])) == 2
    assert aloha.transfer_stage(pairs('table', right[0], left[0])) == 3
    assert aloha.transfer_stage(pairs(right[0], left[1])) == 4
    assert aloha.transfer_stage(pairs(left[0])) == 4
    assert aloha.transfer_stage({frozenset((left[0], 'table'))}) == 0  # the cube is not in it


def grip_in_air(sim, at):
    """Put the cube at ``at`` between the left gripper's closed fingers; return the status."""
    import mujoco  # after vla_ros.sim, which picks MuJoCo's OpenGL back end (MUJOCO_GL)
    kin = Kinematics(sim.model)
    q = kin.solve('left', sim.positions(aloha.arm_joints('left')), np.asarray(at), LEFT_MEET)
    for name, value in zip(aloha.arm_joints('left'), q):
        sim.data.qpos[sim.model.joint(name).qposadr[0]] = value
    position, _ = kin.tool('left', q)
    cube = sim.model.body(aloha.CUBE_BODY).jntadr[0]
    adr = sim.model.jnt_qposadr[cube]
    sim.data.qpos[adr:adr + 3] = position
    sim.data.qpos[sim.model.joint('vx300s_left/left_finger').qposadr[0]] = 0.021  # closed
    sim.data.qpos[sim.model.joint('vx300s_left/right_finger').qposadr[0]] = -0.021
    mujoco.mj_forward(sim.model, sim.data)
    return sim.task_status()


def test_the_cube_held_up_in_the_left_gripper_is_success_and_on_the_table_is_not(fresh):
    fresh.step(0.5)  # the cube falls onto the table
    status = fresh.task_status()
    assert (status['success'], status['stage']) == (False, 0)
    assert status['cube_position'][2] == pytest.approx(0.02, abs=1e-3)
    status = grip_in_air(fresh, (-0.05, 0.5, 0.2))
    assert (status['success'], status['success_now'], status['stage']) == (True, True, 4)
    assert status['time_to_success'] == pytest.approx(0.5)
    fresh.reset(0)
    status = grip_in_air(fresh, (0.0, 0.45, 0.019))  # the same grip, the cube on the table
    assert status['stage'] == 3 and not status['success']


# ---------------------------------------------------------------- the expert
def test_the_experts_plan_is_smooth_and_in_acts_layout(fresh):
    fresh.step(0.5)
    actions = expert_actions(fresh)
    assert actions.shape == (400, 14)
    grippers = actions[:, [6, 13]]
    assert grippers.min() >= 0.0 and grippers.max() <= 1.0
    steps = np.abs(np.diff(actions, axis=0))
    assert steps.max() < 0.06  # rad (or gripper fraction) per 20 ms step: <= 3 rad/s
    assert np.abs(np.diff(actions, 2, axis=0)).max() < 0.01  # no jumps in speed


@pytest.mark.slow
def test_the_expert_transfers_the_cube(sim):
    status = rollout(sim, 5)
    assert status['success'] and status['success_now']
    assert status['cube_position'][0] < -0.05  # carried off to the left arm's side


def test_the_three_cameras_show_three_views(fresh):
    images = fresh.render()
    assert [image.shape for image in images] == [(24, 32, 3)] * 3
    assert all(image.std() > 5 for image in images), 'a scene, not one colour'
    top, left, right = (image.astype(np.int16) for image in images)
    # (the wrist views mirror each other at the symmetric start pose)
    assert np.abs(top - left).mean() > 5 and np.abs(top - right).mean() > 5
