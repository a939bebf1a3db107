"""
Camera frames from the fields of ROS image messages, without the message classes.

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
"""

import cv2
import numpy as np
import simplejpeg

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


# What a compressed frame is, read from its first bytes (its "magic number"), never from `format`.
_MAGIC = {'jpeg': b'\xff\xd8\xff', 'png': b'\x89PNG\r\n\x1a\n'}
_FORMAT_NAMES = {'jpeg': ('jpeg', 'jpg'), 'png': ('png',)}
# Only to name what was sent instead, in the error message.
_OTHER_MAGIC = ((b'BM', 'BMP'), (b'GIF8', 'GIF'), (b'II*\x00', 'TIFF'), (b'MM\x00*', 'TIFF'),
                (b'#?', 'Radiance HDR'), (b'RIFF', 'RIFF (WebP)'))


def _sniff(buf, fmt):
    """Return 'jpeg' or 'png' from the data's first bytes; raise when it is not what it claims."""
    head = buf[:8].tobytes()
    kind = next((k for k, magic in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        other = next((name for magic, name in _OTHER_MAGIC if head.startswith(magic)), None)
        raise ConversionError(
            f'compressed image ({fmt!r}, {buf.size} bytes) is not a JPEG or PNG: its data starts '
            f'{head.hex(" ")}{f", a {other} file" if other else ""}; only jpeg and png are '
            'decoded: fix the publisher or use raw image_transport')
    claimed = [k for k, names in _FORMAT_NAMES.items() if any(n in fmt.lower() for n in names)]
    if claimed and kind not in claimed:
        raise ConversionError(
            f'compressed image format says {fmt!r} but its data is a {kind.upper()}; a frame is '
            "decoded only when it is what it claims: fix the publisher's format field")
    return kind


def _header_size(buf, kind):
    """
    Return (width, height) as the decoder will read it, else raise before any decoder runs.

    JPEG: libjpeg-turbo's own header reader (simplejpeg), the library that decodes it below. PNG:
    the IHDR chunk, which libpng requires first, right after the signature.
    """
    if kind == 'jpeg':
        try:
            height, width = simplejpeg.decode_jpeg_header(buf, strict=False)[:2]
            return width, height
        except ValueError as exc:
            problem = str(exc)
        except KeyError:  # simplejpeg finds no chroma subsampling it knows (TJSAMP_UNKNOWN)
            problem = 'no frame header with a known chroma subsampling'
    elif buf[8:16].tobytes() == b'\x00\x00\x00\x0dIHDR' and buf.size >= 24:
        width, height = (int.from_bytes(buf[i:i + 4].tobytes(), 'big') for i in (16, 20))
        return width, height
    else:
        problem = 'no IHDR chunk after the signature'
    raise ConversionError(
        f'compressed {kind.upper()} ({buf.size} bytes) has a header whose size cannot be read '
        f'({problem}); refused before decoding: check the camera driver or the network')


def _decode_jpeg(buf):
    """
    Decode with libjpeg-turbo, strict: a recoverable error is a refusal, not grey rows.

    libjpeg fills what it could not decode (data cut and an EOI appended, a bad Huffman code) with
    grey and only warns; cv2.imdecode prints the warning and returns the image. ``strict`` raises
    it instead. The one warning that loses no pixel, junk bytes between segments ("extraneous
    bytes before marker", which some UVC webcams emit on every frame), is decoded anyway.
    Same pixels as ``cv2.imdecode`` (libjpeg-turbo, ISLOW DCT, fancy upsampling; tested).
    """
    try:
        return simplejpeg.decode_jpeg(buf, colorspace='RGB')  # (H, W, 3)
    except ValueError as exc:
        problem = exc
    if 'extraneous bytes' in str(problem):
        try:
            return simplejpeg.decode_jpeg(buf, colorspace='RGB', strict=False)  # (H, W, 3)
        except ValueError as exc:  # junk inside the header: simplejpeg stays strict there
            problem = exc
    raise ConversionError(
        f'cannot decode compressed JPEG ({buf.size} bytes): {problem}; the frame is corrupt or '
        'truncated: check the network/QoS or the camera driver')


def compressed_to_rgb(msg):
    """
    Decode a sensor_msgs/CompressedImage (jpeg or png) to an (H, W, 3) uint8 RGB array.

    ``msg.format`` may be ``jpeg``, ``png`` or image_transport's ``rgb8; jpeg compressed bgr8``;
    the data is recognised by its bytes (JPEG ``FF D8 FF``, PNG ``89 50 4E 47 0D 0A 1A 0A``) and
    is decoded only when it is what the format claims: a PNG labelled jpeg is refused as a
    mismatch (a publisher that mislabels frames is misconfigured, and image_transport's own
    decoder would take it by its bytes without a word), as is anything else (BMP, TIFF, GIF, HDR,
    WebP...) whatever its label. An empty format takes the data for what its bytes say.
    The size is read from the header before any decoder sees the data: more than
    ``MAX_IMAGE_PIXELS``, or a header whose size cannot be read, is refused. A JPEG that does
    not end with its EOI marker (a truncated frame), or whose data libjpeg can only partly decode
    (it would fill the missing rows grey), is refused. Grayscale becomes three equal channels,
    alpha is dropped.
    """
    fmt = msg.format or ''
    if 'compresseddepth' in fmt.lower() or (
            fmt and not any(n in fmt.lower() for n in ('jpeg', 'jpg', 'png'))):
        raise ConversionError(
            f'unsupported compressed image format {msg.format!r}; supported: jpeg, png; use '
            "image_transport's compressed (not compressedDepth/theora) transport or raw images")
    buf = as_uint8(msg.data)
    if buf.size == 0:
        raise ConversionError(
            'compressed image has no data; check the camera driver or use raw image_transport')
    kind = _sniff(buf, fmt)
    if kind == 'jpeg':  # cameras may pad zeros after EOI
        tail = buf[-4096:]
        nonzero = np.flatnonzero(tail)
        if nonzero.size < 2 or tail[nonzero[-1]] != 0xD9 or tail[nonzero[-1] - 1] != 0xFF:
            raise ConversionError(
                'compressed JPEG has no end-of-image marker (truncated frame); check the '
                'network/QoS or the camera driver')
    width, height = _header_size(buf, kind)
    _check_pixels(width, height, f'compressed image ({buf.size} bytes)')
    if kind == 'jpeg':
        return _decode_jpeg(buf)  # (H, W, 3)
    try:  # PNG, the only other kind that gets here
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
