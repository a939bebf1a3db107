"""
Reference actions for each control step: a recorded ``vla/action``, or ee_pose relabelled.

Pure numpy; every time is bag log time in integer nanoseconds, ``steps`` and message times sorted.
A step without a reference gets a row of NaN and is left out of the error metrics.

**Recorded actions** (``--reference action``, regression between checkpoints): the
``vla/action`` each step is paired with by ``vla_ros.recordings.actions.recorded_actions``, the
rule vla_finetune's targets follow too.

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
