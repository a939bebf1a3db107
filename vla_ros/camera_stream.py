"""
Publish a synthetic camera stream: a few seeded test scenes, cycled, stamped on the node clock.

For demos and tests without a camera::

    python -m vla_ros.camera_stream --rate 20 --transport both --record /tmp/frames.txt

``--record`` appends ``sec nanosec index`` per published frame, so a test can tell which scene
carried which stamp (``scene(index, ...)`` rebuilds it). With ``--count N`` the stream waits for a
subscriber before its first frame, so all N frames are sent to someone (the QoS is best effort).
"""

import argparse
import sys

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from vla_ros import conversions


def scene(index, width=640, height=480, seed=0):
    """Return test scene ``index`` as (height, width, 3) uint8 RGB: a gradient and boxes."""
    rng = np.random.default_rng([seed, index])
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 255.0 * x / max(width - 1, 1)
    img[..., 1] = 255.0 * y / max(height - 1, 1)
    img[..., 2] = 128.0
    for _ in range(4):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 8, width // 2), rng.integers(height // 8, height // 2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
    return img.clip(0, 255).astype(np.uint8)


class CameraStream(Node):
    """Publish ``frames`` scenes in turn on camera/image_raw (and/or /compressed)."""

    def __init__(self, args):
        super().__init__('camera_stream')
        self._args = args
        self._scenes = [scene(i, args.width, args.height, args.seed) for i in range(args.frames)]
        self._raw = self._compressed = None
        if args.transport in ('raw', 'both'):
            self._raw = self.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
        if args.transport in ('compressed', 'both'):
            self._compressed = self.create_publisher(
                CompressedImage, 'camera/image_raw/compressed', qos_profile_sensor_data)
        self._record = open(args.record, 'a') if args.record else None
        self._count = 0
        self.create_timer(1.0 / args.rate, self._publish)

    def _subscribed(self):
        publishers = [pub for pub in (self._raw, self._compressed) if pub is not None]
        return any(pub.get_subscription_count() > 0 for pub in publishers)

    def _publish(self):
        if self._args.count and self._count == 0 and not self._subscribed():
            return
        index = self._count % len(self._scenes)
        stamp = (self.get_clock().now()
                 + rclpy.duration.Duration(seconds=self._args.stamp_offset)).to_msg()
        rgb = self._scenes[index]
        if self._raw is not None:
            self._raw.publish(conversions.rgb_to_image(rgb, self._args.encoding, stamp=stamp,
                                                       frame_id='camera'))
        if self._compressed is not None:
            self._compressed.publish(conversions.rgb_to_compressed(
                rgb, self._args.format, stamp=stamp, frame_id='camera'))
        if self._record:
            self._record.write(f'{stamp.sec} {stamp.nanosec} {index}\n')
            self._record.flush()
        self._count += 1
        if self._args.count and self._count >= self._args.count:
            raise SystemExit(0)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--rate', type=float, default=20.0, help='frames per second')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--encoding', default='rgb8', help='raw encoding: rgb8, bgr8, ...')
    parser.add_argument('--format', default='jpeg', help='compressed format: jpeg or png')
    parser.add_argument('--transport', choices=('raw', 'compressed', 'both'), default='raw')
    parser.add_argument('--frames', type=int, default=4, help='number of distinct scenes')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--stamp-offset', type=float, default=0.0,
                        help='seconds added to every stamp (tests of stale/future images)')
    parser.add_argument('--count', type=int, default=0,
                        help='stop after N frames, sent from the first subscriber on (0: never)')
    parser.add_argument('--record', help='append "sec nanosec index" per frame to this file')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(rclpy.utilities.remove_ros_args(sys.argv if argv is None else argv)[1:])
    rclpy.init(args=sys.argv if argv is None else argv)
    node = CameraStream(args)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
