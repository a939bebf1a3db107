"""sim_arm's parameters (config/vla.yaml holds the defaults): declared once, with their ranges."""

from vla_ros.nodes import params
from vla_ros.sim.tasks import ALOHA_TASKS, START_SPREAD_MAX, TASKS


def _within(low, high, low_open=False):
    """Return a check that a number lies in [low, high] (or (low, high])."""
    return lambda v: (v > low if low_open else v >= low) and v <= high


ROBOTS = ('gripper', 'aloha')
PARAMS = (
    params.NodeParam('robot', 'gripper', "The simulated robot: 'gripper' (a floating parallel "
                     "gripper, commanded by end-effector twists and poses) or 'aloha' (the "
                     'bimanual ViperX of ALOHA, its joints commanded by trajectories as '
                     "ros2_control's joint_trajectory_controller takes them; "
                     'vla_ros.nodes.sim_aloha).', check=lambda v: v in ROBOTS,
                     allowed=', '.join(ROBOTS)),
    params.NodeParam('camera_width', 320, 'Camera image width in pixels.',
                     check=_within(16, 2048), allowed='an integer in 16 .. 2048'),
    params.NodeParam('camera_height', 240, 'Camera image height in pixels.',
                     check=_within(16, 2048), allowed='an integer in 16 .. 2048'),
    params.NodeParam('camera_rate_hz', 10.0, 'Camera frame rate, Hz.',
                     check=_within(0, 60, True), allowed='0 < rate <= 60 Hz'),
    params.NodeParam('wrist_camera', True, 'Also publish the gripper-mounted camera on '
                     'wrist_camera/image_raw (same size, rate and stamps as camera/image_raw); '
                     'false halves the rendering work.'),
    params.NodeParam('physics_rate_hz', 100.0, 'Control loop rate, Hz; physics substeps at 2 ms '
                     'inside each tick.', check=_within(10, 500), allowed='10 .. 500 Hz'),
    params.NodeParam('ee_pose_rate_hz', 50.0, 'Rate of ee_pose and joint_states, Hz.',
                     check=_within(0, 500, True), allowed='0 < rate <= physics_rate_hz'),
    params.NodeParam('max_linear_speed', 0.25, 'End-effector speed limit, m/s.',
                     check=_within(0, 1.0, True), allowed='0 < v <= 1.0 m/s'),
    params.NodeParam('max_angular_speed', 1.0, 'End-effector angular speed limit, rad/s.',
                     check=_within(0, 4.0, True), allowed='0 < w <= 4.0 rad/s'),
    params.NodeParam('twist_timeout', 0.1, 'Seconds a twist holds after its stamp; older twists '
                     'are dropped.', check=_within(0.01, 5.0), allowed='0.01 .. 5.0 s'),
    params.NodeParam('base_frame', 'base_link', 'Frame of ee_pose and the accepted command '
                     'frame.', check=lambda v: bool(v.strip()), allowed='a non-empty frame name'),
    params.NodeParam('publish_clock', False, 'Publish /clock from physics time and stamp with it '
                     '(other nodes then use use_sim_time).'),
    params.NodeParam('task', 'reach', "The task of the episodes: 'reach' (the fingertips within "
                     "3 cm above the named object) or 'lift' (the named object 5 cm off the "
                     "table); with robot aloha 'transfer_cube' (the right arm hands the cube to "
                     'the left). May change at run time; takes effect at the next ~/reset.',
                     check=lambda v: v in TASKS + ALOHA_TASKS,
                     allowed=', '.join(TASKS + ALOHA_TASKS), runtime=True),
    params.NodeParam('start_spread', 0.0, "Metres (per axis) the gripper's start may lie from "
                     'home, drawn from the seed: 0 starts every episode at home; demonstrations '
                     'use a spread so a policy learns to go to the object from anywhere.',
                     check=_within(0.0, START_SPREAD_MAX), allowed=f'0 .. {START_SPREAD_MAX} m'),
    params.NodeParam('seed', 0, 'Seed of the episode: the object placement and the named '
                     'object. May change at run time; takes effect at the next ~/reset.',
                     check=lambda v: v >= 0, allowed='an integer >= 0', runtime=True),
)
RESTART_HINT = 'restart sim_arm with -p NAME:=VALUE'


def robot_tasks(robot):
    """Return the tasks ``robot`` runs."""
    return ALOHA_TASKS if robot == 'aloha' else TASKS


def task_problems(robot, task):
    """Return [] or the problem of a ``task`` that ``robot`` does not run, naming the fix."""
    if task in robot_tasks(robot):
        return []
    return [f"parameter 'task' is {task!r}, a task robot {robot!r} does not run; its tasks: "
            f"{', '.join(robot_tasks(robot))} (-p task:=NAME)"]


def check_changes(robot, changes, running):
    """Return None when run-time ``changes`` are acceptable for ``robot``, else the reason."""
    values, reason = params.check_changes(PARAMS, changes, running, RESTART_HINT)
    if reason is None and 'task' in values:
        reason = (task_problems(robot, values['task']) or [None])[0]
    return reason
