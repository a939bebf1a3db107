"""Images cross a process boundary over DDS and convert back to the same pixels."""


import time

from conftest import wait_until
import cv2
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from test_conversions import oversized_jpeg, radiance_hdr
from test_vla_node import COMMANDS, start_camera, start_node

from vla_ros.control import images
from vla_ros.nodes import diagnostics
from vla_ros.nodes.messages import rgb_to_compressed
from vla_ros.sim.scenes import scene

pytestmark = pytest.mark.dds  # every test here talks DDS


def test_raw_and_compressed_images_from_another_process(ros, launch):
    raw = ros.subscribe(Image, 'camera/image_raw', qos_profile_sensor_data)
    compressed = ros.subscribe(CompressedImage, 'camera/image_raw/compressed',
                               qos_profile_sensor_data)
    launch('camera_stream', '--transport', 'both', '--rate', '10',
           '--frames', '1', '--seed', '7')
    expected = scene(0, 640, 480, seed=7)

    image = raw.wait_for(1, timeout=20.0)[0]
    assert (image.width, image.height, image.encoding) == (640, 480, 'rgb8')
    np.testing.assert_array_equal(images.image_to_rgb(image), expected)

    jpeg = compressed.wait_for(1, timeout=20.0)[0]
    assert 'jpeg' in jpeg.format
    decoded = images.compressed_to_rgb(jpeg)
    assert decoded.shape == expected.shape
    error = np.abs(decoded.astype(np.int16) - expected.astype(np.int16))
    assert error.mean() < 3.0 and np.percentile(error, 99) < 40
    # The stamps come from the publisher's clock and are the same for both transports.
    assert image.header.stamp.sec > 0


def _frames():
    """Return (data, format, the refusal) of frames that are not what they claim or are cut."""
    rgb = scene(0, 640, 480)
    ok, bmp = cv2.imencode('.bmp', rgb[..., ::-1])
    assert ok
    png = bytes(rgb_to_compressed(rgb, 'png').data)
    jpeg = bytes(rgb_to_compressed(rgb, 'jpeg').data)
    return [(bytes(bmp), 'jpeg', 'a BMP file'),  # OpenCV decodes it to the same 640 x 480
            (radiance_hdr(6000, 6000), 'jpeg', 'a Radiance HDR file'),
            (png, 'rgb8; jpeg compressed bgr8', 'but its data is a PNG'),
            (jpeg[:len(jpeg) // 2] + b'\xff\xd9', 'jpeg', 'premature end of data segment'),
            (b'\xff\xd8\xff\xe0 not really a jpeg', 'jpeg', 'no end-of-image marker'),
            # 679 bytes whose header claims 12000 x 12000: refused before decoding (432 MB).
            (oversized_jpeg(), 'jpeg', '144000000 pixels refused')]


def test_vla_node_refuses_frames_that_are_not_what_they_claim(ros, launch, tiny_checkpoint):
    diag_inbox = ros.subscribe(DiagnosticArray, '/diagnostics', COMMANDS)
    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', COMMANDS)
    node = start_node(launch, tiny_checkpoint, 'image_transport:=compressed',
                      'instruction:=pick up the red cup')
    node.wait_for_output('active', timeout=90.0)
    pub = ros.publisher(CompressedImage, 'camera/image_raw/compressed', qos_profile_sensor_data)
    ros.wait_for_subscribers(pub)

    def last_error():
        for msg in reversed(diag_inbox.messages):
            for status in msg.status:
                if status.name.endswith('control loop'):
                    return diagnostics.values_of(status)
        return {}

    refused = 0
    for data, fmt, problem in _frames():
        def seen():  # publish (20 Hz) until the control loop reports this frame refused
            msg = CompressedImage(format=fmt, data=data)
            msg.header.stamp = ros.node.get_clock().now().to_msg()
            pub.publish(msg)
            time.sleep(0.05)
            return problem in last_error().get('last_error', '')
        wait_until(seen, 20.0, interval=0.0, message=f'vla_node refusing {problem!r}')
        assert int(last_error()['bad_images']) > refused
        refused = int(last_error()['bad_images'])
    assert deltas.messages == [], 'a frame that is not what it claims reached the policy'
    # Still running, and a real JPEG stream on the same node gives actions.
    start_camera(launch, '--rate', '20', '--transport', 'compressed')
    deltas.wait_for(2, timeout=20.0)
    assert node.alive
