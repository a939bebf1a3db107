"""
The inputs of a bag's control steps, in the order the live node would have received them.

Time base: bag **log time** (the recorder's receive time). Step ``k`` is at
``t_k = t_0 + round(k * 1e9 / rate)`` ns from the first image's log time to the last image's. Why
log time and not image header stamps: under ``ros2 bag play --clock`` the ``/clock`` the node
runs on *is* the log time, so the node ticks at these instants; the live node uses the newest
image it has *received*, which the log time records; and the instruction, ``vla/action`` and
gripper topics have no header at all, so only log time orders them against the images.

``StepReader`` walks the bag once, in log-time order, and yields two kinds of events in time
order: ``Instruction`` (a ``std_msgs/String`` as the node would decode it; an undecodable one
carries the reason it is refused) and ``StepInput`` (a tick at ``t_k`` with the newest image
logged at or before it, its header stamp, and that frame decoded by the node's own
``vla_ros.control.formats``). What each step *does* (idle, stale, future, predict, a queued chunk
action) is not decided here: ``evaluate`` hands these events to the same ``ControlCore`` as the
node. A step is yielded once a message logged after ``t_k`` arrives, and only if an image is
logged at or after ``t_k`` (steps past the last frame are dropped). Only the images a step uses
are deserialised and decoded, once each.
"""

import dataclasses

import numpy as np

from vla_ros.control import formats
from vla_ros.control.geometry import quaternion_to_rpy
from vla_ros.evaluation.bags import EvalError, READ_ERRORS

# Steps one bag may have (duration x rate): about 11 h at 5 Hz, 1.9 h at 30 Hz.
MAX_STEPS = 200_000


@dataclasses.dataclass(frozen=True)
class Instruction:
    """An instruction message at ``log_ns``: its text, or why it is refused (``refused``)."""

    log_ns: int
    text: str = ''
    refused: str = ''


@dataclasses.dataclass
class StepInput:
    """One control tick's inputs: when, and the newest frame (decoded, or why it was refused)."""

    index: int
    time_ns: int  # t_k, bag log time
    image_index: int  # position of the image among the image topic's messages
    image_log_ns: int
    image_stamp_ns: int  # header stamp (the live node stamps its outputs with it)
    rgb: object = None  # (H, W, 3) uint8, or None when refused
    error: object = None  # the ConversionError that refused the frame

    def decode(self, _msg=None):
        """Return the frame, or raise the ``ConversionError`` that refused it (``core.infer``)."""
        if self.error is not None:
            raise self.error
        return self.rgb


@dataclasses.dataclass
class Streams:
    """The small topics, kept whole for the references: log times (ns) and values."""

    action_times: list = dataclasses.field(default_factory=list)
    actions: list = dataclasses.field(default_factory=list)  # float64 (7,)
    pose_times: list = dataclasses.field(default_factory=list)
    poses: list = dataclasses.field(default_factory=list)  # (x, y, z, roll, pitch, yaw)
    gripper_times: list = dataclasses.field(default_factory=list)
    grippers: list = dataclasses.field(default_factory=list)


def step_time(t0_ns, k, rate):
    """Return ``t_k`` in ns: ``t0 + round(k * 1e9 / rate)``."""
    return t0_ns + int(round(k * 1e9 / rate))


def image_stamp_ns(msg):
    """Return the header stamp of an image message in ns."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class StepReader:
    """
    Walk one opened ``Bag`` and yield its ``Instruction`` and ``StepInput`` events in order.

    ``topics`` maps roles ('image', 'instruction', 'action', 'ee_pose', 'gripper') to topic
    names; roles that are absent are not read. After the walk, ``streams`` holds the action,
    pose and gripper topics.
    """

    def __init__(self, bag, topics, rate, compressed=False):
        self.bag = bag
        self.topics = topics
        self.rate = float(rate)
        self.compressed = compressed
        self.streams = Streams()
        self.last_image_log_ns = None
        self._roles = {topic: role for role, topic in topics.items()}
        self._decoded = (None, None)  # (image index, (rgb, error))

    def __iter__(self):
        image = None  # (index, log_ns, raw bytes)
        pending = []  # events after the newest image, waiting for an image logged after them
        t0 = None
        k = 0
        count = -1
        for topic, log_ns, data in self.bag.messages(sorted(self._roles), raw=True):
            while t0 is not None and step_time(t0, k, self.rate) < log_ns:
                pending.append((k, step_time(t0, k, self.rate), image))
                k += 1
            role = self._roles[topic]
            if role == 'image':
                count += 1
                image = (count, log_ns, data)
                self.last_image_log_ns = log_ns
                if t0 is None:
                    t0 = log_ns
                yield from (self._event(item) for item in pending)
                pending = []
            elif role == 'instruction':
                event = self._instruction(log_ns, data)
                if t0 is None:
                    yield event  # before the first step: it sets the starting instruction
                else:
                    pending.append(event)
            else:
                self._store(role, log_ns, data)
        if t0 is not None:
            while step_time(t0, k, self.rate) <= self.last_image_log_ns:
                pending.append((k, step_time(t0, k, self.rate), image))
                k += 1
            for item in pending:
                if isinstance(item, Instruction) or item[1] <= self.last_image_log_ns:
                    yield self._event(item)

    def _event(self, item):
        return item if isinstance(item, Instruction) else self._step(*item)

    def _instruction(self, log_ns, data):
        try:
            msg = self.bag.deserialize(data, self.topics['instruction'])
        except (EvalError, *READ_ERRORS) as exc:  # the node counts it and goes idle
            return Instruction(log_ns, refused=f'undecodable instruction: {exc}')
        return Instruction(log_ns, msg.data)

    def _store(self, role, log_ns, data):
        msg = self.bag.deserialize(data, self.topics[role])
        s = self.streams
        if role == 'action':
            try:
                values = formats.multiarray_to_action(msg)
            except formats.ConversionError as exc:
                raise EvalError(f'reference action on {self.topics[role]} at log time '
                                f'{log_ns * 1e-9:.3f} s in bag {str(self.bag.path)!r}: {exc}; '
                                'use --reference ee_pose or another --action-topic') from None
            s.action_times.append(log_ns)
            s.actions.append(values)
        elif role == 'ee_pose':
            p = msg.pose
            try:
                rpy = quaternion_to_rpy(p.orientation.x, p.orientation.y, p.orientation.z,
                                        p.orientation.w)
            except ValueError as exc:
                raise EvalError(f'ee_pose on {self.topics[role]} at log time '
                                f'{log_ns * 1e-9:.3f} s in bag {str(self.bag.path)!r}: {exc}; '
                                'fix the recording or use --reference action') from None
            s.pose_times.append(log_ns)
            s.poses.append((p.position.x, p.position.y, p.position.z, *rpy))
        elif role == 'gripper':
            s.gripper_times.append(log_ns)
            s.grippers.append(float(msg.data))

    def _step(self, k, t_ns, image):
        """Turn a step's inputs into a ``StepInput`` with its frame decoded (once per image)."""
        index, log_ns, data = image
        if self._decoded[0] != index:
            msg = self.bag.deserialize(data, self.topics['image'])
            decode = formats.compressed_to_rgb if self.compressed else formats.image_to_rgb
            try:
                frame = (decode(msg), None)
            except formats.ConversionError as exc:
                frame = (None, exc)
            self._decoded = (index, (image_stamp_ns(msg), *frame))
        stamp, rgb, error = self._decoded[1]
        return StepInput(k, t_ns, index, log_ns, stamp, rgb, error)


def as_arrays(streams):
    """Return the streams as numpy arrays: (times int64 (N,), values float64 (N, D)) per role."""
    def pack(times, values, dim):
        return (np.asarray(times, dtype=np.int64),
                np.asarray(values, dtype=np.float64).reshape(len(times), dim))
    return {'action': pack(streams.action_times, streams.actions, formats.ACTION_DIM),
            'ee_pose': pack(streams.pose_times, streams.poses, 6),
            'gripper': pack(streams.gripper_times, streams.grippers, 1)}
