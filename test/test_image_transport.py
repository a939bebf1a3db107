"""Images cross a process boundary over DDS and convert back to the same pixels."""


import numpy as np
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from vla_ros.control import formats
from vla_ros.sim.scenes import scene


def test_raw_and_compressed_images_from_another_process(ros, launch):
    raw = ros.subscribe(Image, 'camera/image_raw', qos_profile_sensor_data)
    compressed = ros.subscribe(CompressedImage, 'camera/image_raw/compressed',
                               qos_profile_sensor_data)
    launch('camera_stream', '--transport', 'both', '--rate', '10',
           '--frames', '1', '--seed', '7')
    expected = scene(0, 640, 480, seed=7)

    image = raw.wait_for(1, timeout=20.0)[0]
    assert (image.width, image.height, image.encoding) == (640, 480, 'rgb8')
    np.testing.assert_array_equal(formats.image_to_rgb(image), expected)

    jpeg = compressed.wait_for(1, timeout=20.0)[0]
    assert 'jpeg' in jpeg.format
    decoded = formats.compressed_to_rgb(jpeg)
    assert decoded.shape == expected.shape
    error = np.abs(decoded.astype(np.int16) - expected.astype(np.int16))
    assert error.mean() < 3.0 and np.percentile(error, 99) < 40
    # The stamps come from the publisher's clock and are the same for both transports.
    assert image.header.stamp.sec > 0
