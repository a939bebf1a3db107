"""
Reference actions for each control step: a recorded ``vla/action``, or ee_pose relabelled.

Pure numpy; every time is bag log time in integer nanoseconds, ``steps`` and message times sorted.
A step without a reference gets a row of NaN and is left out of the error metrics.

**Recorded actions** (``--reference action``, regression between checkpoints; also
vla_finetune's targets). A ``Float64MultiArray`` has no header, so pairing is by log time: step
``k`` takes the first ``vla/action`` logged in the window ``[log time of its (primary) image,
t_{k+1})``, from the moment its image was logged up to (not including) the next step time,
skipping two kinds: one an earlier step took, and one logged at the very log time of a newer
step's image. That is the action a live node published from (about) that frame before its next
tick, and also the action a dataset converted to a bag (or a teleoperation log) logged at the
same time as its image, even when the image was logged slightly before ``t_k``. A step with no
such action in its window has no reference.

Each recorded action is the reference of at most one step. With ``--rate`` above the camera rate
(``--rate 20`` on 10 Hz cameras) a step that reuses the previous step's image has a window that
starts at that image: it holds the previous step's action, which that step took, and the step
takes its own, logged after its tick. A dataset logs no action for such a step, and the next
image's action, logged with that image (maybe just before the next step time), is the next
image's; so the step has no reference rather than the wrong one.

**ee_pose relabelling** (``--reference ee_pose``), as BridgeData V2 / OpenVLA do it. OpenVLA's
``relabel_bridge_actions`` (prismatic/vla/datasets/rlds/oxe/transforms.py, the same function as
Octo's ``relabel_actions``) computes ``state[1:, :6] - state[:-1, :6]``: the reached next
proprioceptive state minus the current one, where the state is ``x, y, z, roll, pitch, yaw`` of the
end effector in the robot base frame; it keeps the gripper of step ``t`` and drops the last step,
which has no next state. Here, with ``p_k`` the newest ee_pose logged at or before ``t_k``:

- ``dx, dy, dz = xyz(p_{k+1}) - xyz(p_k)`` (metres, base frame);
- ``droll, dpitch, dyaw = rpy(p_{k+1}) - rpy(p_k)``, roll/pitch/yaw with R = Rz Ry Rx (as the
  action convention and ``geometry.quaternion_to_rpy``), each wrapped to (-pi, pi]. Bridge
  does not wrap; wrapping changes only a difference that crosses +-pi, where the plain
  difference would be an impossible ~2 pi step;
- ``gripper`` = the gripper state (``--gripper-topic``, std_msgs/Float64, 1 = open) newest at or
  before ``t_k``, absolute. Bridge's label is its commanded gripper at ``t``, binarised; a state
  topic is what ROS arms record. The metrics threshold it at 0.5.
- the last step, and a step before the first pose or gripper state, has no reference.
"""

import numpy as np

from vla_ros.control.action_layout import ACTION_DIM
from vla_ros.control.geometry import wrap_angle


def newest_at_or_before(times, queries):
    """Return, for each query time, the index of the newest time <= it (-1 when none)."""
    return np.searchsorted(np.asarray(times, dtype=np.int64), np.asarray(queries, np.int64),
                           side='right') - 1


def recorded_actions(image_log_ns, next_step_ns, action_times, actions):
    """
    Pair each step with its recorded action (the rule is in the module docstring).

    ``image_log_ns``, ``next_step_ns``: int64 (K,), in step order; ``action_times`` int64 (N,),
    sorted; ``actions`` float64 (N, 7). Returns float64 (K, 7), NaN rows where no action fits.
    """
    image_log_ns = np.asarray(image_log_ns, dtype=np.int64)
    next_step_ns = np.asarray(next_step_ns, dtype=np.int64)
    out = np.full((image_log_ns.shape[0], ACTION_DIM), np.nan)
    action_times = np.asarray(action_times, dtype=np.int64)
    if action_times.size == 0:
        return out
    actions = np.asarray(actions, dtype=np.float64)
    images = set(image_log_ns.tolist())
    first = np.searchsorted(action_times, image_log_ns, side='left')  # first at or after image
    taken = np.zeros(action_times.size, dtype=bool)
    free = 0  # every action before it is taken
    for k, image_ns in enumerate(image_log_ns.tolist()):
        i = max(int(first[k]), free)
        while i < action_times.size and action_times[i] < next_step_ns[k]:
            logged = int(action_times[i])
            if not taken[i] and not (logged > image_ns and logged in images):
                out[k] = actions[i]
                taken[i] = True
                while free < taken.size and taken[free]:
                    free += 1
                break
            i += 1
    return out


def relabel_ee_pose(step_ns, pose_times, poses, gripper_times, grippers):
    """
    Return BridgeData-style reference actions (K, 7) from ee_pose and gripper streams.

    ``step_ns`` int64 (K,) step times; ``pose_times`` int64 (N,) with ``poses`` float64 (N, 6)
    ``x, y, z, roll, pitch, yaw``; ``gripper_times`` int64 (M,) with ``grippers`` (M,) or (M, 1).
    Row ``k`` uses the poses newest at or before ``t_k`` and ``t_{k+1}``; the last row is NaN.
    """
    step_ns = np.asarray(step_ns, dtype=np.int64)
    out = np.full((step_ns.shape[0], ACTION_DIM), np.nan)
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 6)
    grippers = np.asarray(grippers, dtype=np.float64).reshape(-1)
    if step_ns.shape[0] < 2 or poses.shape[0] == 0 or grippers.shape[0] == 0:
        return out
    j = newest_at_or_before(pose_times, step_ns)  # (K,)
    g = newest_at_or_before(gripper_times, step_ns)  # (K,)
    now, nxt = j[:-1], j[1:]
    ok = (now >= 0) & (nxt >= 0) & (g[:-1] >= 0)
    rows = np.flatnonzero(ok)
    delta = poses[nxt[ok]] - poses[now[ok]]  # (n, 6)
    out[rows, :3] = delta[:, :3]
    out[rows, 3:6] = wrap_angle(delta[:, 3:6])
    out[rows, 6] = grippers[g[:-1][ok]]
    return out
