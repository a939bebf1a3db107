"""
Publish a synthetic camera stream: a few seeded test scenes, cycled, stamped on the node clock.

For demos and tests without a camera::

    ros2 run vla_ros camera_stream --rate 20 --transport both --record /tmp/frames.txt

``--record`` appends ``sec nanosec index`` per published frame, so a test can tell which scene
carried which stamp (``vla_ros.sim.scenes.scene(index, ...)`` rebuilds it). With ``--count N``
the stream waits for a subscriber before its first frame, so all N frames are sent to someone
(the QoS is best effort).
"""

import argparse
import sys

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from vla_ros.nodes import messages, qos
from vla_ros.nodes.startup import report_problems, run
from vla_ros.sim.scenes import scene


class CameraStream(Node):
    """Publish ``frames`` scenes in turn on camera/image_raw (and/or /compressed)."""

    def __init__(self, args):
        super().__init__('camera_stream')
        self._args = args
        self._raw = self._compressed = self._record = None
        self._count = 0

    def start(self):
        """Check the arguments, then create the publishers; False if a problem was reported."""
        args = self._args
        problems = [f'--{name} is {value}; it must be {allowed}' for name, value, ok, allowed in (
            ('rate', args.rate, 0 < args.rate <= 1000, 'in (0, 1000] frames per second'),
            ('width', args.width, 1 <= args.width <= 8192, 'in 1 .. 8192 pixels'),
            ('height', args.height, 1 <= args.height <= 8192, 'in 1 .. 8192 pixels'),
            ('frames', args.frames, args.frames >= 1, 'at least 1'),
            ('count', args.count, args.count >= 0, '0 (forever) or more'),
        ) if not ok]
        if problems:
            report_problems(self.get_logger(), problems)
            return False
        self._scenes = [scene(i, args.width, args.height, args.seed) for i in range(args.frames)]
        if args.transport in ('raw', 'both'):
            self._raw = self.create_publisher(Image, 'camera/image_raw', qos.SENSOR)
        if args.transport in ('compressed', 'both'):
            self._compressed = self.create_publisher(
                CompressedImage, 'camera/image_raw/compressed', qos.SENSOR)
        self._record = open(args.record, 'a') if args.record else None
        self.create_timer(1.0 / args.rate, self._publish)
        return True

    def close(self):
        if self._record:
            self._record.close()

    def _subscribed(self):
        publishers = [pub for pub in (self._raw, self._compressed) if pub is not None]
        return any(pub.get_subscription_count() > 0 for pub in publishers)

    def _publish(self):
        if self._args.count and self._count == 0 and not self._subscribed():
            return
        index = self._count % len(self._scenes)
        stamp = (self.get_clock().now() + Duration(seconds=self._args.stamp_offset)).to_msg()
        rgb = self._scenes[index]
        if self._raw is not None:
            self._raw.publish(messages.rgb_to_image(rgb, self._args.encoding, stamp=stamp,
                                                    frame_id='camera'))
        if self._compressed is not None:
            self._compressed.publish(messages.rgb_to_compressed(
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
    argv = sys.argv if argv is None else argv
    args = parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    return run(lambda: CameraStream(args), argv)


if __name__ == '__main__':
    sys.exit(main())
