"""
A scripted expert for ALOHA's ``transfer_cube`` (ROS-free): the cube's pose in, joint targets out.

The pattern is ACT's scripted policy: end-effector waypoints for both arms, planned once from the
cube's start position: the right arm comes over the cube, goes down, closes, lifts it to the
meeting point in the middle; the left arm comes in from the side, its fingers rolled to close
vertically, closes on the cube; the right arm opens and backs off, the left one carries the cube
away. Between waypoints the pose moves with a smoothstep time scaling (zero speed at each
waypoint, so the joint targets have no steps in velocity) and orientations are slerped.

Joint targets come from a damped-least-squares inverse kinematics (``Kinematics.solve``) on the
MJCF joint model (``mujoco.mj_jac`` at the tool point), each step started from the previous
solution, so consecutive targets stay close. The tool point (``TCP``) is a point between the
finger pads, ``TCP[0]`` ahead of ``gripper_link``; waypoints place it.

Actions are ACT's and OFT's ALOHA layout (``PRESETS['aloha']``): per arm (left, then right) six
joint positions (rad) and the gripper normalised 0 closed .. 1 open, one per ``PERIOD`` (50 Hz).

``rollout`` runs one seeded episode on ``SimAloha`` through its controllers, each action sent as
a one-point trajectory per arm (what arm_bridge's ``step`` mode sends). ``python -m
vla_ros.sim.aloha_expert --episodes 20`` prints the success count.
"""

import argparse
import math
import sys

import mujoco
import numpy as np

from vla_ros.control.trajectory import chunk_trajectory
from vla_ros.sim import aloha

PERIOD = 0.02  # s, ACT's 50 Hz
SETTLE = 0.5  # s after a reset before planning: the cube falls onto the table
TCP = np.array([0.135, 0.0, 0.0])  # m, the tool point in the gripper_link frame
MEET = np.array([0.0, 0.5, 0.25])  # m, where the right arm hands the cube over (ACT's)
DAMPING = 0.02  # damped least squares' lambda (m, rad)
ROLL = 3  # forearm_roll's index among an arm's six joints
ROLL_PULL = 0.2  # share of forearm_roll's angle the null space takes back per iteration


def _axis_rotation(axis, degrees):
    quat, mat = np.empty(4), np.empty(9)
    mujoco.mju_axisAngle2Quat(quat, np.asarray(axis, dtype=np.float64), math.radians(degrees))
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)


# Gripper orientations in the world frame (columns: the gripper's x = pointing, y = closing, z).
LEFT_HOME = np.eye(3)  # pointing +x, at the right arm
RIGHT_HOME = _axis_rotation((0, 0, 1), 180.0)  # pointing -x, at the left arm
RIGHT_PICK = _axis_rotation((0, 1, 0), -60.0) @ RIGHT_HOME  # tilted 60 degrees down
LEFT_MEET = _axis_rotation((1, 0, 0), 90.0)  # rolled: its fingers close vertically
# Each arm's waist axis (x, y, m) and its heading at waist 0 (degrees about z), from the MJCF.
BASES = {'left': (-0.469, 0.5, 0.0), 'right': (0.469, 0.5, 180.0)}


class Kinematics:
    """Forward and inverse kinematics of both arms' tool points, on a private MjData."""

    def __init__(self, model):
        self.model = model
        self.data = mujoco.MjData(model)
        self._body, self._qpos, self._dof, self._range = {}, {}, {}, {}
        for side in aloha.SIDES:
            joints = [model.joint(n) for n in aloha.arm_joints(side)]
            self._body[side] = model.body(f'vx300s_{side}/gripper_link').id
            self._qpos[side] = np.array([model.jnt_qposadr[j.id] for j in joints])
            self._dof[side] = np.array([model.jnt_dofadr[j.id] for j in joints])
            self._range[side] = np.array([model.jnt_range[j.id] for j in joints])  # (6, 2)

    def tool(self, side, q):
        """Return the tool point (xyz) and the gripper's rotation (3x3) at arm joints ``q``."""
        self.data.qpos[self._qpos[side]] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)  # mj_jac reads the joint axes it computes
        body = self._body[side]
        rotation = self.data.xmat[body].reshape(3, 3).copy()
        return self.data.xpos[body] + rotation @ TCP, rotation

    def solve(self, side, q, position, rotation, iterations=50, tolerance=1e-5):
        """Return arm joints (6) near ``q`` that put the tool at ``position``, ``rotation``."""
        q = np.array(q, dtype=np.float64)
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        for _ in range(iterations):
            point, current = self.tool(side, q)
            error = np.concatenate([position - point, 0.5 * sum(
                np.cross(current[:, i], rotation[:, i]) for i in range(3))])
            if float(error @ error) < tolerance ** 2:
                break
            mujoco.mj_jac(self.model, self.data, jacp, jacr, point, self._body[side])
            jac = np.vstack([jacp[:, self._dof[side]], jacr[:, self._dof[side]]])  # (6, 6)
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + DAMPING ** 2 * np.eye(6))  # (6, 6)
            # Near a singularity (wrist_angle near 0 lines up forearm_roll and wrist_rotate)
            # the damped inverse leaves a null space: there the forearm is pulled back to no
            # roll, instead of the two rolls drifting apart.
            rest = np.zeros(6)
            rest[ROLL] = -ROLL_PULL * q[ROLL]
            step = pinv @ error + (np.eye(6) - pinv @ jac) @ rest
            q = np.clip(q + step, self._range[side][:, 0], self._range[side][:, 1])
        return q


def _slerp(r0, r1, share):
    """Return the rotation ``share`` (0..1) of the way from ``r0`` to ``r1``."""
    q0, q1, q = np.empty(4), np.empty(4), np.empty(4)
    mujoco.mju_mat2Quat(q0, r0.reshape(9))
    mujoco.mju_mat2Quat(q1, r1.reshape(9))
    if q0 @ q1 < 0:
        q1 = -q1
    angle = math.acos(min(1.0, abs(float(q0 @ q1))))
    if angle < 1e-6:
        q[:] = q0
    else:
        q[:] = (math.sin((1 - share) * angle) * q0 + math.sin(share * angle) * q1) / \
            math.sin(angle)
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, q / np.linalg.norm(q))
    return mat.reshape(3, 3)


def facing(side, position):
    """
    Return the rotation about z that turns ``side``'s home heading to face ``position``.

    Rotations in the plan are given for an arm facing straight ahead; each is turned to face
    the tool's position from the arm's base, so the wrist never has to roll to aim (a roll with
    the wrist straight is a singularity the joint targets would jump through).
    """
    x, y, heading = BASES[side]
    return _axis_rotation((0, 0, 1), math.degrees(math.atan2(position[1] - y, position[0] - x))
                          - heading)


def waypoints(cube, left_start, right_start):
    """
    Return ``{side: [(t, position, rotation, gripper), ...]}``: the plan for a cube at ``cube``.

    ``*_start``: each tool's (position, rotation) at the start. Times in s; gripper 0 .. 1;
    rotations before ``facing``.
    """
    left_start = (left_start[0], facing('left', left_start[0]).T @ left_start[1])
    right_start = (right_start[0], facing('right', right_start[0]).T @ right_start[1])
    cube = np.asarray(cube, dtype=np.float64)
    above, grasp = cube + (0.0, 0.0, 0.11), cube + (0.0, 0.0, 0.012)
    left_meet = MEET + (0.02, 0.0, -0.02)
    left_away = MEET + (-0.1, 0.0, -0.02)
    return {
        'left': [(0.0, *left_start, 0.0),
                 (2.0, left_away, LEFT_MEET, 1.0),
                 (5.2, left_meet, LEFT_MEET, 1.0),
                 (6.2, left_meet, LEFT_MEET, 0.0),
                 (7.2, left_away, LEFT_HOME, 0.0),
                 (8.0, left_away, LEFT_HOME, 0.0)],
        'right': [(0.0, *right_start, 0.0),
                  (1.8, above, RIGHT_PICK, 1.0),
                  (2.6, grasp, RIGHT_PICK, 1.0),
                  (3.4, grasp, RIGHT_PICK, 0.0),
                  (4.0, MEET + (0.05, 0.0, 0.0), RIGHT_PICK, 0.0),
                  (4.4, MEET, RIGHT_PICK, 0.0),
                  (6.2, MEET, RIGHT_PICK, 1.0),
                  (7.2, MEET + (0.1, 0.0, 0.0), RIGHT_PICK, 1.0),
                  (8.0, MEET + (0.1, 0.0, 0.0), RIGHT_PICK, 1.0)],
    }


def _pose_at(plan, t):
    """Return (position, rotation, gripper) of a side's plan at time ``t`` (smoothstep)."""
    for (t0, p0, r0, g0), (t1, p1, r1, g1) in zip(plan, plan[1:]):
        if t <= t1:
            u = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
            s = u * u * (3.0 - 2.0 * u)
            return p0 + s * (p1 - p0), _slerp(r0, r1, s), g0 + s * (g1 - g0)
    return plan[-1][1], plan[-1][2], plan[-1][3]


def plan_actions(model, cube, start):
    """
    Return the expert's actions (T, 14) for a cube at ``cube`` and arm joints ``start``.

    ``start``: ``{side: 6 joint positions}``. Row k is the target for time ``(k + 1) * PERIOD``.
    """
    kin = Kinematics(model)
    starts = {side: kin.tool(side, start[side]) for side in aloha.SIDES}
    plans = waypoints(cube, starts['left'], starts['right'])
    steps = int(round(plans['left'][-1][0] / PERIOD))
    q = {side: np.array(start[side], dtype=np.float64) for side in aloha.SIDES}
    rows = np.empty((steps, 14))
    for k in range(steps):
        t = (k + 1) * PERIOD
        for i, side in enumerate(aloha.SIDES):
            position, rotation, gripper = _pose_at(plans[side], t)
            q[side] = kin.solve(side, q[side], position, facing(side, position) @ rotation)
            rows[k, 7 * i:7 * i + 6] = q[side]
            rows[k, 7 * i + 6] = gripper
    return rows


def expert_actions(sim):
    """Return the plan for ``sim``'s episode as it is now (cube and arms where they are)."""
    start = {side: sim.positions(aloha.arm_joints(side)) for side in aloha.SIDES}
    return plan_actions(sim.model, sim.cube_position(), start)


def plan_at(plan, t):
    """
    Return the plan's 14 targets for ``t`` seconds after planning, at any control rate.

    Row k is for ``(k + 1) * PERIOD``; between rows the targets are linear in time, before the
    first row they are the first row's and after the last the last row's (the arms hold).
    """
    plan = np.asarray(plan, dtype=np.float64)
    times = (np.arange(len(plan)) + 1) * PERIOD
    return np.array([np.interp(t, times, column) for column in plan.T])


def send_action(sim, action, period=PERIOD):
    """Send one 14-D action to both controllers, as one point ``period`` ahead (stamp 0)."""
    for i, (controller, joints) in enumerate(aloha.CONTROLLERS.items()):
        row = list(action[7 * i:7 * i + 6]) + [aloha.GRIPPER.position(action[7 * i + 6])]
        why = sim.take(controller, chunk_trajectory(joints, [row], period))
        if why:
            raise ValueError(f'{controller} refused the expert action: {why}')


def rollout(sim, seed, settle=SETTLE, extra=0.0):
    """
    Run one seeded episode of the expert on ``sim``; return its ``task_status`` at the end.

    The cube first falls onto the table (``settle`` s), then the plan runs; ``extra`` seconds
    more are simulated after it, holding the last action.
    """
    sim.reset(seed)
    sim.step(settle)
    actions = expert_actions(sim)
    for action in actions:
        send_action(sim, action)
        sim.step(PERIOD)
        sim.update_success()
    sim.step(extra)
    return sim.task_status()


def main(argv=None):
    """Run the expert on seeded episodes and print the success count."""
    parser = argparse.ArgumentParser(prog='python -m vla_ros.sim.aloha_expert',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--episodes', type=int, default=20, help='episodes (seeds first..)')
    parser.add_argument('--first-seed', type=int, default=0, help='the first seed')
    args = parser.parse_args(argv)
    sim = aloha.SimAloha(width=64, height=48)
    successes = 0
    for seed in range(args.first_seed, args.first_seed + args.episodes):
        status = rollout(sim, seed)
        successes += bool(status['success'])
        print(f"seed {seed}: {'success' if status['success'] else 'failure'} (stage "
              f"{status['stage']}, cube at {np.round(status['cube_position'], 3).tolist()})")
    print(f'transfer_cube expert: {successes}/{args.episodes} episodes succeeded')
    return 0


if __name__ == '__main__':
    sys.exit(main())
