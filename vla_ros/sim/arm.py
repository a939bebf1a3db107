"""
The simulated arm: a floating parallel gripper over a table in MuJoCo, commanded like a real arm.

ROS-free: the ``sim_arm`` node, the benchmark and the tests drive this class directly. The
objects and their seeded placement are ``vla_ros.sim.tasks``'s (``reset(seed)`` places them);
``scene_state()`` is what a task's success is judged on.

Commands (all in the base frame, ``base_link`` = the MuJoCo world frame, table top at z = 0):

* ``command_twist(linear, angular)``: a Servo-style velocity command (m/s, rad/s). Each vector is
  clamped to ``max_linear_speed`` / ``max_angular_speed`` (by norm, so the direction is kept). It
  holds until ``twist_timeout`` seconds of sim time after it was sent (``age`` says how old it
  already is), like MoveIt Servo halting on commands older than its timeout.
* ``command_pose(position, quaternion)``: an absolute target, approached in a straight line at no
  more than the same speed limits.
* ``command_gripper(opening)``: normalised opening in [0, 1], 1 = open (OpenVLA's convention);
  values outside are clipped. Mapping a robot-specific gripper range onto it is arm_bridge's job.

The commands move a mocap body; the gripper is welded to it by a soft constraint, so it really
pushes and grasps. Safety inside the sim: the mocap target is clipped to ``WORKSPACE_LOW`` ..
``WORKSPACE_HIGH`` (a box over the table), and it never leads the real gripper by more than
``MAX_LEAD`` metres, which bounds the force the gripper can press with.

At the identity orientation the fingers point down (-z) and close along y. ``joint_state()``
reports six virtual joints (``gripper_x`` ... ``gripper_yaw``: the measured end-effector position
and roll/pitch/yaw, R = Rz Ry Rx; their velocities are the linear velocity and the angular velocity
about the base axes) and the two finger slides ``left_finger_joint`` (+y side) and
``right_finger_joint`` (-y side): the measured position of each finger in metres from closed,
0 .. 0.04 each (0.04 = open, both positive, so the opening between the pads is their sum plus
2 mm; holding the 4 cm cube each reads about 0.02), and their velocities in m/s.

Cameras (``CAMERAS``): ``scene_camera`` is fixed in front of the table, looking back at the
workspace; ``wrist_camera`` is mounted on the gripper, under the back of the palm, looking down
along the fingers and 30 degrees forward, so both fingertips and what lies between them are in
view and the image moves with the gripper.
"""

import math
from pathlib import Path

import mujoco
import numpy as np

from vla_ros.control.geometry import (clamp_norm, conjugate_wxyz, finite_vector, from_wxyz,
                                      quaternion_to_rpy, to_wxyz)
from vla_ros.sim import loop, tasks
from vla_ros.sim.camera import SimCamera, snapshot

SCENE_XML = Path(__file__).with_name('scene.xml')
WORKSPACE_LOW = np.array([0.10, -0.35, 0.016])
WORKSPACE_HIGH = np.array([0.70, 0.35, 0.40])
HOME_POSITION = np.array([0.30, 0.0, 0.20])
FINGER_TRAVEL = 0.04  # metres per finger from closed to fully open
MAX_LEAD = 0.015  # metres the mocap target may run ahead of the real gripper
OBJECTS = tuple(o.body for o in tasks.OBJECTS)  # bodies: 'cube', 'cylinder', 'block'
VIRTUAL_JOINTS = ('gripper_x', 'gripper_y', 'gripper_z', 'gripper_roll', 'gripper_pitch',
                  'gripper_yaw')
FINGER_JOINTS = ('left_finger_joint', 'right_finger_joint')
SCENE_CAMERA = 'scene_camera'
WRIST_CAMERA = 'wrist_camera'
CAMERAS = (SCENE_CAMERA, WRIST_CAMERA)


class SimArm:
    """A floating gripper, a table and three objects; see the module docstring."""

    def __init__(self, width=320, height=240, max_linear_speed=0.25, max_angular_speed=1.0,
                 twist_timeout=0.1, seed=0, camera=SCENE_CAMERA, start_spread=0.0):
        self.model = mujoco.MjModel.from_xml_path(str(SCENE_XML))
        vis = self.model.vis.global_
        vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
        self.data = mujoco.MjData(self.model)
        self.width, self.height, self.camera = width, height, camera
        self.max_linear_speed = float(max_linear_speed)
        self.max_angular_speed = float(max_angular_speed)
        self.twist_timeout = float(twist_timeout)
        self.seed = seed
        self.start_spread = float(start_spread)
        tasks.start_offset(seed, self.start_spread)  # checks the spread
        self.timestep = float(self.model.opt.timestep)
        model = self.model
        self._ee_site = model.site('ee').id
        self._gripper_body = model.body('gripper').id
        self._gripper_qpos = model.jnt_qposadr[model.joint('gripper_free').id]
        self._gripper_dof = model.jnt_dofadr[model.joint('gripper_free').id]
        self._finger_qpos = [model.jnt_qposadr[model.joint(n).id] for n in FINGER_JOINTS]
        self._finger_dof = [model.jnt_dofadr[model.joint(n).id] for n in FINGER_JOINTS]
        self._object_qpos = {n: model.jnt_qposadr[model.joint(f'{n}_free').id] for n in OBJECTS}
        self._object_body = {n: model.body(n).id for n in OBJECTS}
        self._camera = None
        self.reset()

    # ---------------------------------------------------------------- state
    @property
    def time(self):
        """Physics time in seconds since the last reset."""
        return float(self.data.time)

    def reset(self, seed=None):
        """
        Put the gripper at its start (open, fingers down), the objects at their seeded places.

        The start is ``HOME_POSITION``, offset by ``tasks.start_offset(seed, start_spread)``.
        """
        if seed is not None:
            self.seed = seed
        mujoco.mj_resetData(self.model, self.data)
        qpos = self.data.qpos
        start = HOME_POSITION + tasks.start_offset(self.seed, self.start_spread)
        qpos[self._gripper_qpos:self._gripper_qpos + 7] = [*start, 1.0, 0.0, 0.0, 0.0]
        for name, (x, y, yaw) in tasks.object_layout(self.seed).items():
            adr = self._object_qpos[name]
            qpos[adr:adr + 7] = [x, y, tasks.scene_object(name).half_height,
                                 math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        for adr in self._finger_qpos:
            qpos[adr] = FINGER_TRAVEL
        self.data.ctrl[:] = FINGER_TRAVEL
        self.data.mocap_pos[0] = start
        self.data.mocap_quat[0] = [1.0, 0.0, 0.0, 0.0]
        self._mode = None  # None (hold), 'twist' or 'pose'
        self._linear = np.zeros(3)
        self._angular = np.zeros(3)
        self._twist_until = -math.inf
        self._target_pos = start.copy()
        self._target_quat = np.array([1.0, 0.0, 0.0, 0.0])
        self._pending = 0.0
        mujoco.mj_forward(self.model, self.data)

    def ee_pose(self):
        """Return the end-effector site's (position xyz, quaternion xyzw) in the base frame."""
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self._ee_site])
        return self.data.site_xpos[self._ee_site].copy(), from_wxyz(quat)

    def joint_state(self):
        """Return (names, positions, velocities): six virtual joints, then the two fingers."""
        position, quat = self.ee_pose()
        velocity = np.empty(6)  # (angular xyz, linear xyz) about the site, base-frame axes
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_SITE, self._ee_site,
                                 velocity, 0)
        positions = [*position, *quaternion_to_rpy(*quat)]
        positions += [float(self.data.qpos[adr]) for adr in self._finger_qpos]
        velocities = [*velocity[3:], *velocity[:3]]
        velocities += [float(self.data.qvel[adr]) for adr in self._finger_dof]
        return (list(VIRTUAL_JOINTS + FINGER_JOINTS), [float(p) for p in positions],
                [float(v) for v in velocities])

    def object_positions(self):
        """Return ``{name: xyz}`` of every object's centre in the base frame."""
        return {n: self.data.qpos[a:a + 3].copy() for n, a in self._object_qpos.items()}

    def scene_state(self):
        """Return the poses success is judged on (``tasks.SceneState``), base frame."""
        return tasks.SceneState(
            self.data.site_xpos[self._ee_site].copy(),
            self.data.site_xmat[self._ee_site].reshape(3, 3).copy(),
            {n: self.data.xpos[b].copy() for n, b in self._object_body.items()},
            {n: self.data.xmat[b].reshape(3, 3).copy() for n, b in self._object_body.items()})

    def snapshot(self):
        """Return a copy of what a camera needs, for rendering on another thread."""
        return snapshot(self.data, self.time)

    # ---------------------------------------------------------------- commands
    def command_twist(self, linear, angular, age=0.0):
        """
        Move at ``linear`` m/s and ``angular`` rad/s (base frame, clamped) until it expires.

        It expires ``twist_timeout`` after its stamp, which was ``age`` seconds before the physics
        time (negative when the physics lags behind a fresh stamp).
        """
        linear = finite_vector(linear, 3, 'linear velocity')
        angular = finite_vector(angular, 3, 'angular velocity')
        self._linear = clamp_norm(linear, self.max_linear_speed)
        self._angular = clamp_norm(angular, self.max_angular_speed)
        self._twist_until = self.time - float(age) + self.twist_timeout
        self._mode = 'twist'

    def command_pose(self, position, quaternion):
        """Approach the absolute pose (xyz; quaternion xyzw) at no more than the speed limits."""
        position = finite_vector(position, 3, 'position')
        quat = finite_vector(quaternion, 4, 'quaternion')
        norm = float(np.linalg.norm(quat))
        if norm < 1e-6:
            raise ValueError('quaternion has zero norm; identity is (0, 0, 0, 1)')
        self._target_pos = np.clip(position, WORKSPACE_LOW, WORKSPACE_HIGH)
        self._target_quat = to_wxyz(quat / norm)
        self._mode = 'pose'

    def command_gripper(self, opening):
        """Set the normalised finger opening: 1 = open, 0 = closed (clipped to [0, 1])."""
        opening = float(opening)
        if not math.isfinite(opening):
            raise ValueError(f'gripper opening must be finite, got {opening}')
        self.data.ctrl[:] = min(max(opening, 0.0), 1.0) * FINGER_TRAVEL

    def stop(self):
        """Hold the current target: no more twist or pose motion until the next command."""
        self._mode = None
        self._linear[:] = 0.0
        self._angular[:] = 0.0

    # ---------------------------------------------------------------- physics
    def step(self, duration):
        """Advance the physics by ``duration`` seconds (whole timesteps; the rest carries over)."""
        steps, self._pending = loop.whole_steps(self._pending, duration, self.timestep)
        return self.run_steps(steps)

    def run_steps(self, count):
        """Advance the physics by ``count`` timesteps, moving the target before each."""
        for _ in range(int(count)):
            self._move_target(self.timestep)
            mujoco.mj_step(self.model, self.data)
        return int(count)

    def _move_target(self, dt):
        pos, quat = self.data.mocap_pos[0], self.data.mocap_quat[0]
        if self._mode == 'twist':
            if self.time > self._twist_until:
                self.stop()
                return
            pos += self._linear * dt
            angle = float(np.linalg.norm(self._angular)) * dt
            if angle > 0.0:
                self._rotate(quat, self._angular, angle)
        elif self._mode == 'pose':
            error = self._target_pos - pos
            pos += clamp_norm(error, self.max_linear_speed * dt)
            delta = np.empty(4)
            mujoco.mju_mulQuat(delta, self._target_quat, conjugate_wxyz(quat))
            axis = np.empty(3)
            mujoco.mju_quat2Vel(axis, delta, 1.0)  # axis * angle of the remaining rotation
            angle = float(np.linalg.norm(axis))
            if angle > 1e-9:
                self._rotate(quat, axis, min(angle, self.max_angular_speed * dt))
        else:
            return
        np.clip(pos, WORKSPACE_LOW, WORKSPACE_HIGH, out=pos)
        actual = self.data.xpos[self._gripper_body]
        pos[:] = actual + clamp_norm(pos - actual, MAX_LEAD)

    @staticmethod
    def _rotate(quat, axis, angle):
        """Rotate ``quat`` (wxyz, in place) by ``angle`` about the base-frame ``axis``."""
        delta, result = np.empty(4), np.empty(4)
        mujoco.mju_axisAngle2Quat(delta, axis / np.linalg.norm(axis), angle)
        mujoco.mju_mulQuat(result, delta, quat)
        mujoco.mju_normalize4(result)
        quat[:] = result

    # ---------------------------------------------------------------- camera
    def render(self):
        """Render ``camera`` now, on this thread: (height, width, 3) uint8 RGB (see SimCamera)."""
        if self._camera is None:
            self._camera = SimCamera(self.model, self.width, self.height, self.camera)
        return self._camera.render(self.snapshot())

    def close(self):
        """Free the renderer (if ``render`` made one)."""
        if self._camera is not None:
            self._camera.close()
            self._camera = None
