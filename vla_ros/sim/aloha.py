"""
The simulated ALOHA (ROS-free): gym-aloha's bimanual ViperX scene, driven like ros2_control.

The scene is gym-aloha's ``bimanual_viperx_transfer_cube.xml`` (the MJCF ACT and LeRobot's ALOHA
simulation use), read from the installed package's ``assets`` folder without importing it (its
``__init__`` needs gymnasium). Each arm has six joints and two finger slides, all driven by
MuJoCo position actuators; physics runs at the MJCF timestep (2 ms).

Control is JTC's (``vla_ros.control.trajectory``): one controller per arm (``CONTROLLERS``:
``left_arm_controller``, ``right_arm_controller``), each commanding the arm's six joints and its
``left_finger`` (metres); the simulator mirrors ``right_finger = -left_finger`` as the real
gripper's linkage does. ``take`` checks a trajectory with ``jtc_refusal`` (plus finite
positions, which JTC does not check but a simulator cannot follow) and hands it to that
controller's ``Follower``; every physics step samples the followers at the state's time and
sets the actuators' targets (clipped to their ranges by MuJoCo). Without a trajectory a
controller holds its last target (the start pose after a reset).

Time: ``now_ns`` is the caller's time line (the node clock, or sim time), the time of the state,
advanced by one timestep per physics step and unchanged by ``reset``; trajectory stamps are read
on it. ``data.time`` is physics time since the last reset.

The task ``transfer_cube`` (ACT's): the red cube (``box``, geom ``red_box``) starts at a seeded
place, x in [0.0, 0.2], y in [0.4, 0.6] (drawn as gym-aloha's ``sample_box_pose`` draws it, so a
seed gives the cube gym-aloha gives), with the arms at the scene keyframe's pose. ACT's reward
stages are read from the contacts (``transfer_stage``): 1 the right gripper touches the cube,
2 and it is off the table, 3 the left gripper touches it, 4 the left gripper touches it and it
is off the table = success. ``task_status`` is the ``sim/task`` JSON object.
"""

import importlib.util
import math
from pathlib import Path

import mujoco
import numpy as np

from vla_ros.control.joints import ALOHA_ARM, ALOHA_GRIPPER, GripperRange
from vla_ros.control.trajectory import Follower, jtc_refusal
from vla_ros.sim import loop
from vla_ros.sim.camera import SimCamera, snapshot
from vla_ros.sim.tasks import ALOHA_TASKS as TASKS

SCENE_FILE = 'bimanual_viperx_transfer_cube.xml'
SIDES = ('left', 'right')
CUBE_LOW = (0.0, 0.4, 0.05)  # ACT's sample_box_pose range (x, y, z), m
CUBE_HIGH = (0.2, 0.6, 0.05)
CUBE_BODY, CUBE_GEOM, TABLE_GEOM = 'box', 'red_box', 'table'
SUCCESS_STAGE = 4
GRIPPER = GripperRange(*ALOHA_GRIPPER)  # left_finger (m) at 0 closed .. 1 open, ACT's
# sim_arm's image topics for robot aloha -> the MJCF cameras they show.
CAMERAS = {'cam_high': 'top', 'cam_left_wrist': 'left_wrist', 'cam_right_wrist': 'right_wrist'}


def arm_joints(side):
    """Return one arm's six joint names (MJCF), waist first."""
    return tuple(f'vx300s_{side}/{joint}' for joint in ALOHA_ARM)


def finger_geoms(side):
    """Return the two finger geoms of one arm's gripper."""
    return (f'vx300s_{side}/10_left_gripper_finger', f'vx300s_{side}/10_right_gripper_finger')


CONTROLLERS = {f'{side}_arm_controller': arm_joints(side) + (f'vx300s_{side}/left_finger',)
               for side in SIDES}
# Every joint of the robot by its MJCF name, as joint_states reports them.
JOINTS = tuple(name for side in SIDES for name in arm_joints(side) + (
    f'vx300s_{side}/left_finger', f'vx300s_{side}/right_finger'))
MIRRORED = {f'vx300s_{side}/left_finger': f'vx300s_{side}/right_finger' for side in SIDES}


class SceneMissing(RuntimeError):
    """gym-aloha's assets are not installed; the text says how to install them."""


def scene_path():
    """Return the path of gym-aloha's transfer-cube MJCF; raise ``SceneMissing`` naming the fix."""
    spec = importlib.util.find_spec('gym_aloha')
    folders = list(spec.submodule_search_locations or ()) if spec else []
    for folder in folders:
        path = Path(folder) / 'assets' / SCENE_FILE
        if path.is_file():
            return path
    raise SceneMissing(
        f'the ALOHA scene ({SCENE_FILE} of the gym-aloha package) is not installed: run '
        "'make setup', or 'pip install --no-deps gym-aloha==0.1.5' in this environment "
        '(only its MJCF and meshes are used)')


def cube_start(seed):
    """Return the cube's seeded start position (x, y, z), as gym-aloha's ``sample_box_pose``."""
    rng = np.random.RandomState(int(seed))
    return rng.uniform(np.array(CUBE_LOW), np.array(CUBE_HIGH))


def transfer_stage(contacts):
    """
    Return ACT's transfer_cube reward stage (0 .. 4) from ``contacts``.

    ``contacts``: a set of frozensets of two geom names (``contact_pairs``). 4 (success): the left
    gripper touches the cube and the cube does not touch the table.
    """
    def touches(geoms):
        return any(frozenset((CUBE_GEOM, g)) in contacts for g in geoms)

    on_table = frozenset((CUBE_GEOM, TABLE_GEOM)) in contacts
    stage = 0
    if touches(finger_geoms('right')):
        stage = 1 if on_table else 2
    if touches(finger_geoms('left')):
        stage = 3 if on_table else 4
    return stage


def contact_pairs(model, data):
    """Return the geom name pairs in contact now, each a frozenset of two names."""
    return {frozenset((model.geom(c.geom1).name, model.geom(c.geom2).name))
            for c in data.contact[:data.ncon]}


class SimAloha:
    """The bimanual ViperX scene with JTC-style controllers; see the module docstring."""

    def __init__(self, width=640, height=480, seed=0, task='transfer_cube', now_ns=0):
        if task not in TASKS:
            raise ValueError(f'unknown ALOHA task {task!r}; the tasks: {", ".join(TASKS)}')
        self.model = mujoco.MjModel.from_xml_path(str(scene_path()))
        vis = self.model.vis.global_
        vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
        # No shadow map, as sim_arm's own scene (scene.xml): on a CPU (llvmpipe) the MJCF's
        # 4096-pixel map took 450-570 ms of the three cameras' render, 80 % of it, so the
        # newest image was older than vla_node's max_image_age at 25 Hz.
        self.model.vis.quality.shadowsize = 0
        self.data = mujoco.MjData(self.model)
        self.width, self.height = int(width), int(height)
        self.task, self.seed = task, int(seed)
        self.timestep = float(self.model.opt.timestep)
        self.step_ns = int(round(self.timestep * 1e9))
        self.now_ns = int(now_ns)
        model = self.model
        self._qpos = {n: int(model.jnt_qposadr[model.joint(n).id]) for n in JOINTS}
        self._dof = {n: int(model.jnt_dofadr[model.joint(n).id]) for n in JOINTS}
        self._actuator = {}
        for i in range(model.nu):
            self._actuator[model.joint(model.actuator_trnid[i][0]).name] = i
        missing = [n for n in JOINTS if n not in self._actuator]
        if missing:
            raise RuntimeError(f'{SCENE_FILE} has no position actuator for {missing}')
        self._cube_qpos = int(model.jnt_qposadr[model.body(CUBE_BODY).jntadr[0]])
        self._cube_body = model.body(CUBE_BODY).id
        self._start = {n: float(model.key_qpos[0][self._qpos[n]]) for n in JOINTS}
        self._followers = {c: Follower() for c in CONTROLLERS}
        self._camera = None
        self._pending = 0.0
        self.reset()

    # ---------------------------------------------------------------- episodes
    @property
    def time(self):
        """Physics time in seconds since the last reset."""
        return float(self.data.time)

    def reset(self, seed=None):
        """Start an episode: arms at the keyframe pose (held), the cube at the seed's place."""
        if seed is not None:
            self.seed = int(seed)
        mujoco.mj_resetData(self.model, self.data)
        for name, value in self._start.items():
            self.data.qpos[self._qpos[name]] = value
            self.data.ctrl[self._actuator[name]] = value
        adr = self._cube_qpos
        self.data.qpos[adr:adr + 7] = [*cube_start(self.seed), 1.0, 0.0, 0.0, 0.0]
        for follower in self._followers.values():
            follower.take(None)
        self._first_success = None
        self._pending = 0.0
        mujoco.mj_forward(self.model, self.data)

    def cube_position(self):
        """Return the cube's centre (x, y, z), m, in the world frame."""
        return self.data.xpos[self._cube_body].copy()

    def contacts(self):
        """Return the geom name pairs in contact now (frozensets of two names)."""
        return contact_pairs(self.model, self.data)

    def stage(self):
        """Return ACT's reward stage of the state now (``transfer_stage``)."""
        return transfer_stage(self.contacts())

    def update_success(self):
        """Return the stage now (``transfer_stage``); latch success the first time it holds."""
        stage = self.stage()
        if stage >= SUCCESS_STAGE and self._first_success is None:
            self._first_success = self.time
        return stage

    def task_status(self):
        """Return the ``sim/task`` object: the episode, success (latched), the cube, the stage."""
        stage = self.update_success()
        return {
            'task': self.task, 'seed': self.seed, 'robot': 'aloha',
            'success': self._first_success is not None,
            'success_now': stage >= SUCCESS_STAGE,
            'stage': stage, 'max_stage': SUCCESS_STAGE,
            'time_since_reset': self.time,
            'time_to_success': self._first_success,
            'cube_position': [float(v) for v in self.cube_position()],
        }

    # ---------------------------------------------------------------- joints
    def joint_state(self):
        """Return (names, positions, velocities) of every joint by MJCF name (``JOINTS``)."""
        qpos, qvel = self.data.qpos, self.data.qvel
        return (list(JOINTS), [float(qpos[self._qpos[n]]) for n in JOINTS],
                [float(qvel[self._dof[n]]) for n in JOINTS])

    def positions(self, names):
        """Return the measured positions of ``names`` (MJCF joint names)."""
        return [float(self.data.qpos[self._qpos[n]]) for n in names]

    def targets(self, names):
        """Return the position actuators' current targets for ``names``."""
        return [float(self.data.ctrl[self._actuator[n]]) for n in names]

    # ---------------------------------------------------------------- commands
    def take(self, controller, trajectory):
        """
        Follow ``trajectory`` (``control.trajectory.Trajectory``) on ``controller`` from now on.

        Return '' when taken, else why it was refused (JTC's rules at ``now_ns``, or a position
        that is not finite); a refused trajectory changes nothing.
        """
        joints = CONTROLLERS.get(controller)
        if joints is None:
            return f'no controller {controller!r}; the controllers: {", ".join(CONTROLLERS)}'
        why = jtc_refusal(trajectory, joints, self.now_ns)
        if why:
            return why
        for i, point in enumerate(trajectory.points):
            if not all(math.isfinite(v) for v in point.positions):
                return f'point {i} has a NaN or inf position'
        follower = self._followers[controller]
        follower.take(trajectory)
        # Sampled once now: stamp 0 means the state's time when it arrives, and the motion to
        # the first point starts from the positions then.
        follower.sample(self.now_ns, self.positions(trajectory.joint_names))
        return ''

    def command_positions(self, names, positions):
        """Set the targets of ``names`` at once, no trajectory (fingers mirrored); tests, tools."""
        for name, value in zip(names, positions):
            self._set_target(name, float(value))

    def hold(self):
        """Drop every trajectory: each joint keeps its current target."""
        for follower in self._followers.values():
            follower.take(None)

    def _set_target(self, name, value):
        self.data.ctrl[self._actuator[name]] = value
        if name in MIRRORED:
            self.data.ctrl[self._actuator[MIRRORED[name]]] = -value

    def _follow(self):
        for follower in self._followers.values():
            trajectory = follower.trajectory
            if trajectory is None:
                continue
            names = trajectory.joint_names
            targets = follower.sample(self.now_ns + self.step_ns, self.positions(names))
            for name, value in zip(names, targets):
                self._set_target(name, value)

    # ---------------------------------------------------------------- physics
    def step(self, duration):
        """Advance the physics by ``duration`` seconds (whole timesteps; the rest carries over)."""
        steps, self._pending = loop.whole_steps(self._pending, duration, self.timestep)
        return self.run_steps(steps)

    def run_steps(self, count):
        """
        Advance ``count`` timesteps; the targets of a step are the trajectories at its end.

        So the command at a point's time is that point (a stamp-0 trajectory starts at
        ``take``).
        """
        for _ in range(int(count)):
            self._follow()
            mujoco.mj_step(self.model, self.data)
            self.now_ns += self.step_ns
        return int(count)

    def step_to(self, now_ns):
        """Advance whole timesteps up to ``now_ns`` on the time line (none if it is behind)."""
        return self.run_steps(max(0, (int(now_ns) - self.now_ns) // self.step_ns))

    # ---------------------------------------------------------------- cameras
    def snapshot(self):
        """Return a copy of what a camera needs, for rendering on another thread."""
        return snapshot(self.data, self.time)

    def render(self, cameras=tuple(CAMERAS.values())):
        """Render MJCF ``cameras`` now, on this thread: a tuple of (H, W, 3) uint8 RGB images."""
        if self._camera is None or self._camera.cameras != tuple(cameras):
            self.close()
            self._camera = SimCamera(self.model, self.width, self.height, tuple(cameras))
        return self._camera.render(self.snapshot())

    def close(self):
        """Free the renderer (if ``render`` made one)."""
        if self._camera is not None:
            self._camera.close()
            self._camera = None
