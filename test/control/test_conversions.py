"""Pure tests of the conversions (control.images and .action_layout, nodes.messages), no ROS."""

import array
import math
import re
import types
import zlib

import cv2
from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from vla_ros.control.action_layout import ACTION_LABEL, multiarray_to_action
from vla_ros.control.images import (compressed_to_rgb, ConversionError, image_to_rgb,
                                    MAX_IMAGE_PIXELS)
from vla_ros.nodes.messages import (action_to_messages, messages_to_action, rgb_to_compressed,
                                    rgb_to_image)

WIDTHS = [1, 3, 17, 641]
PADDINGS = [0, 1, 3, 64]
HEIGHT = 5
MARGIN = 1e-3


def _rgb(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _message(rows, encoding, width, padding, is_bigendian=False):
    """Build an Image by hand from (H, W * px) uint8 rows plus ``padding`` junk bytes per row."""
    height, row_bytes = rows.shape
    junk = np.full((height, padding), 0xAB, np.uint8)  # (H, pad) bytes a decoder must skip
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=is_bigendian,
                step=row_bytes + padding)
    msg.data = array.array('B', np.concatenate([rows, junk], axis=1).tobytes())
    return msg


def _mono16_to_8(values):
    """cv_bridge's mono16 -> 8 bit: convertTo(CV_8U, 255. / 65535.), i.e. rounded, scaled."""
    return np.rint(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


def _cases(width, seed=0):
    """Yield (encoding, (H, W * px) rows, expected RGB, is_bigendian), independent of the code."""
    rgb = _rgb(HEIGHT, width, seed)
    alpha = np.full((HEIGHT, width, 1), 77, np.uint8)
    gray = rgb[..., 0]
    mono16 = np.random.default_rng(seed).integers(0, 65536, (HEIGHT, width), dtype=np.uint16)
    gray16 = np.repeat(_mono16_to_8(mono16)[..., None], 3, axis=2)
    flat = {
        'rgb8': rgb, 'bgr8': rgb[..., ::-1],
        'rgba8': np.concatenate([rgb, alpha], 2),
        'bgra8': np.concatenate([rgb[..., ::-1], alpha], 2),
    }
    for encoding, pixels in flat.items():
        yield encoding, pixels.reshape(HEIGHT, -1), rgb, False
    yield 'mono8', gray, np.repeat(gray[..., None], 3, axis=2), False
    yield 'mono16', mono16.astype('<u2').view(np.uint8), gray16, False
    yield 'mono16', mono16.astype('>u2').view(np.uint8), gray16, True


# ---------------------------------------------------------------------------------------- images

@pytest.mark.parametrize('padding', PADDINGS)
@pytest.mark.parametrize('width', WIDTHS)
def test_decode_every_encoding_with_padding(width, padding):
    for encoding, rows, expected, big in _cases(width):
        out = image_to_rgb(_message(rows, encoding, width, padding, big))
        assert out.shape == (HEIGHT, width, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, expected, err_msg=f'{encoding} big={big}')


@pytest.mark.parametrize('padding', PADDINGS)
@pytest.mark.parametrize('width', WIDTHS)
def test_round_trip_every_encoding(width, padding):
    rgb = _rgb(HEIGHT, width, seed=width)
    rgba = np.concatenate([rgb, np.full((HEIGHT, width, 1), 9, np.uint8)], axis=2)
    for encoding in ('rgb8', 'bgr8', 'rgba8', 'bgra8'):
        msg = rgb_to_image(rgb, encoding, step_padding=padding)
        assert msg.step == width * len(encoding[:-1]) + padding
        np.testing.assert_array_equal(image_to_rgb(msg), rgb, err_msg=encoding)
    for encoding in ('rgba8', 'bgra8'):
        msg = rgb_to_image(rgba, encoding, step_padding=padding)
        np.testing.assert_array_equal(image_to_rgb(msg), rgb, err_msg=f'{encoding} from RGBA')
    gray = rgb[..., 1]
    out = image_to_rgb(rgb_to_image(gray, 'mono8', step_padding=padding))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    mono16 = rgb[..., 0].astype(np.uint16) * 257 + rgb[..., 2]  # (H, W) spread over 16 bits
    for big in (False, True):
        msg = rgb_to_image(mono16, 'mono16', step_padding=padding, is_bigendian=big)
        assert msg.is_bigendian == big and msg.step == 2 * width + padding
        expected = np.repeat(_mono16_to_8(mono16)[..., None], 3, axis=2)
        np.testing.assert_array_equal(image_to_rgb(msg), expected, err_msg=f'big={big}')


def test_mono16_scaling_matches_cv_bridge_for_every_value():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = image_to_rgb(rgb_to_image(values, 'mono16'))[..., 0]
    np.testing.assert_array_equal(out, _mono16_to_8(values))
    # OpenCV's own scaled 16 -> 8 bit conversion (convertTo's arithmetic) agrees.
    np.testing.assert_array_equal(out, cv2.convertScaleAbs(values, alpha=255.0 / 65535.0))
    assert out[0, 128] == 0 and out[0, 129] == 1 and out[-1, -1] == 255  # not a plain v >> 8


def test_mono16_byte_order():
    values = np.array([[0x0102, 0xFF00]], np.uint16)
    little = _message(values.astype('<u2').view(np.uint8), 'mono16', 2, 0, False)
    big = _message(values.astype('<u2').view(np.uint8), 'mono16', 2, 0, True)  # bytes swapped
    np.testing.assert_array_equal(image_to_rgb(little)[..., 0], _mono16_to_8(values))
    np.testing.assert_array_equal(image_to_rgb(big)[..., 0], _mono16_to_8(values.byteswap()))


@pytest.mark.parametrize('padding', PADDINGS)
@pytest.mark.parametrize('width', [2, 4, 18, 640])
@pytest.mark.parametrize('encoding, code', [
    ('yuv422_yuy2', cv2.COLOR_YUV2RGB_YUY2), ('yuyv', cv2.COLOR_YUV2RGB_YUY2),
    ('yuv422', cv2.COLOR_YUV2RGB_UYVY), ('uyvy', cv2.COLOR_YUV2RGB_UYVY)])
def test_yuv422_matches_opencv(encoding, code, width, padding):
    rows = np.random.default_rng(width).integers(0, 256, (HEIGHT, 2 * width), dtype=np.uint8)
    expected = cv2.cvtColor(rows.reshape(HEIGHT, width, 2), code)
    out = image_to_rgb(_message(rows, encoding, width, padding))
    np.testing.assert_array_equal(out, expected)


def test_rgb8_is_a_zero_copy_view():
    msg = rgb_to_image(_rgb(4, 6))
    out = image_to_rgb(msg)
    assert isinstance(msg.data, array.array)  # rclpy's type, which exports its buffer
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    assert out.flags.c_contiguous and not out.flags.writeable
    msg.data[0] = (int(msg.data[0]) + 1) % 256  # the view sees the message's bytes
    assert out[0, 0, 0] == msg.data[0]
    padded = rgb_to_image(_rgb(4, 6), step_padding=3)
    assert np.shares_memory(image_to_rgb(padded), np.frombuffer(padded.data, np.uint8))
    copied = image_to_rgb(msg, copy=True)
    assert copied.flags.writeable and not np.shares_memory(copied,
                                                           np.frombuffer(msg.data, np.uint8))


def test_other_encodings_return_fresh_contiguous_arrays():
    rgb = _rgb(4, 6)
    for encoding in ('bgr8', 'rgba8', 'bgra8'):
        msg = rgb_to_image(rgb, encoding, step_padding=3)
        out = image_to_rgb(msg)
        assert out.flags.c_contiguous and out.flags.writeable
        assert not np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_accepts_rosbags_style_messages():
    """Messages read with the rosbags library carry data as a numpy uint8 array."""
    rgb = _rgb(3, 5)
    msg = types.SimpleNamespace(height=3, width=5, encoding='bgr8', is_bigendian=0, step=15,
                                data=np.ascontiguousarray(rgb[..., ::-1]).reshape(-1))
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_image_header_is_filled():
    clock_time = types.SimpleNamespace(to_msg=lambda: Image().header.stamp)  # like rclpy's Time
    msg = rgb_to_image(_rgb(2, 2), stamp=clock_time, frame_id='camera')
    assert msg.header.frame_id == 'camera'
    header = Image().header
    header.frame_id = 'other'
    header.stamp.sec = 12
    msg = rgb_to_image(_rgb(2, 2), header=header)
    assert msg.header.frame_id == 'other' and msg.header.stamp.sec == 12


@pytest.mark.parametrize('width', WIDTHS)
def test_matches_cv_bridge(width):
    # Only a ROS install provides a working cv_bridge (PyPI's cv-bridge is a broken ROS 1 copy).
    CvBridge = pytest.importorskip('cv_bridge').CvBridge
    bridge = CvBridge()
    for encoding, rows, _, big in _cases(width):
        msg = _message(rows, encoding, width, 0, big)
        np.testing.assert_array_equal(image_to_rgb(msg), bridge.imgmsg_to_cv2(msg, 'rgb8'),
                                      err_msg=encoding)


# ------------------------------------------------------------------------------ compressed images

def _smooth(height=480, width=640):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 40 + y / 60)], 2)
    return rgb.round().astype(np.uint8)  # (H, W, 3)


def _compressed(data, fmt):
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', bytes(data))
    return msg


def test_jpeg_round_trip_within_loss():
    rgb = _smooth()
    msg = rgb_to_compressed(rgb, 'jpeg', quality=95)
    assert msg.format == 'rgb8; jpeg compressed bgr8'
    out = compressed_to_rgb(msg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3.0
    # The same pixels as decoding to BGR with OpenCV and swapping channels.
    bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(out, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    for fmt in ('jpeg', 'JPEG', 'bgr8; jpeg compressed bgr8', ''):
        np.testing.assert_array_equal(compressed_to_rgb(_compressed(msg.data, fmt)), out)


def test_png_round_trip_exact():
    rgb = _rgb(31, 17)
    msg = rgb_to_compressed(rgb, 'png')
    assert msg.format == 'rgb8; png compressed bgr8'
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)
    gray = rgb[..., 0]
    mono = rgb_to_compressed(gray, 'png')
    assert mono.format == 'mono8; png compressed mono8'
    np.testing.assert_array_equal(compressed_to_rgb(mono), np.repeat(gray[..., None], 3, 2))


def test_png_with_alpha_drops_alpha():
    rgba = np.concatenate([_rgb(8, 9), np.full((8, 9, 1), 40, np.uint8)], axis=2)
    ok, data = cv2.imencode('.png', cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert ok
    np.testing.assert_array_equal(compressed_to_rgb(_compressed(data, 'png')), rgba[..., :3])


# ---------------------------------------------------------------------------------- bad images

def _image(**overrides):
    fields = {'height': 2, 'width': 3, 'encoding': 'rgb8', 'step': 9}
    fields.update(overrides)
    msg = Image(**{k: v for k, v in fields.items() if k != 'nbytes'})
    msg.data = array.array('B', bytes(overrides.get('nbytes', msg.step * msg.height)))
    return msg


@pytest.mark.parametrize('overrides, match', [
    ({'encoding': 'bayer_rggb8'}, r"unknown image encoding 'bayer_rggb8'; supported: rgb8"),
    ({'encoding': 'RGB8'}, 'unknown image encoding'),
    ({'nbytes': 17}, r'17 bytes, fewer than step \* height = 9 \* 2 = 18'),
    ({'step': 8}, r'step 8 is smaller than width \* bytes per pixel'),
    ({'width': 0, 'step': 0}, 'zero size'),
    ({'height': 0}, 'zero size'),
    ({'encoding': 'yuv422_yuy2', 'step': 6}, 'width 3 is odd'),
    ({'encoding': 'mono16', 'step': 5}, 'step 5 is smaller'),
])
def test_bad_images_raise_one_clear_error(overrides, match):
    with pytest.raises(ConversionError, match=match):
        image_to_rgb(_image(**overrides))
    assert issubclass(ConversionError, ValueError)


def oversized_jpeg(width=12000, height=12000):
    """Return a small real JPEG whose frame header claims ``width`` x ``height`` (a bomb)."""
    data = bytearray(rgb_to_compressed(_smooth(16, 16), 'jpeg').data)
    sof = data.index(b'\xff\xc0')  # baseline frame header: FFC0, length, precision, height, width
    data[sof + 5:sof + 9] = height.to_bytes(2, 'big') + width.to_bytes(2, 'big')
    return bytes(data)


def oversized_png(width=12000, height=12000):
    """Return a PNG header (valid CRCs) claiming ``width`` x ``height``, a token IDAT."""
    def chunk(kind, body):
        return (len(body).to_bytes(4, 'big') + kind + body
                + zlib.crc32(kind + body).to_bytes(4, 'big'))
    header = width.to_bytes(4, 'big') + height.to_bytes(4, 'big') + bytes([8, 2, 0, 0, 0])
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0'))
            + chunk(b'IEND', b''))


@pytest.mark.parametrize('make, fmt', [(oversized_jpeg, 'jpeg'), (oversized_png, 'png')])
def test_oversized_images_are_refused_before_decoding(make, fmt):
    msg = CompressedImage(format=fmt)
    msg.data = array.array('B', make())
    assert len(msg.data) < 5000  # would decode to 12000 x 12000 x 3 = 432 MB
    with pytest.raises(ConversionError, match='144000000 pixels refused'):
        compressed_to_rgb(msg)
    # The same size as a raw Image is refused from its header fields, before reading data.
    raw = Image(encoding='rgb8', width=12000, height=12000, step=36000)
    with pytest.raises(ConversionError, match=f'limit {MAX_IMAGE_PIXELS}'):
        image_to_rgb(raw)
    # At the limit a frame still decodes.
    side = int(math.isqrt(MAX_IMAGE_PIXELS))
    at_limit = Image(encoding='mono8', width=side, height=side, step=side)
    at_limit.data = bytes(side * side)
    assert image_to_rgb(at_limit).shape == (side, side, 3)


def test_corrupt_compressed_images_raise():
    real = bytes(rgb_to_compressed(_smooth(120, 160), 'jpeg', quality=95).data)
    noise = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(ConversionError, match='is not a JPEG or PNG'):
        compressed_to_rgb(_compressed(noise, 'jpeg'))
    for cut in (len(real) // 2, len(real) - 2, len(real) * 9 // 10):
        with pytest.raises(ConversionError, match='truncated'):
            compressed_to_rgb(_compressed(real[:cut], 'jpeg'))
    png = bytes(rgb_to_compressed(_smooth(120, 160), 'png').data)
    with pytest.raises(ConversionError, match='corrupt'):
        compressed_to_rgb(_compressed(png[:len(png) // 2], 'png'))
    with pytest.raises(ConversionError, match='no data'):
        compressed_to_rgb(_compressed(b'', 'jpeg'))
    with pytest.raises(ConversionError, match='unsupported compressed image format'):
        compressed_to_rgb(_compressed(real, 'theora'))
    with pytest.raises(ConversionError, match='unsupported compressed image format'):
        compressed_to_rgb(_compressed(real, '16UC1; compressedDepth png'))
    # Zero padding after the end-of-image marker (some MJPEG cameras) is fine.
    assert compressed_to_rgb(_compressed(real + bytes(32), 'jpeg')).shape == (120, 160, 3)


# A compressed frame is decoded only when its bytes are what its format claims, and only after its
# header gave a size: nothing else reaches a decoder.

def radiance_hdr(width, height):
    """Return a valid Radiance HDR (run-length encoded, all black) of ``width`` x ``height``."""
    runs = [127] * (width // 127) + ([width % 127] if width % 127 else [])
    line = b'\x02\x02' + width.to_bytes(2, 'big') + b''.join(bytes([128 + n, 0]) for n in runs) * 4
    header = f'#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n'.encode()
    return header + line * height


def _encoded(ext):
    ok, data = cv2.imencode(ext, _smooth(24, 32))
    assert ok
    return bytes(data)


OTHER_IMAGES = {  # name in the error -> a real file of that kind, which OpenCV would decode
    'BMP': lambda: _encoded('.bmp'), 'TIFF': lambda: _encoded('.tiff'),
    'Radiance HDR': lambda: _encoded('.hdr'), 'RIFF (WebP)': lambda: _encoded('.webp'),
    'GIF': lambda: bytes.fromhex('474946383961010001000000002c00000000010001000002024401003b'),
}


@pytest.mark.parametrize('fmt', ['jpeg', 'png', 'rgb8; jpeg compressed bgr8', ''])
@pytest.mark.parametrize('name', OTHER_IMAGES)
def test_other_image_files_are_refused_whatever_their_label(name, fmt):
    data = OTHER_IMAGES[name]()
    with pytest.raises(ConversionError, match=f'is not a JPEG or PNG: its data starts '
                                              f'{data[:8].hex(" ")}, a {re.escape(name)}'):
        compressed_to_rgb(_compressed(data, fmt))


def test_large_radiance_hdr_labelled_jpeg_is_refused_before_decoding():
    data = radiance_hdr(6000, 6000)  # 2.3 MB; OpenCV decodes it to 6000 x 6000 (108 MB)
    for fmt in ('jpeg', 'png'):
        with pytest.raises(ConversionError, match='a Radiance HDR file'):
            compressed_to_rgb(_compressed(data, fmt))


@pytest.mark.parametrize('kind, label', [('jpeg', 'png'), ('png', 'jpeg'), ('png', 'jpg'),
                                         ('jpeg', 'rgb8; png compressed bgr8')])
def test_format_and_bytes_must_agree(kind, label):
    # Refused, not decoded by its bytes: a publisher that mislabels its frames is misconfigured.
    data = rgb_to_compressed(_smooth(24, 32), kind).data
    with pytest.raises(ConversionError, match=f"format says '{label}' but its data is a "
                                              f'{kind.upper()}'):
        compressed_to_rgb(_compressed(data, label))
    # Unlabelled, the bytes decide.
    assert compressed_to_rgb(_compressed(data, '')).shape == (24, 32, 3)


def _jpeg_segments(data):
    """Return {marker byte: offset} of the JPEG's header segments, up to its start of scan."""
    found, at = {}, 2
    while data[at + 1] != 0xDA:
        found[data[at + 1]] = at
        at += 2 + int.from_bytes(data[at + 2:at + 4], 'big')
    found[0xDA] = at
    return found


def _garbled(data, offset, replacement):
    return data[:offset] + replacement + data[offset + len(replacement):]


def _headers():
    jpeg = bytes(rgb_to_compressed(_smooth(120, 160), 'jpeg', quality=95).data)
    png = bytes(rgb_to_compressed(_smooth(120, 160), 'png').data)
    at = _jpeg_segments(jpeg)
    return {
        # The frame header's marker (SOF0) overwritten: libjpeg finds no size.
        'jpeg SOF marker': (_garbled(jpeg, at[0xC0], b'\xff\x01'), 'jpeg', 'size cannot be read'),
        # The JFIF marker zeroed: libjpeg skips the segment as junk and warns.
        'jpeg APP0 marker': (_garbled(jpeg, 2, b'\xff\x00'), 'jpeg', 'extraneous bytes'),
        # The Huffman table segment's length field broken.
        'jpeg DHT length': (_garbled(jpeg, at[0xC4] + 2, b'\x00\x01'), 'jpeg',
                            'size cannot be read'),
        # A PNG whose first chunk is not IHDR: no size to check.
        'png IHDR name': (_garbled(png, 12, b'IHDX'), 'png', 'size cannot be read'),
        'png cut in IHDR': (png[:20], 'png', 'size cannot be read'),
    }


@pytest.mark.parametrize('case', list(_headers()))
def test_garbled_headers_are_refused(case):
    data, fmt, match = _headers()[case]
    with pytest.raises(ConversionError, match=match):
        compressed_to_rgb(_compressed(data, fmt))


def _truncated():
    jpeg = bytes(rgb_to_compressed(_smooth(120, 160), 'jpeg', quality=95).data)
    scan = _jpeg_segments(jpeg)[0xDA]
    scan_data = scan + 2 + int.from_bytes(jpeg[scan + 2:scan + 4], 'big')  # header ends here
    png = bytes(rgb_to_compressed(_smooth(120, 160), 'png').data)
    eoi, iend = b'\xff\xd9', png[-12:]
    return {
        'jpeg header only': jpeg[:scan_data],
        'jpeg header and 10 bytes': jpeg[:scan_data + 10],
        'jpeg cut, zeros after': jpeg[:len(jpeg) // 2] + bytes(64),
        # A valid header, the data cut, an end-of-image marker after it: libjpeg fills grey.
        'jpeg header, EOI': jpeg[:scan_data] + eoi,
        'jpeg half, EOI': jpeg[:len(jpeg) // 2] + eoi,
        'jpeg all but 100 bytes, EOI': jpeg[:-102] + eoi,
        'png cut before IEND': png[:-12],
        'png half, IEND': png[:len(png) // 2] + iend,
    }


@pytest.mark.parametrize('case', list(_truncated()))
def test_truncated_frames_are_refused(case):
    data = _truncated()[case]
    with pytest.raises(ConversionError, match='truncated|corrupt'):
        compressed_to_rgb(_compressed(data, case.split()[0]))


def test_junk_between_jpeg_segments_keeps_every_pixel():
    # Some UVC webcams put junk bytes before EOI on every frame; libjpeg warns "extraneous bytes"
    # but the image is complete, so it is decoded, to the same pixels as the clean frame.
    jpeg = bytes(rgb_to_compressed(_smooth(120, 160), 'jpeg', quality=95).data)
    dirty = jpeg[:-2] + b'\x00\x01' + jpeg[-2:]
    np.testing.assert_array_equal(compressed_to_rgb(_compressed(dirty, 'jpeg')),
                                  compressed_to_rgb(_compressed(jpeg, 'jpeg')))


@pytest.mark.parametrize('sampling', ['411', '420', '422', '444', 'gray'])
def test_jpeg_decodes_as_opencv_does(sampling):
    rgb = _smooth(120, 160)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90]
    if sampling != 'gray':
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                   getattr(cv2, f'IMWRITE_JPEG_SAMPLING_FACTOR_{sampling}')]
    ok, data = cv2.imencode('.jpg', rgb[..., 0] if sampling == 'gray' else rgb[..., ::-1], params)
    assert ok
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(compressed_to_rgb(_compressed(data, 'jpeg')),
                                  cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize('image, encoding', [
    (np.zeros((2, 3, 3), np.float32), 'rgb8'),
    (np.zeros((2, 3), np.uint8), 'rgb8'),
    (np.zeros((2, 3, 4), np.uint8), 'rgb8'),
    (np.zeros((2, 3), np.uint8), 'mono16'),
    (np.zeros((0, 3, 3), np.uint8), 'rgb8'),
    (np.zeros((2, 3, 3), np.uint8), 'bayer_rggb8'),
])
def test_bad_arrays_raise(image, encoding):
    with pytest.raises(ConversionError):
        rgb_to_image(image, encoding)


# --------------------------------------------------------------------------------------- actions

angles = st.floats(-math.pi, math.pi, allow_nan=False)
rolls = st.floats(-math.pi + MARGIN, math.pi - MARGIN)
pitches = st.floats(-math.pi / 2 + MARGIN, math.pi / 2 - MARGIN)
metres = st.floats(-1.0, 1.0)
grippers = st.floats(0.0, 1.0)


@settings(max_examples=300)
@given(metres, metres, metres, rolls, pitches, rolls, grippers, st.booleans())
def test_action_round_trip(dx, dy, dz, droll, dpitch, dyaw, gripper, open_is_one):
    action = np.array([dx, dy, dz, droll, dpitch, dyaw, gripper])
    stamp = Image().header.stamp
    stamp.sec, stamp.nanosec = 42, 7
    pose, grip, raw = action_to_messages(action, stamp, 'base_link', open_is_one)
    assert pose.header.frame_id == 'base_link'
    assert (pose.header.stamp.sec, pose.header.stamp.nanosec) == (42, 7)
    assert grip.data == (gripper if open_is_one else 1.0 - gripper)
    np.testing.assert_allclose(messages_to_action(pose, grip, open_is_one), action, rtol=0,
                               atol=1e-9)
    np.testing.assert_array_equal(multiarray_to_action(raw), action)


def test_multiarray_layout_and_gripper_clipping():
    action = [0.01, -0.02, 0.03, 0.1, -0.2, 0.3, 1.3]
    pose, grip, raw = action_to_messages(action, None, 'tool0')
    (dim,) = raw.layout.dim
    assert (dim.label, dim.size, dim.stride) == ('dx dy dz droll dpitch dyaw gripper', 7, 7)
    assert dim.label == ACTION_LABEL and raw.layout.data_offset == 0
    assert list(raw.data) == action  # raw: unclipped, unflipped
    assert grip.data == 1.0  # the command topic stays in [0, 1]
    assert action_to_messages(action, None, 'tool0', gripper_open_is_one=False)[1].data == 0.0
    assert messages_to_action(pose.pose, 0.25)[6] == 0.25  # a Pose and a bare float also work


@pytest.mark.parametrize('action, match', [
    ([0, 0, 0, 0, 0, 0, math.nan], r'non-finite values \(gripper=nan\)'),
    ([0, math.inf, 0, 0, 0, 0, 1], r'non-finite values \(dy=inf\)'),
    ([0, 0, 0, -math.inf, 0, 0, 1], 'droll=-inf'),
    ([0, 0, 0, 0, 0, 0], r'shape \(6,\), expected \(7,\)'),
    ([0] * 8, r'shape \(8,\)'),
    ([[0] * 7], r'shape \(1, 7\)'),
    (['a'] * 7, 'not numeric'),
])
def test_bad_actions_raise(action, match):
    with pytest.raises(ConversionError, match=match):
        action_to_messages(action, None, 'base_link')


def test_bad_action_messages_raise():
    pose, grip, raw = action_to_messages([0] * 7, None, 'base_link')
    grip.data = math.nan
    with pytest.raises(ConversionError, match='gripper=nan'):
        messages_to_action(pose, grip)
    short = Float64MultiArray(data=[0.0] * 6)
    with pytest.raises(ConversionError, match='expected'):
        multiarray_to_action(short)
    other = Float64MultiArray(data=[0.0] * 7)
    other.layout.dim = [MultiArrayDimension(label='joints', size=7, stride=7)]
    with pytest.raises(ConversionError, match='not a vla/action message'):
        multiarray_to_action(other)
    raw.data[2] = math.inf
    with pytest.raises(ConversionError, match='dz=inf'):
        multiarray_to_action(raw)
