"""
ROS message formats without the message classes: camera frames in, the action layout out.

ROS-free: these functions read the *fields* of a message (``encoding``, ``height``, ``step``,
``data``...), so they take rclpy messages from the live node and rosbags messages from
``vla_eval`` alike, and the node and evaluation decode every frame with one piece of code.
Building messages is ``vla_ros.nodes.messages``. Every bad input raises ``ConversionError`` with a
message naming the problem and the fix.

Images follow cv_bridge's ``imgmsg_to_cv2(msg, 'rgb8')`` (ROS 2, vision_opencv ``cv_bridge.cpp``):

* rgb8 / bgr8 / rgba8 / bgra8 / mono8: ``cv::cvtColor`` with the matching ``COLOR_*2RGB`` code.
* mono16: cv_bridge first swaps bytes when ``is_bigendian`` differs from the host, then applies
  ``COLOR_GRAY2RGB`` and, since the bit depths differ, ``convertTo(CV_8U, 255. / 65535.)``: a
  *scaled, rounded* conversion, ``round(v * 255 / 65535) == round(v / 257)``, not ``v >> 8``.
  ``v / 257`` never lands on .5, so the integer form ``(v + 128) // 257`` is exact.
* yuv422_yuy2 (alias yuyv): ``COLOR_YUV2RGB_YUY2``; yuv422 (alias uyvy): ``COLOR_YUV2RGB_UYVY``.

``Image.data`` is an ``array.array('B')`` in rclpy (and a numpy array in rosbags), so
``np.frombuffer`` over it shares memory: rgb8 comes back as a read-only view with no copy.

Size cap: an image of more than ``MAX_IMAGE_PIXELS`` pixels is refused before anything is
allocated for it. For compressed images the size is read from the file header, so a 2 MB JPEG
that would decode to gigabytes never reaches the decoder.

The action is ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` (float64), rotation deltas as
roll/pitch/yaw with R = Rz(yaw) Ry(pitch) Rx(roll) (see ``vla_ros.control.geometry``).
"""

import io
import warnings

import cv2
import numpy as np
from PIL import Image as PILImage

ACTION_LABEL = 'dx dy dz droll dpitch dyaw gripper'
ACTION_NAMES = tuple(ACTION_LABEL.split())
ACTION_DIM = 7
# 4096 x 4096: every camera a policy runs on (4K UHD is 8.3 MP) with room to spare; larger
# frames are refused before decoding (a 12000 x 12000 JPEG of 2 MB would take 430 MB as RGB).
MAX_IMAGE_PIXELS = 4096 * 4096

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
_YUV = ('yuv422_yuy2', 'yuyv', 'yuv422', 'uyvy')
_IMREAD_RGB = getattr(cv2, 'IMREAD_COLOR_RGB', None)  # OpenCV >= 4.10 decodes straight to RGB


class ConversionError(ValueError):
    """A message or array that cannot be converted; the text names the problem and the fix."""


def as_uint8(data):
    """View message bytes (array.array, bytes, ndarray, list) as a flat uint8 array."""
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        return np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)


def _check_pixels(width, height, what):
    if width * height > MAX_IMAGE_PIXELS:
        raise ConversionError(
            f'{what} of {width}x{height} = {width * height} pixels refused (limit '
            f'{MAX_IMAGE_PIXELS}, 4096x4096); configure the camera for a smaller resolution')


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
    _check_pixels(width, height, f'{encoding} image')
    if step < width * pixel_bytes:
        raise ConversionError(
            f'{encoding} image step {step} is smaller than width * bytes per pixel = {width} * '
            f'{pixel_bytes} = {width * pixel_bytes}; set step to the row length in bytes')
    buf = as_uint8(msg.data)
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


def _header_size(buf):
    """Return (width, height) from a JPEG/PNG header without decoding, or None if unreadable."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', PILImage.DecompressionBombWarning)
        try:
            with PILImage.open(io.BytesIO(buf.tobytes())) as image:
                return image.size
        except PILImage.DecompressionBombError as exc:  # PIL's own cap is far above ours
            raise ConversionError(f'compressed image ({buf.size} bytes) refused: {exc}; the '
                                  f'limit here is {MAX_IMAGE_PIXELS} pixels') from None
        except (OSError, ValueError, SyntaxError):
            return None  # not a header PIL knows: the decoder below reports it


def compressed_to_rgb(msg):
    """
    Decode a sensor_msgs/CompressedImage (jpeg or png) to an (H, W, 3) uint8 RGB array.

    ``msg.format`` may be ``jpeg``, ``png`` or image_transport's ``rgb8; jpeg compressed bgr8``;
    an empty format is sniffed from the data. Grayscale becomes three equal channels, alpha is
    dropped. A JPEG that does not end with its EOI marker (a truncated frame) is rejected, since
    libjpeg would otherwise return it with its missing rows filled grey. More than
    ``MAX_IMAGE_PIXELS`` in the header is refused before decoding.
    """
    fmt = (msg.format or '').lower()
    if 'compresseddepth' in fmt or (fmt and not any(n in fmt for n in ('jpeg', 'jpg', 'png'))):
        raise ConversionError(
            f'unsupported compressed image format {msg.format!r}; supported: jpeg, png; use '
            "image_transport's compressed (not compressedDepth/theora) transport or raw images")
    buf = as_uint8(msg.data)
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
    size = _header_size(buf)
    if size is not None:
        _check_pixels(size[0], size[1], f'compressed image ({buf.size} bytes)')
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


def check_action(values, source):
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


def multiarray_to_action(msg):
    """Read the 7-D action back from a Float64MultiArray written as vla/action."""
    dims = list(msg.layout.dim)
    if dims and dims[0].label and dims[0].label != ACTION_LABEL:
        raise ConversionError(
            f'Float64MultiArray layout label is {dims[0].label!r}, expected {ACTION_LABEL!r}; '
            'this is not a vla/action message')
    offset = int(msg.layout.data_offset)
    return check_action(np.asarray(msg.data, dtype=np.float64)[offset:], 'Float64MultiArray')


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
