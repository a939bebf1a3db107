"""
ROS messages from numpy and back: camera images out, actions out (deltas or joint targets).

The message-building half of the conversions; decoding frames and actions from message fields
(which offline evaluation shares) is ``vla_ros.control.images``, reading stamps, poses, joint
states and instructions is ``vla_ros.control.readers``, and every rotation is
``vla_ros.control.geometry``. Every bad input raises ``ConversionError`` with a message naming
the problem and the fix.
"""

import array

from builtin_interfaces.msg import Duration
import cv2
from geometry_msgs.msg import PoseStamped
import numpy as np
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64, Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.control.action_layout import (ACTION_DIMS, action_fields, check_action, chunk_fields,
                                           joint_chunk_fields, joint_fields)
from vla_ros.control.geometry import quaternion_to_rpy
from vla_ros.control.images import ConversionError
from vla_ros.control.readers import NS, stamp_ns
from vla_ros.control.trajectory import Point, Trajectory


# encoding -> (bytes per pixel, cv2 code from RGB or None); mono encodings take (H, W) input.
_ENCODE = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_RGB2BGR),
    'rgba8': (4, cv2.COLOR_RGB2RGBA),
    'bgra8': (4, cv2.COLOR_RGB2BGRA),
    'mono8': (1, None),
    'mono16': (2, None),
}


def _set_header(header, stamp, frame_id):
    """Fill a std_msgs/Header in place; ``stamp`` may be a Time message or an rclpy Time."""
    if stamp is not None:
        header.stamp = stamp.to_msg() if hasattr(stamp, 'to_msg') else stamp
    header.frame_id = frame_id


def rgb_to_image(image, encoding='rgb8', stamp=None, frame_id='', header=None, step_padding=0,
                 is_bigendian=False):
    """
    Build a sensor_msgs/Image from a numpy array (the inverse of ``image_to_rgb``).

    Input: (H, W, 3) uint8 RGB for rgb8/bgr8/rgba8/bgra8 (alpha 255), or (H, W, 4) RGBA for
    rgba8/bgra8; (H, W) uint8 for mono8; (H, W) uint16 for mono16 (``is_bigendian`` picks the
    byte order). ``step`` is width * bytes per pixel plus ``step_padding`` zero bytes per row.
    ``header`` (a std_msgs/Header) wins over ``stamp`` and ``frame_id``.
    """
    if encoding not in _ENCODE:
        raise ConversionError(
            f'cannot build an Image with encoding {encoding!r}; supported: {", ".join(_ENCODE)}')
    pixel_bytes, code = _ENCODE[encoding]
    arr = np.asarray(image)
    want_dtype = np.uint16 if encoding == 'mono16' else np.uint8
    if pixel_bytes <= 2:
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        shape_ok = arr.ndim == 2
    else:
        channels = (3, 4) if pixel_bytes == 4 else (3,)
        shape_ok = arr.ndim == 3 and arr.shape[2] in channels
    if not shape_ok or arr.dtype != want_dtype or 0 in arr.shape or step_padding < 0:
        raise ConversionError(
            f'cannot build a {encoding} Image from a {arr.dtype} array of shape {arr.shape} '
            f'(step_padding {step_padding}); pass (H, W) {np.dtype(want_dtype)} for mono, '
            '(H, W, 3) uint8 RGB or (H, W, 4) uint8 RGBA for colour, H and W > 0')
    if code is not None and arr.shape[2] == 4:
        code = {cv2.COLOR_RGB2RGBA: None, cv2.COLOR_RGB2BGRA: cv2.COLOR_RGBA2BGRA}[code]
    if code is not None:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), code)
    if encoding == 'mono16':
        arr = arr.astype('>u2' if is_bigendian else '<u2', copy=False)
    height, width = arr.shape[:2]
    row_bytes = width * pixel_bytes
    pixels = np.ascontiguousarray(arr).view(np.uint8).reshape(height, row_bytes)  # (H, W * px)
    if step_padding:
        padded = np.zeros((height, row_bytes + step_padding), np.uint8)  # (H, step)
        padded[:, :row_bytes] = pixels
        pixels = padded
    data = array.array('B')
    data.frombytes(pixels)  # one copy; the fastest form rclpy's data setter accepts
    msg = Image()
    if header is not None:
        msg.header = header
    else:
        _set_header(msg.header, stamp, frame_id)
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian = bool(is_bigendian and encoding == 'mono16')
    msg.step = row_bytes + step_padding
    msg.data = data
    return msg


def rgb_to_compressed(image, fmt='jpeg', quality=90, stamp=None, frame_id=''):
    """
    Encode an (H, W, 3) uint8 RGB or (H, W) uint8 mono array to a sensor_msgs/CompressedImage.

    ``format`` follows image_transport (``rgb8; jpeg compressed bgr8``). ``quality`` (0-100)
    applies to jpeg; png is lossless at OpenCV's default compression level.
    """
    arr = np.asarray(image)
    ext = {'jpeg': '.jpg', 'jpg': '.jpg', 'png': '.png'}.get(fmt)
    if ext is None:
        raise ConversionError(f'unsupported compressed format {fmt!r}; use jpeg or png')
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ConversionError(
            f'cannot compress a {arr.dtype} array of shape {arr.shape}; pass (H, W, 3) uint8 RGB '
            'or (H, W) uint8 mono')
    mono = arr.ndim == 2
    bgr = arr if mono else cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == '.jpg' else []
    ok, encoded = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ConversionError(f'OpenCV could not encode a {arr.shape} image as {fmt}')
    msg = CompressedImage()
    _set_header(msg.header, stamp, frame_id)
    codec = 'jpeg' if ext == '.jpg' else 'png'
    msg.format = f'mono8; {codec} compressed mono8' if mono else f'rgb8; {codec} compressed bgr8'
    data = array.array('B')
    data.frombytes(encoded)
    msg.data = data
    return msg


def action_to_messages(action, stamp, frame_id, gripper_open_is_one=True):
    """
    Turn a 7-D action into (PoseStamped delta, Float64 gripper, Float64MultiArray raw action).

    The pose holds dx, dy, dz and the quaternion of droll, dpitch, dyaw; the gripper is clipped
    to [0, 1] and published as 1 - g when ``gripper_open_is_one`` is false; the multi-array
    carries the raw values, gripper unflipped and unclipped.
    """
    position, quaternion, g, values = action_fields(action, gripper_open_is_one)
    pose = PoseStamped()
    _set_header(pose.header, stamp, frame_id)
    pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = position
    q = pose.pose.orientation
    q.x, q.y, q.z, q.w = quaternion
    return pose, Float64(data=g), _multiarray(ACTION_DIMS, values)


def joint_action_to_messages(names, row, stamp, plan=None, period=None, start=0.0):
    """
    Return ``((topic key, message), ...)`` of one joint-space action row (``action_layout``).

    ``joint_command``: a JointState of the ``action_joints`` entries and the row's positions
    (velocity and effort empty); ``joint_chunk`` (with a ``plan``: the rows the node will
    execute, the row first): a JointTrajectory, point i at ``start + i * period`` after the
    stamp (``joint_chunk_fields``); ``action``: the row
    as vla/action. All stamped ``stamp`` (the image's).
    """
    names, positions, dims = joint_fields(names, row)
    command = JointState()
    _set_header(command.header, stamp, '')
    command.name = list(names)
    command.position = array.array('d', positions.tobytes())
    out = [('joint_command', command)]
    if plan is not None:
        joint_names, points = joint_chunk_fields(names, plan, period, start)
        trajectory = trajectory_to_msg(Trajectory(
            joint_names, 0, tuple(Point(values, time_ns) for values, time_ns in points)))
        trajectory.header.stamp = stamp
        out.append(('joint_chunk', trajectory))
    out.append(('action', _multiarray(dims, positions)))
    return tuple(out)


def trajectory_to_msg(trajectory):
    """Return the JointTrajectory (positions only) of a ``control.trajectory.Trajectory``."""
    msg = JointTrajectory(joint_names=list(trajectory.joint_names))
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(trajectory.stamp_ns), NS)
    for point in trajectory.points:
        sec, nanosec = divmod(int(point.time_from_start_ns), NS)
        msg.points.append(JointTrajectoryPoint(
            positions=array.array('d', np.asarray(point.positions, np.float64).tobytes()),
            time_from_start=Duration(sec=sec, nanosec=nanosec)))
    return msg


def trajectory_from_msg(msg):
    """Return the ``control.trajectory.Trajectory`` a JointTrajectory message carries."""
    points = tuple(Point(tuple(p.positions), stamp_ns(p.time_from_start), tuple(p.velocities),
                         tuple(p.accelerations), tuple(p.effort)) for p in msg.points)
    return Trajectory(tuple(msg.joint_names), stamp_ns(msg.header.stamp), points)


def chunk_to_multiarray(rows):
    """Return a chunk (K, D) as ``vla/action_chunk``'s Float64MultiArray (``chunk_fields``)."""
    return _multiarray(*chunk_fields(rows))


def _multiarray(dims, data):
    """Return a Float64MultiArray of ``dims`` ((label, size, stride) each) and float64 ``data``."""
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=label, size=size, stride=stride)
                      for label, size, stride in dims]
    msg.data = array.array('d', np.asarray(data, dtype=np.float64).tobytes())
    return msg


def messages_to_action(pose, gripper, gripper_open_is_one=True):
    """
    Rebuild the 7-D action from a PoseStamped (or Pose) delta and a Float64 (or float) gripper.

    Exact inverse of ``action_to_messages`` (to rounding) for pitch in (-pi/2, pi/2), roll and
    yaw in (-pi, pi] and gripper in [0, 1].
    """
    p = getattr(pose, 'pose', pose)
    try:
        roll, pitch, yaw = quaternion_to_rpy(p.orientation.x, p.orientation.y, p.orientation.z,
                                             p.orientation.w)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    g = float(getattr(gripper, 'data', gripper))
    if not gripper_open_is_one:
        g = 1.0 - g
    values = [p.position.x, p.position.y, p.position.z, roll, pitch, yaw, g]
    return check_action(values, 'pose/gripper messages')
