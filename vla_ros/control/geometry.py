"""
Rotations and vectors, in one place for the whole package (ROS-free, numpy only).

Conventions, everywhere in vla_ros:

* quaternions are ``(x, y, z, w)`` as in ROS messages (MuJoCo's ``(w, x, y, z)`` is converted
  with ``to_wxyz`` / ``from_wxyz`` at the simulator's edge);
* roll/pitch/yaw mean ``R = Rz(yaw) Ry(pitch) Rx(roll)``, the ROS/tf2 convention and OpenVLA /
  BridgeData V2's action convention; pitch comes back in [-pi/2, pi/2], roll and yaw in [-pi, pi];
* a rotation vector is axis * angle (rad).

The finite checks every numeric input passes live here too, so a NaN is refused the same way by
the bridge, the simulator and the parameter checks.
"""

import math

import numpy as np

_EPS = 1e-12


# ------------------------------------------------------------------------------ finite values
def is_finite_number(value):
    """Return True for a finite int or float (not a bool)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def finite_vector(values, size, name):
    """Return ``values`` as a float64 array of ``size`` finite numbers, else raise ValueError."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size != size or not np.all(np.isfinite(array)):
        raise ValueError(f'{name} must be {size} finite numbers, got {list(array)}')
    return array


def clamp_norm(vector, limit):
    """Return ``vector`` scaled down to norm ``limit`` if longer (its direction kept)."""
    norm = float(np.linalg.norm(vector))
    return vector * (limit / norm) if norm > limit else vector


def wrap_angle(angle):
    """Wrap radians to (-pi, pi] (scalars or arrays)."""
    angle = np.asarray(angle, dtype=np.float64)
    return angle - 2 * math.pi * np.ceil((angle - math.pi) / (2 * math.pi))


# ------------------------------------------------------------------------------ quaternions
def to_wxyz(xyzw):
    """Return a ROS ``(x, y, z, w)`` quaternion in MuJoCo's ``(w, x, y, z)`` order."""
    return np.array([xyzw[3], xyzw[0], xyzw[1], xyzw[2]], dtype=np.float64)


def from_wxyz(wxyz):
    """Return a MuJoCo ``(w, x, y, z)`` quaternion in ROS's ``(x, y, z, w)`` order."""
    return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]], dtype=np.float64)


def conjugate_wxyz(wxyz):
    """Return the conjugate (inverse rotation) of a MuJoCo ``(w, x, y, z)`` quaternion."""
    return np.array([wxyz[0], -wxyz[1], -wxyz[2], -wxyz[3]], dtype=np.float64)


def rpy_to_quaternion(roll, pitch, yaw):
    """Return the quaternion (x, y, z, w) of R = Rz(yaw) Ry(pitch) Rx(roll), as tf2's setRPY."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    return (sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy)


def quaternion_to_rpy(x, y, z, w):
    """
    Return (roll, pitch, yaw) of a quaternion, the inverse of ``rpy_to_quaternion``.

    The quaternion is normalised first; a zero or non-finite one raises ValueError.
    """
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(norm) or norm < _EPS:
        raise ValueError(f'quaternion ({x}, {y}, {z}, {w}) has norm {norm}; it must be finite '
                         'and non-zero (identity is 0, 0, 0, 1)')
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return roll, pitch, yaw


def quaternion_to_axis_angle(x, y, z, w):
    """
    Return axis * angle of a quaternion as robosuite's ``quat2axisangle`` (LIBERO's state).

    The quaternion is normalised first; the angle is ``2 acos(w)`` in [0, 2 pi] (no sign flip
    of ``w``, as robosuite does it), zero for the identity.
    """
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(norm) or norm < _EPS:
        raise ValueError(f'quaternion ({x}, {y}, {z}, {w}) has norm {norm}; it must be finite '
                         'and non-zero (identity is 0, 0, 0, 1)')
    x, y, z, w = x / norm, y / norm, z / norm, min(1.0, max(-1.0, w / norm))
    sin_half = math.sqrt(1.0 - w * w)
    if math.isclose(sin_half, 0.0, abs_tol=1e-12):
        return np.zeros(3)
    return np.array([x, y, z]) * 2.0 * math.acos(w) / sin_half


# ------------------------------------------------------------------------------ matrices
def rpy_to_matrix(roll, pitch, yaw):
    """Return R = Rz(yaw) Ry(pitch) Rx(roll) as a (3, 3) array."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def matrix_to_rpy(rot):
    """Return (roll, pitch, yaw) of a rotation matrix, pitch in [-pi/2, pi/2]."""
    pitch = math.asin(max(-1.0, min(1.0, -rot[2, 0])))
    return math.atan2(rot[2, 1], rot[2, 2]), pitch, math.atan2(rot[1, 0], rot[0, 0])


def quaternion_to_matrix(q):
    """Return the rotation matrix of a quaternion (x, y, z, w), normalised first."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(rot):
    """Return the unit quaternion (x, y, z, w), w >= 0, of a rotation matrix."""
    trace = rot[0, 0] + rot[1, 1] + rot[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(rot[2, 1] - rot[1, 2]) / s, (rot[0, 2] - rot[2, 0]) / s,
             (rot[1, 0] - rot[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(rot)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(_EPS, 1.0 + rot[i, i] - rot[j, j] - rot[k, k]))
        q = [0.0, 0.0, 0.0, (rot[k, j] - rot[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (rot[j, i] + rot[i, j]) / s
        q[k] = (rot[k, i] + rot[i, k]) / s
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def rotation_vector(rot):
    """Return axis * angle (rad) of a rotation matrix: exp([v]x) == rot, angle in [0, pi]."""
    q = matrix_to_quaternion(rot)
    sin_half = float(np.linalg.norm(q[:3]))
    if sin_half < _EPS:
        return np.zeros(3)
    return q[:3] / sin_half * 2.0 * math.atan2(sin_half, q[3])


def rotation_from_vector(vec):
    """Return exp([vec]x), the rotation of angle |vec| about vec (Rodrigues)."""
    angle = float(np.linalg.norm(vec))
    if angle < _EPS:
        return np.eye(3)
    x, y, z = np.asarray(vec) / angle
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def compose_pose(position, quaternion, delta):
    """
    Apply a delta ``[dx, dy, dz, droll, dpitch, dyaw]`` to a pose, Bridge-style.

    The translation is added in the base frame; the rotation turns about the end-effector
    position with base-aligned axes and left-multiplies: ``R_new = R_delta @ R``. Returns
    (new position, new quaternion).
    """
    rot = rpy_to_matrix(*delta[3:6]) @ quaternion_to_matrix(quaternion)
    return np.asarray(position, dtype=np.float64) + delta[:3], matrix_to_quaternion(rot)
