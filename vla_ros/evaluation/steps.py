"""
The control steps of one bag, as the live node would have ticked through it.

Time base: bag **log time** (the recorder's receive time). Step ``k`` is at
``t_k = t_0 + round(k * 1e9 / rate)`` ns from the first image's log time to the last image's. Why
log time and not image header stamps: under ``ros2 bag play --clock`` the ``/clock`` the node
runs on *is* the log time, so the node ticks at these instants; the live node uses the newest
image it has *received*, which the log time records; and the instruction, ``vla/action`` and
gripper topics have no header at all, so only log time orders them against the images.

At each step, exactly as ``vla_node._tick``:

- the instruction is the last one logged at or before ``t_k`` (or ``--instruction``), stripped;
  empty, too long (over ``MAX_INSTRUCTION_CHARS``) or undecodable means idle: nothing predicted;
- the image is the newest one logged at or before ``t_k``. Its header stamp gives its age
  ``t_k - stamp``: older than ``max_image_age`` is *stale*, more than ``FUTURE_TOLERANCE_S`` in
  the future is *future*; neither is predicted (``max_image_age`` 0 turns both checks off, for
  bags whose camera stamps come from another clock);
- a frame the conversions refuse is *bad_image*; every other step is *ready*.

The bag is read once, in log-time order. A step is settled as soon as a message logged after
``t_k`` arrives, and kept only if an image is logged at or after ``t_k``. Only the images a step
uses are deserialised and converted, with the same ``vla_ros.conversions`` as the node.
"""

import dataclasses

import numpy as np

from vla_ros import conversions
from vla_ros.evaluation.bags import EvalError, READ_ERRORS
from vla_ros.runtime import image_age_status, MAX_INSTRUCTION_CHARS

STATUSES = ('ready', 'idle', 'stale', 'future', 'bad_image')


@dataclasses.dataclass
class Step:
    """One control step: when, which image and instruction, and whether it is predicted."""

    index: int
    time_ns: int  # t_k, bag log time
    image_index: int  # position of the image among the image topic's messages
    image_log_ns: int
    image_stamp_ns: int  # header stamp of the image (the live node stamps its outputs with it)
    instruction: str  # '' when idle
    status: str  # one of STATUSES
    rgb: object = None  # (H, W, 3) uint8 when ready
    detail: str = ''  # why the image was refused


@dataclasses.dataclass
class Streams:
    """The small topics, kept whole for the references: log times (ns) and values."""

    action_times: list = dataclasses.field(default_factory=list)
    actions: list = dataclasses.field(default_factory=list)  # float64 (7,)
    pose_times: list = dataclasses.field(default_factory=list)
    poses: list = dataclasses.field(default_factory=list)  # (x, y, z, roll, pitch, yaw)
    gripper_times: list = dataclasses.field(default_factory=list)
    grippers: list = dataclasses.field(default_factory=list)
    bad_instructions: int = 0


def step_time(t0_ns, k, rate):
    """Return ``t_k`` in ns: ``t0 + round(k * 1e9 / rate)``."""
    return t0_ns + int(round(k * 1e9 / rate))


def clean_instruction(text):
    """Return the instruction as the live node keeps it: stripped, '' (idle) when too long."""
    if len(text) > MAX_INSTRUCTION_CHARS:
        return ''
    return text.strip()


def image_stamp_ns(msg):
    """Return the header stamp of an image message in ns."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class StepReader:
    """
    Walk one opened ``Bag`` and yield its ``Step``s in order (see the module docstring).

    ``topics`` maps roles ('image', 'instruction', 'action', 'ee_pose', 'gripper') to topic
    names; roles that are absent are not read. ``instruction`` (non-empty) replaces the
    instruction topic. After the walk, ``streams`` holds the action, pose and gripper topics.
    """

    def __init__(self, bag, topics, rate, compressed=False, instruction=None,
                 max_image_age=0.5):
        self.bag = bag
        self.topics = topics
        self.rate = float(rate)
        self.compressed = compressed
        self.fixed_instruction = clean_instruction(instruction) if instruction else None
        self.max_image_age = float(max_image_age)
        self.streams = Streams()
        self.last_image_log_ns = None
        self._roles = {topic: role for role, topic in topics.items()}
        self._converted = (None, None)  # (image index, rgb or ConversionError)

    def __iter__(self):
        instruction = self.fixed_instruction if self.fixed_instruction is not None else ''
        image = None  # (index, log_ns, raw bytes)
        pending = []  # settled steps waiting for an image logged at or after them
        t0 = None
        k = 0
        count = -1
        for topic, log_ns, data in self.bag.messages(sorted(self._roles), raw=True):
            while t0 is not None and step_time(t0, k, self.rate) < log_ns:
                pending.append((k, step_time(t0, k, self.rate), image, instruction))
                k += 1
            role = self._roles[topic]
            if role == 'image':
                count += 1
                image = (count, log_ns, data)
                self.last_image_log_ns = log_ns
                if t0 is None:
                    t0 = log_ns
                for item in pending:
                    yield self._settle(*item)
                pending = []
            elif role == 'instruction':
                if self.fixed_instruction is None:
                    instruction = self._instruction(data)
            else:
                self._store(role, log_ns, data)
        if t0 is not None:
            while step_time(t0, k, self.rate) <= self.last_image_log_ns:
                pending.append((k, step_time(t0, k, self.rate), image, instruction))
                k += 1
            for item in pending:
                if item[1] <= self.last_image_log_ns:
                    yield self._settle(*item)

    def _instruction(self, data):
        try:
            return clean_instruction(self.bag.deserialize(data, self.topics['instruction']).data)
        except (EvalError, *READ_ERRORS):
            self.streams.bad_instructions += 1  # the node counts it and goes idle
            return ''

    def _store(self, role, log_ns, data):
        msg = self.bag.deserialize(data, self.topics[role])
        s = self.streams
        if role == 'action':
            try:
                values = conversions.multiarray_to_action(msg)
            except conversions.ConversionError as exc:
                raise EvalError(f'reference action on {self.topics[role]} at log time '
                                f'{log_ns * 1e-9:.3f} s in bag {str(self.bag.path)!r}: {exc}; '
                                'use --reference ee_pose or another --action-topic') from None
            s.action_times.append(log_ns)
            s.actions.append(values)
        elif role == 'ee_pose':
            p = msg.pose
            try:
                rpy = conversions.quaternion_to_rpy(p.orientation.x, p.orientation.y,
                                                    p.orientation.z, p.orientation.w)
            except conversions.ConversionError as exc:
                raise EvalError(f'ee_pose on {self.topics[role]} at log time '
                                f'{log_ns * 1e-9:.3f} s in bag {str(self.bag.path)!r}: {exc}; '
                                'fix the recording or use --reference action') from None
            s.pose_times.append(log_ns)
            s.poses.append((p.position.x, p.position.y, p.position.z, *rpy))
        elif role == 'gripper':
            s.gripper_times.append(log_ns)
            s.grippers.append(float(msg.data))

    def _settle(self, k, t_ns, image, instruction):
        """Turn a step's inputs into a ``Step`` with its status (and frame when ready)."""
        index, log_ns, data = image
        msg = self.bag.deserialize(data, self.topics['image'])
        stamp = image_stamp_ns(msg)
        step = Step(k, t_ns, index, log_ns, stamp, instruction, 'ready')
        age = (t_ns - stamp) * 1e-9
        verdict = image_age_status(age, self.max_image_age) if self.max_image_age > 0 else 'ok'
        if not instruction:
            step.status = 'idle'
        elif verdict != 'ok':
            step.status = verdict
        else:
            rgb = self._convert(index, msg)
            if isinstance(rgb, conversions.ConversionError):
                step.status, step.detail = 'bad_image', str(rgb)
            else:
                step.rgb = rgb
        return step

    def _convert(self, index, msg):
        """Convert the frame once, even when several steps use it."""
        if self._converted[0] != index:
            try:
                if self.compressed:
                    rgb = conversions.compressed_to_rgb(msg)
                else:
                    rgb = conversions.image_to_rgb(msg)
            except conversions.ConversionError as exc:
                rgb = exc
            self._converted = (index, rgb)
        return self._converted[1]


def as_arrays(streams):
    """Return the streams as numpy arrays: (times int64 (N,), values float64 (N, D)) per role."""
    def pack(times, values, dim):
        return (np.asarray(times, dtype=np.int64),
                np.asarray(values, dtype=np.float64).reshape(len(times), dim))
    return {'action': pack(streams.action_times, streams.actions, 7),
            'ee_pose': pack(streams.pose_times, streams.poses, 6),
            'gripper': pack(streams.gripper_times, streams.grippers, 1)}
