"""
The action layout out: the fields of vla_node's action topics, deltas or joint targets.

vla/action, vla/ee_delta, vla/gripper, vla/action_chunk, vla/joint_command and vla/joint_chunk.

ROS-free: these functions return and read the *fields* of the messages, so the live node
(``vla_ros.nodes.messages``) and vla_eval's predictions bag fill and read their own message
classes with one piece of code. Every bad input raises ``ConversionError`` naming the problem.

With ``action_space`` ``ee_delta`` the action is ``[dx, dy, dz, droll, dpitch, dyaw, gripper]``
(float64), rotation deltas as roll/pitch/yaw with R = Rz(yaw) Ry(pitch) Rx(roll) (see
``vla_ros.control.geometry``). With ``joint_position`` it is one absolute target per
``action_joints`` entry (``vla_ros.control.joints``): ``joint_fields`` gives vla/joint_command's
names and positions, ``joint_chunk_fields`` vla/joint_chunk's points, and vla/action's label is
the entries, space-separated, as ``ACTION_LABEL`` is the delta's.
"""

import numpy as np

from vla_ros.control.geometry import rpy_to_quaternion
from vla_ros.control.images import ConversionError

ACTION_LABEL = 'dx dy dz droll dpitch dyaw gripper'
ACTION_NAMES = tuple(ACTION_LABEL.split())
ACTION_DIM = 7
ACTION_SPACES = ('ee_delta', 'joint_position')


def check_action(values, source, finite=True):
    """Return ``values`` as a float64 array of shape (7,), finite unless not ``finite``."""
    try:
        action = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f'{source} is not numeric ({exc}); expected 7 floats '
                              f'[{ACTION_LABEL}]') from exc
    if action.shape != (ACTION_DIM,):
        raise ConversionError(
            f'{source} has shape {action.shape}, expected ({ACTION_DIM},) = [{ACTION_LABEL}]')
    bad = np.flatnonzero(~np.isfinite(action))
    if bad.size and finite:
        names = ', '.join(f'{ACTION_NAMES[i]}={action[i]}' for i in bad)
        raise ConversionError(f'{source} has non-finite values ({names}); nothing is published')
    return action


def action_fields(action, gripper_open_is_one=True):
    """
    Return the field values of vla_node's three messages for one action (the one layout).

    ``(position, quaternion, gripper, raw)``: ``vla/ee_delta``'s position (dx, dy, dz) and
    orientation (x, y, z, w) of droll, dpitch, dyaw; ``vla/gripper``'s command, clipped to [0, 1]
    and 1 - g when ``gripper_open_is_one`` is false; ``vla/action``'s data, the raw float64 (7,)
    (gripper unflipped and unclipped), whose layout is ``ACTION_DIMS``. The live node
    (``nodes.messages``) and vla_eval's predictions bag (``evaluation.bags``) fill their own
    message classes from these values.
    """
    action = check_action(action, 'action')
    g = min(1.0, max(0.0, float(action[6])))
    return (tuple(float(v) for v in action[:3]), rpy_to_quaternion(*map(float, action[3:6])),
            g if gripper_open_is_one else 1.0 - g, action)


ACTION_DIMS = ((ACTION_LABEL, ACTION_DIM, ACTION_DIM),)  # vla/action's (label, size, stride)


def chunk_fields(rows):
    """
    Return ``(dims, data)`` of a ``vla/action_chunk`` Float64MultiArray for a chunk (K, D).

    ``dims``: (label, size, stride) of dim 0 ``step`` (K) and dim 1 the action labels (D,
    ``ACTION_LABEL`` for 7-D actions); ``data``: the rows, row-major float64, no offset.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or not rows.size or not np.all(np.isfinite(rows)):
        raise ConversionError(f'a chunk must be finite (K, D) values, got shape {rows.shape}')
    steps, dim = rows.shape
    label = ACTION_LABEL if dim == ACTION_DIM else 'action'
    return (('step', steps, steps * dim), (label, dim, dim)), rows.reshape(-1)


def multiarray_to_action(msg, finite=True):
    """Read the 7-D action of a vla/action Float64MultiArray; NaN, inf pass if not ``finite``."""
    dims = list(msg.layout.dim)
    if dims and dims[0].label and dims[0].label != ACTION_LABEL:
        raise ConversionError(
            f'Float64MultiArray layout label is {dims[0].label!r}, expected {ACTION_LABEL!r}; '
            'this is not a vla/action message')
    offset = int(msg.layout.data_offset)
    return check_action(np.asarray(msg.data, dtype=np.float64)[offset:], 'Float64MultiArray',
                        finite)


def multiarray_to_values(msg, finite=True):
    """
    Read the action of a vla/action Float64MultiArray of any action space.

    The end-effector deltas' (label ``ACTION_LABEL``, or no layout) as ``multiarray_to_action``;
    a joint action's (its label: one ``action_joints`` entry per value, space-separated, as
    ``joint_fields`` writes it) as its N values. Other labels are refused.
    """
    dims = list(msg.layout.dim)
    label = dims[0].label if dims else ''
    if not label or label == ACTION_LABEL:
        return multiarray_to_action(msg, finite)
    values = np.asarray(msg.data, dtype=np.float64)[int(msg.layout.data_offset):]
    if len(label.split()) != values.size:
        raise ConversionError(
            f'Float64MultiArray layout label is {label!r} ({len(label.split())} names) with '
            f'{values.size} values; expected {ACTION_LABEL!r} or one joint entry per value: this '
            'is not a vla/action message')
    if finite and not np.all(np.isfinite(values)):
        raise ConversionError(f'Float64MultiArray has non-finite values {values.tolist()}')
    return values


def multiarray_to_chunk(msg):
    """Read a chunk (K, D) back from a ``vla/action_chunk`` Float64MultiArray."""
    dims = list(msg.layout.dim)
    if len(dims) != 2 or dims[0].label != 'step':
        raise ConversionError('Float64MultiArray is not a vla/action_chunk message (its layout '
                              'needs dims [step, action])')
    steps, dim = int(dims[0].size), int(dims[1].size)
    data = np.asarray(msg.data, dtype=np.float64)[int(msg.layout.data_offset):]
    if data.size != steps * dim:
        raise ConversionError(f'vla/action_chunk holds {data.size} values for {steps} x {dim}')
    return data.reshape(steps, dim)


def joint_fields(names, row):
    """
    Return vla/joint_command's ``(name, position, dims)`` for one action row of a joint policy.

    ``name``: the ``action_joints`` entries verbatim; ``position``: the row's float64 values
    (rad or m; a ``gripper:`` entry's is 0 closed .. 1 open); ``dims``: vla/action's layout.
    """
    names = tuple(names)
    values = np.asarray(row, dtype=np.float64)
    if values.shape != (len(names),) or not np.all(np.isfinite(values)):
        raise ConversionError(f'a joint action must be {len(names)} finite values (one per '
                              f'action_joints entry), got {values.tolist()}; nothing is '
                              'published')
    return names, values, ((' '.join(names), len(names), len(names)),)


def joint_chunk_fields(names, rows, period, start=0.0):
    """
    Return vla/joint_chunk's ``(joint_names, [(positions, time_from_start_ns)])``.

    ``rows`` (K', N): the rows the node will execute, row 0 the action of this tick; point i is
    due ``start + i * period`` seconds after the header's stamp (JTC's meaning of
    ``time_from_start``): ``start`` is how long after its image's stamp this tick sends row 0.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or not len(rows):
        raise ConversionError(f'a joint chunk must be (K, N) rows, got shape {rows.shape}')
    points = [(joint_fields(names, row)[1], int(round((start + i * period) * 1e9)))
              for i, row in enumerate(rows)]
    return tuple(names), points
