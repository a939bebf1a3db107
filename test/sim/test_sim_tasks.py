"""The sim's tasks and scripted expert, ROS-free: seeded episodes, success geometry, rollouts."""

import math

import numpy as np
import pytest

from vla_ros.control.safety import SafetyLimits
from vla_ros.sim import tasks
from vla_ros.sim.arm import HOME_POSITION, SimArm, WORKSPACE_HIGH, WORKSPACE_LOW
from vla_ros.sim.expert import grasp_yaw, rollout, ScriptedExpert

IDENTITY = np.eye(3)


def rot_x(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def scene(tip, ee_rotation=IDENTITY, body='cube', centre=(0.4, 0.0, 0.02), rotation=IDENTITY):
    """Return a SceneState with the fingertip midpoint at ``tip`` and one object placed."""
    ee_rotation = np.asarray(ee_rotation, dtype=np.float64)
    ee = np.asarray(tip, dtype=np.float64) + tasks.FINGERTIP_OFFSET * ee_rotation[:, 2]
    positions = {o.body: np.array([0.0, 0.3, o.half_height]) for o in tasks.OBJECTS}
    rotations = {o.body: IDENTITY for o in tasks.OBJECTS}
    positions[body], rotations[body] = np.asarray(centre, dtype=np.float64), rotation
    return tasks.SceneState(ee, ee_rotation, positions, rotations)


# ---------------------------------------------------------------- episodes
def test_episodes_are_deterministic_and_name_the_object_in_the_instruction():
    assert tasks.episode(5, 'lift') == tasks.episode(5, 'lift')
    assert tasks.object_layout(5) == tasks.object_layout(5) == tasks.object_layout(3)
    assert tasks.object_layout(5) != tasks.object_layout(6)  # the next block of three
    for seed in range(6):
        reach, lift = tasks.episode(seed, 'reach'), tasks.episode(seed, 'lift')
        assert reach.object == lift.object and reach.seed == seed
        assert reach.instruction == f'reach the {reach.object}'
        assert lift.instruction == f'pick up the {lift.object}'
    assert tasks.episode(0).task == 'reach'
    with pytest.raises(ValueError, match='reach, lift'):
        tasks.episode(0, 'push')
    with pytest.raises(ValueError, match='red cube, green cylinder, blue block'):
        tasks.scene_object('yellow ball')


def test_every_object_is_the_target_once_in_every_three_seeds_of_one_layout():
    targets = [tasks.episode(seed).object for seed in range(60)]
    for block in range(0, 60, 3):
        assert sorted(targets[block:block + 3]) == sorted(tasks.OBJECT_NAMES)
    assert len(set(zip(targets[0::3], targets[1::3]))) > 3, 'the order varies between blocks'


def test_objects_are_placed_apart_inside_the_workspaces():
    bridge = SafetyLimits()
    for seed in range(300):
        layout = tasks.object_layout(seed)
        assert sorted(layout) == sorted(o.body for o in tasks.OBJECTS)
        xy = np.array([(x, y) for x, y, _ in layout.values()])
        assert np.all(xy >= tasks.PLACE_LOW) and np.all(xy <= tasks.PLACE_HIGH)
        gaps = [np.linalg.norm(a - b) for i, a in enumerate(xy) for b in xy[i + 1:]]
        assert min(gaps) >= tasks.MIN_SEPARATION
    for low, high in ((WORKSPACE_LOW, WORKSPACE_HIGH),
                      (bridge.workspace_min, bridge.workspace_max)):
        # The whole object stays in x/y reach of the gripper, with room for the fingers.
        assert np.all(np.array(tasks.PLACE_LOW) - 0.05 >= low[:2])
        assert np.all(np.array(tasks.PLACE_HIGH) + 0.05 <= high[:2])


def test_objects_match_the_scene_and_are_seen_by_the_scene_camera():
    import mujoco
    arm = SimArm()
    model = arm.model
    colours = {'red': 0, 'green': 1, 'blue': 2}
    for obj in tasks.OBJECTS:
        geom = model.geom(obj.body)
        assert np.allclose(geom.size[:len(obj.size)], obj.size)
        assert obj.shape == ('box' if geom.type[0] == mujoco.mjtGeom.mjGEOM_BOX else 'cylinder')
        assert np.argmax(geom.rgba[:3]) == colours[obj.name.split()[0]], obj.name
    renderer = mujoco.Renderer(model, 120, 160)
    renderer.enable_segmentation_rendering()
    try:
        for seed in range(8):
            arm.reset(seed)
            renderer.update_scene(arm.data, camera='scene_camera')
            ids = renderer.render()  # (H, W, 2): object id, object type
            for obj in tasks.OBJECTS:
                seen = np.sum((ids[..., 0] == model.geom(obj.body).id)
                              & (ids[..., 1] == mujoco.mjtObj.mjOBJ_GEOM))
                assert seen >= 15, f'seed {seed}: {obj.name} covers {seen} pixels'
            state = arm.scene_state()
            for name in tasks.OBJECT_NAMES:
                assert state.object_bounds(name)[0] == pytest.approx(0.0, abs=1e-3)
    finally:
        renderer.close()


# ---------------------------------------------------------------- success
@pytest.mark.parametrize('tip, expected', [
    ((0.4, 0.0, 0.0401), True),  # at the top (0.04)
    ((0.4, 0.0, 0.0699), True),  # 3 cm above
    ((0.4, 0.0, 0.0702), False),
    ((0.4, 0.0, 0.0398), False),  # below the top: pushing into it
    ((0.4299, 0.0, 0.05), True),  # 3 cm aside
    ((0.4, -0.0302, 0.05), False),
    ((0.4212, 0.0212, 0.05), True),  # 3 cm diagonally
])
def test_reach_is_the_fingertips_within_3_cm_above_the_object(tip, expected):
    assert tasks.success('reach', 'red cube', scene(tip)) is expected


def test_reach_uses_the_fingertips_not_the_wrist_and_the_object_top():
    tilted = rot_y(math.pi / 2)  # fingers pointing along -x: the tips 1.5 cm further in -x
    state = scene((0.4, 0.0, 0.05), ee_rotation=tilted)
    assert np.allclose(state.fingertip_midpoint(), (0.4, 0.0, 0.05))
    assert np.allclose(state.ee_position, (0.4 + tasks.FINGERTIP_OFFSET, 0.0, 0.05))
    assert tasks.success('reach', 'red cube', state)
    # A cylinder lying on its side is as high as its diameter.
    lying = scene((0.3, 0.0, 0.04), body='cylinder', centre=(0.3, 0.0, 0.018),
                  rotation=rot_x(math.pi / 2))
    assert lying.object_bounds('green cylinder') == pytest.approx((0.0, 0.036))
    assert tasks.success('reach', 'green cylinder', lying)
    assert not tasks.success('reach', 'red cube', lying), 'another object is not the target'


@pytest.mark.parametrize('bottom, expected', [(0.0501, True), (0.0498, False), (0.2, True),
                                              (0.0, False)])
def test_lift_is_the_object_bottom_5_cm_off_the_table(bottom, expected):
    state = scene((0.4, 0.0, 0.3), centre=(0.4, 0.0, bottom + 0.02))
    assert tasks.success('lift', 'red cube', state) is expected


@pytest.mark.parametrize('horizontal, height, miss', [
    (0.01, 0.02, 0.0), (0.03, 0.0, 0.0), (0.07, 0.02, 0.04), (0.0, 0.08, 0.05),
    (0.0, -0.01, 0.01), (0.06, 0.07, 0.05)])
def test_reach_miss_is_the_distance_from_the_success_region(horizontal, height, miss):
    assert tasks.reach_miss(horizontal, height) == pytest.approx(miss)


def test_lift_judges_the_lowest_point_of_a_tilted_object():
    # A cube on an edge: its lowest point is 0.02 * sqrt(2) below the centre.
    state = scene((0.4, 0.0, 0.3), centre=(0.4, 0.0, 0.05 + 0.02 * math.sqrt(2) - 1e-4),
                  rotation=rot_x(math.pi / 4))
    assert state.object_bounds('red cube')[0] == pytest.approx(0.05 - 1e-4)
    assert not tasks.success('lift', 'red cube', state)
    with pytest.raises(ValueError, match='unknown task'):
        tasks.success('push', 'red cube', state)


def test_monitor_latches_success_and_its_time():
    monitor = tasks.EpisodeMonitor(tasks.Episode('reach', 'red cube', 'reach the red cube', 3))
    far, there = scene((0.3, 0.1, 0.2)), scene((0.4, 0.0, 0.05))
    status = monitor.status(0.5, far)
    assert status['success'] is False and status['time_to_success'] is None
    assert monitor.update(1.25, there) and not monitor.update(1.5, far)
    status = monitor.status(2.0, far)
    assert status['success'] is True and status['success_now'] is False
    assert status['time_to_success'] == 1.25 and status['time_since_reset'] == 2.0
    assert status['object_position'] == [0.4, 0.0, 0.02] and status['object_top'] == 0.04
    assert {'task', 'object', 'instruction', 'seed', 'object_yaw', 'object_height',
            'object_lifted', 'fingertip_distance'} <= set(status)


def test_the_start_spread_moves_each_seeds_start_within_it_and_zero_starts_at_home():
    assert np.array_equal(tasks.start_offset(5, 0.0), np.zeros(3))
    offsets = np.array([tasks.start_offset(seed, 0.08) for seed in range(60)])
    assert np.abs(offsets).max() <= 0.08 and np.abs(offsets).max() > 0.06
    assert len({tuple(o) for o in offsets}) == 60  # every seed its own start, block or not
    assert np.array_equal(tasks.start_offset(7, 0.08), offsets[7])
    with pytest.raises(ValueError, match=r'start spread must be in \[0, 0.1\]'):
        tasks.start_offset(0, 0.2)
    arm = SimArm(start_spread=0.08)
    arm.reset(7)
    assert np.allclose(arm.ee_pose()[0], HOME_POSITION + offsets[7], atol=1e-6)
    low, high = HOME_POSITION - 0.1, HOME_POSITION + 0.1
    assert np.all(low >= WORKSPACE_LOW) and np.all(high <= WORKSPACE_HIGH)


# ---------------------------------------------------------------- the expert
@pytest.mark.parametrize('spread', [0.0, 0.08])
def test_expert_reaches_in_seeded_episodes_smoothly_from_above(spread):
    arm = SimArm(twist_timeout=0.15, start_spread=spread)
    for seed in range(12):
        result = rollout(seed, 'reach', seconds=8.0, arm=arm)
        assert result['success'], result['episode']
        actions = result['actions']
        # Speed-limited (0.15 m/s at 10 Hz) and smooth; the orientation is held.
        assert np.linalg.norm(actions[:, :3], axis=1).max() <= 0.015 + 1e-9
        assert np.linalg.norm(np.diff(actions[:, :3], axis=0), axis=1).max() < 0.006
        assert np.abs(actions[:, 3:6]).max() < 0.01 and np.all(actions[:, 6] == 1.0)
        # From above: the fingertips come down over the object, never beside it at its height.
        for state in result['states']:
            horizontal, height = tasks.reach_offset(result['episode'].object, state)
            assert horizontal <= 0.02 or height > 0.03, (seed, horizontal, height)


def test_expert_lifts_each_object():
    arm = SimArm(twist_timeout=0.15)
    lifted = set()
    for seed in range(3):
        result = rollout(seed, 'lift', seconds=8.0, arm=arm)
        assert result['success'], result['episode']
        lifted.add(result['episode'].object)
        actions = result['actions']
        assert np.abs(actions[:, :3]).max() <= 0.05 and np.abs(actions[:, 3:6]).max() <= 0.25
        assert set(actions[:, 6]) == {0.0, 1.0}
    assert lifted == set(tasks.OBJECT_NAMES)


def test_expert_turns_the_fingers_across_the_narrow_side():
    assert grasp_yaw('red cube', 1.0) == pytest.approx(1.0 - math.pi / 2)
    assert grasp_yaw('blue block', 2.0) == pytest.approx(2.0 - math.pi)
    assert grasp_yaw('green cylinder', 2.0) == 0.0
    with pytest.raises(ValueError, match='reach, lift'):
        ScriptedExpert('push', 'red cube')
