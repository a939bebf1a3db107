"""
Test-only helpers: write synthetic rosbag2 bags, replay a bag into ROS on simulated time.

``write_bag`` builds a bag from plain Python values: frames go through ``vla_ros.nodes.messages``
(as the camera publishes them), everything else through rosbags' typestore classes.

``SimTimeReplay`` plays a bag to a ``vla_node`` started with ``use_sim_time:=true``, one control
tick at a time, so that the frame the node uses at each tick is deterministic (see its docstring).
"""

import importlib
import time

from builtin_interfaces.msg import Time
import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader
from rosgraph_msgs.msg import Clock

from vla_ros.control.geometry import rpy_to_quaternion
from vla_ros.nodes import messages
from vla_ros.recordings.bags import BagWriter, typestore
from vla_ros.sim.scenes import scene

NS = 1_000_000_000
MS_NS = 1_000_000
T0_NS = 1000 * NS  # a whole number of control periods, so node ticks fall on the step grid
WIDTH, HEIGHT = 64, 48


def ros_time(ns):
    return Time(sec=int(ns) // NS, nanosec=int(ns) % NS)


def frames(count, period_ns, start_ns=T0_NS, stamp_offset_ns=0):
    """Return [(log_ns, scene index, stamp_ns)] for ``count`` camera frames."""
    return [(start_ns + i * period_ns, i, start_ns + i * period_ns + stamp_offset_ns)
            for i in range(count)]


def image_message(index, stamp_ns, transport='raw', encoding='rgb8', fmt='jpeg'):
    """Return the rclpy Image/CompressedImage of synthetic scene ``index``."""
    rgb = scene(index, WIDTH, HEIGHT)
    if transport == 'compressed':
        return messages.rgb_to_compressed(rgb, fmt, stamp=ros_time(stamp_ns), frame_id='camera')
    return messages.rgb_to_image(rgb, encoding, stamp=ros_time(stamp_ns), frame_id='camera')


def write_bag(path, storage='sqlite3', images=(), transport='raw', encoding='rgb8', fmt='jpeg',
              instructions=(), actions=(), poses=(), grippers=(), image_topic=None,
              raw_messages=(), empty_topics=(), cameras=None, joint_states=(), chunks=()):
    """
    Write a bag and return its path.

    ``images``: (log_ns, scene index, stamp_ns); ``cameras``: {topic: images} for several
    cameras (instead of ``images`` on ``image_topic``); ``instructions``: (log_ns, text);
    ``actions``: (log_ns, 7 floats) on /vla/action; ``chunks``: (log_ns, rows (K, 7)) on
    /vla/action_chunk; ``poses``: (log_ns, (x, y, z), (roll, pitch, yaw)[, stamp_ns]) on
    /ee_pose (stamped with the log time unless given); ``joint_states``: (log_ns, stamp_ns,
    {name: position}) on /joint_states; ``grippers``: (log_ns, value) on /gripper/state;
    ``raw_messages``: (topic, log_ns, rosbags message); ``empty_topics``: (topic, type) without
    messages. Topics default to the live node's names.
    """
    ts = typestore()
    if image_topic is None:
        image_topic = '/camera/image_raw' + ('/compressed' if transport == 'compressed' else '')
    records = []
    for topic, stream in (cameras or {image_topic: images}).items():
        for log_ns, index, stamp_ns in stream:
            records.append((log_ns, topic, image_message(index, stamp_ns, transport, encoding,
                                                         fmt)))
    for log_ns, text in instructions:
        records.append((log_ns, '/vla/instruction', ts.types['std_msgs/msg/String'](data=text)))
    for log_ns, values in actions:
        records.append((log_ns, '/vla/action', messages.action_to_messages(
            values, ros_time(log_ns), 'base_link')[2]))
    pose_cls, point_cls, quat_cls = (ts.types['geometry_msgs/msg/' + n]
                                     for n in ('Pose', 'Point', 'Quaternion'))
    for log_ns, xyz, rpy, *stamp in poses:
        pose = pose_cls(position=point_cls(*map(float, xyz)),
                        orientation=quat_cls(*rpy_to_quaternion(*rpy)))
        records.append((log_ns, '/ee_pose', ts.types['geometry_msgs/msg/PoseStamped'](
            header=rosbags_header(stamp[0] if stamp else log_ns, 'base_link'), pose=pose)))
    for log_ns, stamp_ns, positions in joint_states:
        records.append((log_ns, '/joint_states', ts.types['sensor_msgs/msg/JointState'](
            header=rosbags_header(stamp_ns, ''), name=list(positions),
            position=np.array(list(positions.values()), np.float64),
            velocity=np.zeros(0), effort=np.zeros(0))))
    for log_ns, rows in chunks:
        records.append((log_ns, '/vla/action_chunk', messages.chunk_to_multiarray(rows)))
    for log_ns, value in grippers:
        records.append((log_ns, '/gripper/state', ts.types['std_msgs/msg/Float64'](data=value)))
    for topic, log_ns, msg in raw_messages:
        records.append((log_ns, topic, msg))
    records.sort(key=lambda r: r[0])
    with BagWriter(path, storage) as writer:
        for topic, msgtype in empty_topics:
            writer.add_topic(topic, msgtype)
        for log_ns, topic, msg in records:
            writer.write(topic, log_ns, msg)
    return path


def rosbags_header(stamp_ns, frame_id):
    """Return a rosbags std_msgs/Header stamped ``stamp_ns``."""
    ts = typestore()
    return ts.types['std_msgs/msg/Header'](
        stamp=ts.types['builtin_interfaces/msg/Time'](sec=int(stamp_ns) // NS,
                                                      nanosec=int(stamp_ns) % NS),
        frame_id=frame_id)


def read_topic(path, topic):
    """Return [(log_ns, rosbags message)] of one topic of a bag."""
    with AnyReader([path], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(log_ns, reader.deserialize(raw, conn.msgtype))
                for conn, log_ns, raw in reader.messages(connections=conns)]


class SimTimeReplay:
    """
    Publish a bag's messages and ``/clock`` through rclpy, one control tick at a time.

    ``ros2 bag play --clock`` streams messages and the clock at wall-clock pace, so which frame a
    node finds at a tick depends on scheduling. This helper makes it exact instead, tick by tick
    (``tick``): it publishes every message logged at or before ``t_k`` (the recorded CDR bytes,
    unchanged), waits ``settle_s`` for DDS to deliver them, then publishes ``/clock = t_k``, which
    fires the node's timer (its period divides ``t_k``), and lets the caller wait for the node's
    output. The clock never passes a message's log time before that message is out, exactly as in
    ``ros2 bag play --clock``.

    Publishers are reliable with a deep queue; the node's best-effort depth-1 camera subscription
    still keeps only the newest frame. ``topics``: replay only these (default: every topic), e.g.
    to leave out the outputs a recorded run holds.
    """

    def __init__(self, node, path, settle_s=0.15, topics=None):
        self.node = node
        self.settle_s = settle_s
        self.clock_pub = node.create_publisher(Clock, '/clock', QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE))
        qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
        self.messages = []  # [(log_ns, topic, cdr bytes)]
        self.publishers = {}
        with AnyReader([path], default_typestore=typestore()) as reader:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            for conn in connections:
                if conn.topic not in self.publishers:
                    package, _, name = conn.msgtype.split('/')
                    cls = getattr(importlib.import_module(f'{package}.msg'), name)
                    self.publishers[conn.topic] = node.create_publisher(cls, conn.topic, qos)
            for conn, log_ns, raw in reader.messages(connections=connections):
                self.messages.append((log_ns, conn.topic, bytes(raw)))
        self._next = 0

    def publish_clock(self, ns):
        self.clock_pub.publish(Clock(clock=ros_time(ns)))

    def tick(self, t_ns):
        """Publish the messages logged at or before ``t_ns``, settle, then the clock ``t_ns``."""
        sent = 0
        while self._next < len(self.messages) and self.messages[self._next][0] <= t_ns:
            _, topic, raw = self.messages[self._next]
            self.publishers[topic].publish(raw)
            self._next += 1
            sent += 1
        time.sleep(self.settle_s)
        self.publish_clock(t_ns)
        return sent


def assert_actions_equal(a, b):
    """Assert two action arrays are bit-for-bit equal."""
    np.testing.assert_array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, np.float64))


FRONT, WRIST = '/cam_front/image_raw', '/cam_wrist/image_raw'
FINGERS = ('finger_left', 'finger_right')
LIBERO_PROPRIO = ('ee_position', 'ee_axis_angle', 'joint:finger_left', 'joint:finger_right')
WRIST_SCENES = 100  # the wrist camera shows scene WRIST_SCENES + i when the front shows i


def robot_inputs(steps, period_ns=200 * MS_NS, camera_period_ns=100 * MS_NS):
    """
    Return the inputs of a two-camera robot with ee_pose and joint_states, as write_bag takes them.

    {'cameras': {FRONT: frames, WRIST: frames}, 'poses': [...], 'joint_states': [...]}: the front
    camera's frame ``i`` is logged at ``T0 + i * camera_period`` (so ``steps`` control steps at
    ``period`` from T0); the wrist's frame ``i`` 10 ms earlier, with scene ``WRIST_SCENES + i``;
    ee_pose and joint_states (fingers and one more joint) at twice the camera rate, starting
    before T0. Every stamp is its log time.
    """
    count = (steps - 1) * period_ns // camera_period_ns + 1
    front = [(T0_NS + i * camera_period_ns, i, T0_NS + i * camera_period_ns)
             for i in range(count)]
    wrist = [(log - 10 * MS_NS, WRIST_SCENES + i, log - 10 * MS_NS) for log, i, _ in front]
    half = camera_period_ns // 2
    poses, joints = [], []
    for i in range(-1, 2 * count):
        log = T0_NS + i * half - 5 * MS_NS
        poses.append((log, (0.4 + 0.01 * i, -0.05 + 0.002 * i, 0.3 - 0.003 * i),
                      (0.3 + 0.02 * i, -0.1, 0.05 * i)))
        joints.append((log + 2 * MS_NS, log + 2 * MS_NS,
                       {'finger_left': 0.04 - 0.001 * i, 'wrist_joint': 0.1 * i,
                        'finger_right': -0.04 + 0.001 * i}))
    return {'cameras': {FRONT: front, WRIST: wrist}, 'poses': poses, 'joint_states': joints}


def newest(records, t_ns):
    """Return the newest of ``records`` (log_ns first) logged at or before ``t_ns``."""
    return max((r for r in records if r[0] <= t_ns), key=lambda r: r[0])


def libero_state(inputs, t_ns):
    """Return the LIBERO state vector (8,) the robot's newest ee_pose and fingers give at t_ns."""
    from vla_ros.control.geometry import quaternion_to_axis_angle
    _, xyz, rpy = newest(inputs['poses'], t_ns)[:3]
    positions = newest(inputs['joint_states'], t_ns)[2]
    return np.array([*xyz, *quaternion_to_axis_angle(*rpy_to_quaternion(*rpy)),
                     positions['finger_left'], positions['finger_right']])


def mcap_records(data, start=8, end=None):
    """Yield (opcode, offset) of the MCAP records in data[start:end], and of those in chunks."""
    end = len(data) - 8 if end is None else end  # the file ends with its 8-byte magic
    while start + 9 <= end:
        opcode, length = data[start], int.from_bytes(data[start + 1:start + 9], 'little')
        yield opcode, start
        if opcode == 0x06:  # a chunk: 3 uint64 and a crc, the compression string, its records
            body = start + 9
            name = int.from_bytes(data[body + 28:body + 32], 'little')
            if not data[body + 32:body + 32 + name]:  # uncompressed: its records are readable
                yield from mcap_records(data, body + 32 + name + 8, start + 9 + length)
        start += 9 + length


def corruptions(data, storage, count=24):
    """
    Yield (what, damaged bytes), as a bad disk or a half-copied file leaves a bag.

    Cut, 0xff-filled and zero-filled at ``count`` offsets, and (MCAP) each record's length set
    to 2**64 - 1.
    """
    for i in range(count):
        at = 8 + (len(data) - 16) * i // count
        yield f'truncated at {at}', data[:at]
        yield f'8 bytes 0xff at {at}', data[:at] + b'\xff' * 8 + data[at + 8:]
        yield f'64 zero bytes at {at}', data[:at] + bytes(64) + data[at + 64:]
    for opcode, at in mcap_records(data) if storage == 'mcap' else ():
        yield f'record 0x{opcode:02x} at {at} of length 2**64 - 1', \
            data[:at + 1] + b'\xff' * 8 + data[at + 9:]
