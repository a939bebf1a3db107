"""
A scripted expert for the sim's tasks (ROS-free): privileged state in, 7-D actions out.

``ScriptedExpert.act`` takes the end effector's measured position (and roll, pitch, yaw), the
named object's position and yaw, and the finger opening, and returns one action in the
package's convention ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` (base frame, metres and
radians per control step of ``period`` seconds; gripper 1 = open), as a policy would publish on
``vla/action``. It drives the arm through the same path a policy does (arm_bridge, sim_arm).

Its motion is meant to be imitated:

* smooth and speed-limited: each step moves a fraction ``gain * period`` of the way to the
  current target, at most ``max_speed * period`` (1.5 cm at 10 Hz, well inside arm_bridge's
  5 cm per-step clip and the sim's 0.25 m/s), so it cruises, then slows down on arrival;
* from above: the target's height follows a cone over the goal, ``APPROACH_SLOPE`` times the
  horizontal distance up to ``APPROACH_HEIGHT``, so the fingers come down onto the object
  almost vertically and pass well above its neighbours;
* the orientation is held at the identity (fingers down), except that ``lift`` turns the yaw so
  the fingers close across the object's narrow side.

``reach`` is a memoryless function of the state: the goal puts the fingertip midpoint at the
middle of the success band, ``REACH_HEIGHT / 2`` over the object's top. ``lift`` runs phases:
``approach`` (above the object, yaw aligned), ``descend`` (open fingers around it), ``close``
(``CLOSE_STEPS`` steps), ``lift`` (up to ``LIFT_TO``); a grasp that closes on nothing or loses
the object opens and approaches again.

``rollout`` runs one seeded episode on the ROS-free ``SimArm`` (each action a twist held for one
period, as arm_bridge streams it: ``apply_action``), for tests and quick measurements;
``expert_inputs`` reads the expert's inputs off a ``SimArm``.
"""

import math

import numpy as np

from vla_ros.sim import tasks

APPROACH_SLOPE = 1.0  # m of height over the goal per m of horizontal distance
APPROACH_HEIGHT = 0.10  # m, the cone's cap over the goal
PREGRASP_CLEARANCE = 0.03  # m from the object's top down to the fingertips before descending
GRASP_LOWEST = 0.018  # m, lowest end-effector height for a grasp (the sim's floor is 0.016)
CLOSE_STEPS = 6  # control steps the fingers get to close before lifting
LIFT_TO = 0.15  # m, end-effector height the object is lifted to
EMPTY_GRASP = 0.004  # m of finger travel (both together) below which nothing is held


def _wrap(angle):
    """Return ``angle`` wrapped into (-pi, pi]."""
    return math.pi - (math.pi - angle) % (2 * math.pi)


def grasp_yaw(name, object_yaw):
    """Return the gripper yaw that closes the fingers across the object, nearest to zero."""
    obj = tasks.scene_object(name)
    if obj.shape == 'cylinder':
        return 0.0
    # The fingers close along the gripper's y axis: align it with the object's shorter side.
    yaw = object_yaw if obj.size[1] <= obj.size[0] else object_yaw + math.pi / 2
    symmetry = math.pi / 2 if math.isclose(obj.size[0], obj.size[1]) else math.pi
    return yaw - symmetry * round(yaw / symmetry)


class ScriptedExpert:
    """Solve ``task`` on the object ``name`` from privileged state; see the module docstring."""

    def __init__(self, task, name, period=0.1, max_speed=0.15, gain=3.0, max_turn=0.6,
                 max_step=0.05, max_rotation=0.25):
        if task not in tasks.TASKS:
            raise ValueError(f'unknown task {task!r}; the tasks are: {", ".join(tasks.TASKS)}')
        if not period > 0 or not max_speed > 0:
            raise ValueError(f'period and max_speed must be > 0, got {period}, {max_speed}')
        self.task, self.object = task, tasks.scene_object(name).name
        self.period = float(period)
        self.max_speed, self.gain, self.max_turn = float(max_speed), float(gain), float(max_turn)
        self.max_step, self.max_rotation = float(max_step), float(max_rotation)
        self.reset()

    def reset(self):
        """Start a new episode: back to the first phase."""
        self.phase = 'approach' if self.task == 'lift' else 'reach'
        self._steps_in_phase = 0
        self._grasp_xy = None

    def act(self, ee_position, object_position, ee_rpy=(0.0, 0.0, 0.0), object_yaw=0.0,
            fingers=None, object_top=None):
        """
        Return the next action (7,) from the state now.

        ``fingers`` is the total finger travel in metres (0 closed, 0.08 open; None: unknown);
        ``object_top`` the height of the object's top (default: upright on its centre).
        """
        ee = np.asarray(ee_position, dtype=np.float64).reshape(3)
        target = np.asarray(object_position, dtype=np.float64).reshape(3)
        top = target[2] + tasks.scene_object(self.object).half_height if object_top is None \
            else float(object_top)
        self._steps_in_phase += 1
        if self.task == 'reach':
            goal = (target[0], target[1], top + tasks.FINGERTIP_OFFSET + tasks.REACH_HEIGHT / 2)
            return self._action(self._cone(ee, goal), ee_rpy, 0.0, 1.0)
        return self._lift(ee, target, top, ee_rpy, object_yaw, fingers)

    # ---------------------------------------------------------------- lift phases
    def _lift(self, ee, target, top, ee_rpy, object_yaw, fingers):
        yaw = grasp_yaw(self.object, object_yaw)
        pregrasp = (target[0], target[1], top + tasks.FINGERTIP_OFFSET + PREGRASP_CLEARANCE)
        grasp_z = max(target[2], GRASP_LOWEST)
        horizontal = math.hypot(target[0] - ee[0], target[1] - ee[1])
        if self.phase == 'approach':
            if (horizontal < 0.008 and abs(ee[2] - pregrasp[2]) < 0.01
                    and abs(_wrap(yaw - ee_rpy[2])) < 0.05):
                self._enter('descend')
            else:
                return self._action(self._cone(ee, pregrasp), ee_rpy, yaw, 1.0)
        if self.phase == 'descend':
            if abs(ee[2] - grasp_z) < 0.006:
                self._enter('close')
                self._grasp_xy = target[:2].copy()
            else:
                return self._action(self._toward(ee, (target[0], target[1], grasp_z)), ee_rpy,
                                    yaw, 1.0)
        if self.phase == 'close':
            if self._steps_in_phase > CLOSE_STEPS:
                self._enter('lift')
            else:
                return self._action(np.zeros(3), ee_rpy, yaw, 0.0)
        empty = fingers is not None and fingers < EMPTY_GRASP
        lost = ee[2] - target[2] > 0.04  # the object stayed behind
        if empty or lost:
            self._enter('approach')  # open and try again
            return self._action(self._toward(ee, (ee[0], ee[1], pregrasp[2] + 0.03)), ee_rpy,
                                yaw, 1.0)
        goal = (self._grasp_xy[0], self._grasp_xy[1], LIFT_TO)
        return self._action(self._toward(ee, goal, speed=0.1), ee_rpy, yaw, 0.0)

    def _enter(self, phase):
        self.phase, self._steps_in_phase = phase, 1

    # ---------------------------------------------------------------- motion
    def _cone(self, ee, goal):
        """Return the step toward ``goal`` along the approach cone (from above)."""
        horizontal = math.hypot(goal[0] - ee[0], goal[1] - ee[1])
        height = goal[2] + min(APPROACH_SLOPE * horizontal, APPROACH_HEIGHT)
        return self._toward(ee, (goal[0], goal[1], height))

    def _toward(self, ee, point, speed=None):
        """Return a proportional step toward ``point``, speed-limited."""
        step = (np.asarray(point, dtype=np.float64) - ee) * min(1.0, self.gain * self.period)
        limit = (self.max_speed if speed is None else speed) * self.period
        norm = float(np.linalg.norm(step))
        return step * (limit / norm) if norm > limit else step

    def _action(self, step, ee_rpy, yaw, gripper):
        """Return the 7-D action: the step, a turn toward (0, 0, yaw), the gripper."""
        error = np.array([-ee_rpy[0], -ee_rpy[1], _wrap(yaw - ee_rpy[2])], dtype=np.float64)
        turn = np.clip(error * min(1.0, self.gain * self.period), -self.max_turn * self.period,
                       self.max_turn * self.period)
        action = np.empty(7)
        action[:3] = np.clip(step, -self.max_step, self.max_step)
        action[3:6] = np.clip(turn, -self.max_rotation, self.max_rotation)
        action[6] = gripper
        return action


def expert_inputs(arm, name, state=None):
    """
    Return ``ScriptedExpert.act``'s arguments for object ``name`` from a ``SimArm``'s state now.

    ``state`` is ``arm.scene_state()`` when the caller already has it.
    """
    from vla_ros.control.geometry import quaternion_to_rpy

    state = arm.scene_state() if state is None else state
    body = tasks.scene_object(name).body
    position, quat = arm.ee_pose()
    rot = state.object_rotations[body]
    _, joints, _ = arm.joint_state()
    return (position, state.object_positions[body], quaternion_to_rpy(*quat),
            math.atan2(rot[1, 0], rot[0, 0]), sum(joints[6:8]), state.object_bounds(name)[1])


def apply_action(arm, action, monitor, period=0.1, ticks=10):
    """
    Drive ``arm`` with one 7-D action for one ``period``, judging ``monitor`` on every tick.

    The action becomes a twist (delta / period) held for the period and the gripper command
    (open above 0.5), as arm_bridge streams them; success is judged ``ticks`` times (100 Hz at
    10 Hz), as sim_arm's control tick does.
    """
    from vla_ros.control.geometry import rotation_vector, rpy_to_matrix

    arm.command_twist(action[:3] / period, rotation_vector(rpy_to_matrix(*action[3:6])) / period)
    arm.command_gripper(1.0 if action[6] > 0.5 else 0.0)
    for _ in range(ticks):
        arm.step(period / ticks)
        monitor.update(arm.time, arm.scene_state())


def rollout(seed, task='reach', seconds=8.0, period=0.1, arm=None, **expert_options):
    """
    Run one episode on a ROS-free ``SimArm`` (``arm``, or a new one); return a result dict.

    Each action is applied by ``apply_action``. The result holds ``success``,
    ``time_to_success`` (None on failure), ``episode``, ``actions`` (N, 7) and ``states`` (the
    ``SceneState`` each action was computed from).
    """
    from vla_ros.sim.arm import SimArm

    episode = tasks.episode(seed, task)
    if arm is None:
        arm = SimArm(seed=seed, twist_timeout=period * 1.5)
    arm.reset(seed)
    monitor = tasks.EpisodeMonitor(episode)
    expert = ScriptedExpert(task, episode.object, period=period, **expert_options)
    actions, states = [], []
    while arm.time < seconds and not monitor.succeeded:
        state = arm.scene_state()
        action = expert.act(*expert_inputs(arm, episode.object, state))
        actions.append(action)
        states.append(state)
        apply_action(arm, action, monitor, period)
    return {'episode': episode, 'success': monitor.succeeded,
            'time_to_success': monitor.time_to_success, 'actions': np.array(actions),
            'states': states}
