"""
Conversions between ROS messages and numpy: camera images in, 7-D actions out.

ROS-free apart from the message classes: no node code, so the node, the simulator, offline
evaluation and the tests all share one path. Every bad input raises ``ConversionError`` with a
message naming the problem and the fix.

Images follow cv_bridge's ``imgmsg_to_cv2(msg, 'rgb8')`` (ROS 2, vision_opencv ``cv_bridge.cpp``):

* rgb8 / bgr8 / rgba8 / bgra8 / mono8: ``cv::cvtColor`` with the matching ``COLOR_*2RGB`` code.
* mono16: cv_bridge first swaps bytes when ``is_bigendian`` differs from the host, then applies
  ``COLOR_GRAY2RGB`` and, since the bit depths differ, ``convertTo(CV_8U, 255. / 65535.)``: a
  *scaled, rounded* conversion, ``round(v * 255 / 65535) == round(v / 257)``, not ``v >> 8``.
  (ROS 1's old cv_bridge did an unscaled, saturating ``convertTo``, which turns most of a 16-bit
  image white.) ``v / 257`` never lands on .5, so the integer form ``(v + 128) // 257`` is exact.
* yuv422_yuy2 (alias yuyv): ``COLOR_YUV2RGB_YUY2``; yuv422 (alias uyvy): ``COLOR_YUV2RGB_UYVY``.

``Image.data`` is an ``array.array('B')`` in rclpy (and a numpy array in rosbags), so
``np.frombuffer`` over it shares memory: rgb8 comes back as a read-only view with no copy.

The action is ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` (float64), rotation deltas as
roll/pitch/yaw with R = Rz(yaw) Ry(pitch) Rx(roll), the ROS/tf2 convention.
"""

import array
import math

import cv2
from geometry_msgs.msg import PoseStamped
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, Float64MultiArray, MultiArrayDimension

ACTION_LABEL = 'dx dy dz droll dpitch dyaw gripper'
ACTION_NAMES = tuple(ACTION_LABEL.split())
ACTION_DIM = 7

# encoding -> (bytes per pixel, cv2 code to RGB or None). mono16 is handled on its own.
_DECODE = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB),
    'rgba8': (4, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, cv2.COLOR_BGRA2RGB),
    'mono8': (1, cv2.COLOR_GRAY2RGB),
    'mono16': (2, cv2.COLOR_GRAY2RGB),
    'yuv422_yuy2': (2, cv2.COLOR_YUV2RGB_YUY2),
    'yuyv': (2, cv2.COLOR_YUV2RGB_YUY2),
    'yuv422': (2, cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': (2, cv2.COLOR_YUV2RGB_UYVY),
}
SUPPORTED_ENCODINGS = tuple(_DECODE)
# encoding -> (bytes per pixel, cv2 code from RGB or None); mono encodings take (H, W) input.
_ENCODE = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_RGB2BGR),
    'rgba8': (4, cv2.COLOR_RGB2RGBA),
    'bgra8': (4, cv2.COLOR_RGB2BGRA),
    'mono8': (1, None),
    'mono16': (2, None),
}
_YUV = ('yuv422_yuy2', 'yuyv', 'yuv422', 'uyvy')
_IMREAD_RGB = getattr(cv2, 'IMREAD_COLOR_RGB', None)  # OpenCV >= 4.10 decodes straight to RGB


class ConversionError(ValueError):
    """A message or array that cannot be converted; the text names the problem and the fix."""


def _as_uint8(data):
    """View message bytes (array.array, bytes, ndarray, list) as a flat uint8 array."""
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        return np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)


def _rows(buf, height, width, pixel_bytes, step):
    """View ``buf`` as (height, width * pixel_bytes) rows ``step`` bytes apart, no copy."""
    return np.lib.stride_tricks.as_strided(
        buf, shape=(height, width * pixel_bytes), strides=(step, 1), writeable=False)


def image_to_rgb(msg, copy=False):
    """
    Convert a sensor_msgs/Image to an (H, W, 3) uint8 RGB array, as cv_bridge does.

    rgb8 returns a read-only view over ``msg.data`` (no copy; rows ``step`` bytes apart, so
    C-contiguous only without row padding) unless ``copy`` is true. Every other encoding, and
    ``copy=True``, returns a new C-contiguous, writable array.
    """
    encoding, height, width, step = msg.encoding, int(msg.height), int(msg.width), int(msg.step)
    if encoding not in _DECODE:
        raise ConversionError(
            f'unknown image encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}; '
            'publish one of those or use image_transport compressed (jpeg, png)')
    pixel_bytes, code = _DECODE[encoding]
    if height <= 0 or width <= 0:
        raise ConversionError(
            f'{encoding} image has zero size (width {width}, height {height}); the camera driver '
            'must fill width and height')
    if step < width * pixel_bytes:
        raise ConversionError(
            f'{encoding} image step {step} is smaller than width * bytes per pixel = {width} * '
            f'{pixel_bytes} = {width * pixel_bytes}; set step to the row length in bytes')
    buf = _as_uint8(msg.data)
    if buf.size < step * height:
        raise ConversionError(
            f'{encoding} image data has {buf.size} bytes, fewer than step * height = {step} * '
            f'{height} = {step * height}; the message is truncated or its step/height are wrong')
    if encoding in _YUV and width % 2:
        raise ConversionError(
            f'{encoding} image width {width} is odd; 4:2:2 YUV pairs pixels, so width must be '
            'even: fix the camera driver or publish rgb8/bgr8')
    rows = _rows(buf, height, width, pixel_bytes, step)  # (H, W * px) uint8 view
    if encoding == 'mono16':
        dtype = np.dtype('>u2' if msg.is_bigendian else '<u2')
        mono = np.ascontiguousarray(rows).view(dtype).astype(np.uint32)  # (H, W)
        gray = ((mono + 128) // 257).astype(np.uint8)  # == round(v * 255 / 65535), as cv_bridge
        return cv2.cvtColor(gray, code)
    pixels = rows.reshape(height, width, pixel_bytes)  # (H, W, px) view; padding stays skipped
    if code is None:
        return pixels.copy() if copy else pixels
    if pixel_bytes == 1:
        pixels = pixels[:, :, 0]  # (H, W)
    return cv2.cvtColor(pixels, code)


def compressed_to_rgb(msg):
    """
    Decode a sensor_msgs/CompressedImage (jpeg or png) to an (H, W, 3) uint8 RGB array.

    ``msg.format`` may be ``jpeg``, ``png`` or image_transport's ``rgb8; jpeg compressed bgr8``;
    an empty format is sniffed from the data. Grayscale becomes three equal channels, alpha is
    dropped. A JPEG that does not end with its EOI marker (a truncated frame) is rejected, since
    libjpeg would otherwise return it with its missing rows filled grey.
    """
    fmt = (msg.format or '').lower()
    if 'compresseddepth' in fmt or (fmt and not any(n in fmt for n in ('jpeg', 'jpg', 'png'))):
        raise ConversionError(
            f'unsupported compressed image format {msg.format!r}; supported: jpeg, png; use '
            "image_transport's compressed (not compressedDepth/theora) transport or raw images")
    buf = _as_uint8(msg.data)
    if buf.size == 0:
        raise ConversionError(
            'compressed image has no data; check the camera driver or use raw image_transport')
    if buf[:2].tobytes() == b'\xff\xd8':  # JPEG start of image; cameras may pad zeros after EOI
        tail = buf[-4096:]
        nonzero = np.flatnonzero(tail)
        if nonzero.size < 2 or tail[nonzero[-1]] != 0xD9 or tail[nonzero[-1] - 1] != 0xFF:
            raise ConversionError(
                'compressed JPEG has no end-of-image marker (truncated frame); check the '
                'network/QoS or the camera driver')
    try:
        if _IMREAD_RGB is not None:
            image = cv2.imdecode(buf, _IMREAD_RGB)
        else:
            image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            image = None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    except cv2.error as exc:
        raise ConversionError(
            f'cannot decode compressed image ({msg.format!r}, {buf.size} bytes): {exc}; '
            'publish a valid jpeg or png') from exc
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise ConversionError(
            f'cannot decode compressed image ({msg.format!r}, {buf.size} bytes): corrupt or not '
            'jpeg/png; check the camera driver or use raw image_transport')
    return image  # (H, W, 3)


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

    The quaternion is normalised first; pitch is in [-pi/2, pi/2], roll and yaw in [-pi, pi].
    """
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(norm) or norm < 1e-12:
        raise ConversionError(
            f'quaternion ({x}, {y}, {z}, {w}) has norm {norm}; it must be finite and non-zero '
            '(identity is 0, 0, 0, 1)')
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return roll, pitch, yaw


def _check_action(values, source):
    """Return ``values`` as a finite float64 array of shape (7,), else raise ConversionError."""
    try:
        action = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f'{source} is not numeric ({exc}); expected 7 floats '
                              f'[{ACTION_LABEL}]') from exc
    if action.shape != (ACTION_DIM,):
        raise ConversionError(
            f'{source} has shape {action.shape}, expected ({ACTION_DIM},) = [{ACTION_LABEL}]')
    bad = np.flatnonzero(~np.isfinite(action))
    if bad.size:
        names = ', '.join(f'{ACTION_NAMES[i]}={action[i]}' for i in bad)
        raise ConversionError(f'{source} has non-finite values ({names}); nothing is published')
    return action


def action_to_messages(action, stamp, frame_id, gripper_open_is_one=True):
    """
    Turn a 7-D action into (PoseStamped delta, Float64 gripper, Float64MultiArray raw action).

    The pose holds dx, dy, dz and the quaternion of droll, dpitch, dyaw; the gripper is clipped
    to [0, 1] and published as 1 - g when ``gripper_open_is_one`` is false; the multi-array
    carries the raw values, gripper unflipped and unclipped.
    """
    action = _check_action(action, 'action')
    pose = PoseStamped()
    _set_header(pose.header, stamp, frame_id)
    pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, action[:3])
    q = pose.pose.orientation
    q.x, q.y, q.z, q.w = rpy_to_quaternion(*map(float, action[3:6]))
    g = min(1.0, max(0.0, float(action[6])))
    gripper = Float64(data=g if gripper_open_is_one else 1.0 - g)
    raw = Float64MultiArray()
    raw.layout.dim = [MultiArrayDimension(label=ACTION_LABEL, size=ACTION_DIM, stride=ACTION_DIM)]
    raw.data = array.array('d', action.tobytes())
    return pose, gripper, raw


def messages_to_action(pose, gripper, gripper_open_is_one=True):
    """
    Rebuild the 7-D action from a PoseStamped (or Pose) delta and a Float64 (or float) gripper.

    Exact inverse of ``action_to_messages`` (to rounding) for pitch in (-pi/2, pi/2), roll and
    yaw in (-pi, pi] and gripper in [0, 1].
    """
    p = getattr(pose, 'pose', pose)
    roll, pitch, yaw = quaternion_to_rpy(p.orientation.x, p.orientation.y, p.orientation.z,
                                         p.orientation.w)
    g = float(getattr(gripper, 'data', gripper))
    if not gripper_open_is_one:
        g = 1.0 - g
    values = [p.position.x, p.position.y, p.position.z, roll, pitch, yaw, g]
    return _check_action(values, 'pose/gripper messages')


def multiarray_to_action(msg):
    """Read the 7-D action back from the Float64MultiArray written by ``action_to_messages``."""
    dims = list(msg.layout.dim)
    if dims and dims[0].label and dims[0].label != ACTION_LABEL:
        raise ConversionError(
            f'Float64MultiArray layout label is {dims[0].label!r}, expected {ACTION_LABEL!r}; '
            'this is not a vla/action message')
    offset = int(msg.layout.data_offset)
    return _check_action(np.asarray(msg.data, dtype=np.float64)[offset:], 'Float64MultiArray')


def string_from_cdr(raw):
    """
    Decode a serialized std_msgs/String strictly: invalid UTF-8 raises instead of being replaced.

    rclpy's own deserialisation silently replaces invalid UTF-8 with U+FFFD, which would turn a
    garbled instruction into a prompt. ``raw`` is the CDR bytes a ``raw=True`` subscription
    delivers: a 4-byte encapsulation header (its second byte's low bit: 1 = little endian), a
    uint32 length that counts the terminating NUL, then the bytes.
    """
    raw = bytes(raw)
    if len(raw) < 8 or raw[0] != 0 or raw[1] not in (0, 1, 6, 7):
        raise ConversionError('instruction message is not a CDR-serialized std_msgs/String; '
                              'publish std_msgs/msg/String')
    length = int.from_bytes(raw[4:8], 'little' if raw[1] & 1 else 'big')
    payload = raw[8:8 + length]
    if length == 0 or len(payload) != length or payload[-1] != 0:
        raise ConversionError(f'instruction message is truncated (length field {length}, '
                              f'{len(raw) - 8} bytes of data); publish std_msgs/msg/String')
    try:
        return payload[:-1].decode('utf-8')
    except UnicodeDecodeError as exc:
        raise ConversionError(f'instruction is not valid UTF-8 ({exc.reason} at byte '
                              f'{exc.start}); send UTF-8 text') from None
