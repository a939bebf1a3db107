"""
The inputs of a bag's control steps, in the order the live node would have received them.

Time base: bag **log time** (the recorder's receive time). Step ``k`` is at
``t_k = t_0 + round(k * 1e9 / rate)`` ns from the primary camera's first image's log time to its
last one's. Why log time and not image header stamps: under ``ros2 bag play --clock`` the
``/clock`` the node runs on *is* the log time, so the node ticks at these instants; the live node
uses the newest message of each topic it has *received*, which the log time records; and the
instruction, ``vla/action`` and gripper topics have no header at all, so only log time orders
them against the images.

``StepReader`` walks the bag once, in log-time order, and yields two kinds of events in time
order: ``Instruction`` (a ``std_msgs/String``'s recorded bytes decoded by the node's own
``readers.string_from_cdr``; an undecodable one carries the reason the node refuses it with) and
``StepInput`` (a tick at ``t_k`` with, for every camera, the newest frame logged at or before it,
paired as the node pairs them (``core.matched_frames`` on the newest two of each camera: with
``max_skew``, a camera whose new frame was logged before the others' uses its previous one),
decoded by the node's own ``vla_ros.control.images``, and, when a ``proprio`` layout is given,
the state ``StateLayout.read`` makes of the newest ``ee_pose`` and ``joint_states`` logged at or
before it, as the node's ``observations`` does: the same readers, so a JointState the node
refuses, or an ee_pose outside ``pose_frame``, is a bad state here too).
What each step *does* (idle, stale, skewed, predict, a queued chunk action) is not decided here:
``evaluate`` hands these events to the same ``ControlCore`` as the node. A step is yielded once a
message logged after ``t_k`` arrives, and only if a primary image is logged at or after ``t_k``
(steps past the primary camera's last frame are dropped). Only the frames a step uses are
deserialised and decoded, once each; the state messages likewise.
"""

import dataclasses

import numpy as np

from vla_ros.control import action_layout, images
from vla_ros.control.core import Frame, matched_frames, Observation
from vla_ros.control.geometry import quaternion_to_rpy
from vla_ros.control.readers import ns_to_seconds, read_pose, stamp_ns, string_from_cdr
from vla_ros.recordings.bags import RecordingError

# Steps one bag may have (duration x rate): about 11 h at 5 Hz, 1.9 h at 30 Hz.
MAX_STEPS = 200_000


@dataclasses.dataclass(frozen=True)
class Instruction:
    """An instruction message at ``log_ns``: its text, or why it is refused (``refused``)."""

    log_ns: int
    text: str = ''
    refused: str = ''


@dataclasses.dataclass(frozen=True)
class FrameInput:
    """One camera frame as a step sees it: its place in the bag, its stamp, the decoded image."""

    topic: str
    index: int  # position among the topic's messages
    log_ns: int
    stamp_ns: int  # header stamp
    rgb: object = None  # (H, W, 3) uint8, or None when refused
    error: object = None  # the ConversionError that refused the frame


def decode_frame(frame):
    """Return a ``FrameInput``'s image, or raise the error that refused it (``core.infer``)."""
    if frame.error is not None:
        raise frame.error
    return frame.rgb


@dataclasses.dataclass(frozen=True)
class StepInput:
    """One control tick's inputs: when, each camera's newest frame (None: none yet), the state."""

    index: int
    time_ns: int  # t_k, bag log time
    frames: tuple  # FrameInput or None per camera, primary first (the primary is never None)
    names: tuple  # the camera topics
    state: object = None  # vla_ros.control.core.State when a proprio layout is given

    @property
    def image_log_ns(self):
        return self.frames[0].log_ns

    @property
    def image_stamp_ns(self):
        """Return the primary frame's header stamp (the live node stamps its outputs with it)."""
        return self.frames[0].stamp_ns

    def observation(self, needs_state=False):
        """Return the ``Observation`` the live node's ``observations`` makes of these inputs."""
        frames = tuple(None if f is None else Frame(f, ns_to_seconds(f.stamp_ns), f.topic)
                       for f in self.frames)
        return Observation(frames, self.names, self.state, needs_state)


@dataclasses.dataclass
class Streams:
    """The small topics, kept whole for the references: log times (ns) and values."""

    action_times: list = dataclasses.field(default_factory=list)
    actions: list = dataclasses.field(default_factory=list)  # float64 (D,), one D per bag
    pose_times: list = dataclasses.field(default_factory=list)
    poses: list = dataclasses.field(default_factory=list)  # (x, y, z, roll, pitch, yaw)
    gripper_times: list = dataclasses.field(default_factory=list)
    grippers: list = dataclasses.field(default_factory=list)


def step_time(t0_ns, k, rate):
    """Return ``t_k`` in ns: ``t0 + round(k * 1e9 / rate)``."""
    return t0_ns + int(round(k * 1e9 / rate))


class StepReader:
    """
    Walk one opened ``Bag`` and yield its ``Instruction`` and ``StepInput`` events in order.

    ``cameras``: the image topics, primary first. ``topics`` maps the other roles
    ('instruction', 'action', 'ee_pose', 'gripper' for the references, 'pose' and 'joints' for
    the state) to topic names; roles that are absent are not read. ``layout``: a
    ``StateLayout`` (or None: no state). ``max_skew``: the node's ``max_camera_skew`` (None:
    the newest frames, unpaired). ``pose_frame``: the frame the state's ee_pose must be in
    (vla_node's ``action_frame``; ``--action-frame``). After the walk, ``streams`` holds the
    action, pose and gripper topics.
    """

    def __init__(self, bag, cameras, topics, rate, compressed=False, layout=None,
                 max_skew=None, pose_frame='base_link'):
        self.bag = bag
        self.cameras = tuple(cameras)
        self.topics = dict(topics)
        self.rate = float(rate)
        self.compressed = compressed
        self.layout = layout if layout else None
        self.max_skew = max_skew
        self.pose_frame = pose_frame
        self.streams = Streams()
        self.last_image_log_ns = None
        self._uses = {}
        for i, topic in enumerate(self.cameras):
            self._uses.setdefault(topic, []).append(i)
        for role, topic in self.topics.items():
            self._uses.setdefault(topic, []).append(role)
        self._decoded = [{} for _ in self.cameras]  # per camera: {index: FrameInput}, 2 held
        self._state = (None, None)  # ((pose index, joints index), State)

    def __iter__(self):
        newest = [()] * len(self.cameras)  # per camera, newest 2: (index, log_ns, raw bytes)
        state_inputs = {'pose': None, 'joints': None}  # (index, log_ns, raw bytes)
        counts = {}
        pending = []  # events after the newest primary image, waiting for one logged after them
        t0 = None
        k = 0
        for topic, log_ns, data in self.bag.messages(sorted(self._uses), raw=True):
            while t0 is not None and step_time(t0, k, self.rate) < log_ns:
                pending.append((k, step_time(t0, k, self.rate), tuple(newest),
                                state_inputs['pose'], state_inputs['joints']))
                k += 1
            index = counts[topic] = counts.get(topic, -1) + 1
            for role in self._uses[topic]:
                if isinstance(role, int):
                    newest[role] = ((index, log_ns, data), *newest[role][:1])
                    if role == 0:
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
                elif role in state_inputs:
                    state_inputs[role] = (index, log_ns, data)
                else:
                    self._store(role, log_ns, data)
        if t0 is not None:
            while step_time(t0, k, self.rate) <= self.last_image_log_ns:
                pending.append((k, step_time(t0, k, self.rate), tuple(newest),
                                state_inputs['pose'], state_inputs['joints']))
                k += 1
            for item in pending:
                if isinstance(item, Instruction) or item[1] <= self.last_image_log_ns:
                    yield self._event(item)

    def _event(self, item):
        return item if isinstance(item, Instruction) else self._step(*item)

    def _instruction(self, log_ns, data):
        try:
            return Instruction(log_ns, string_from_cdr(data))
        except images.ConversionError as exc:  # the node counts it and goes idle
            return Instruction(log_ns, refused=str(exc))

    def _store(self, role, log_ns, data):
        msg = self.bag.deserialize(data, self.topics[role])
        s = self.streams
        if role == 'action':
            try:  # NaN or inf is kept: that step has no reference, and is no training sample
                values = action_layout.multiarray_to_values(msg, finite=False)
                if s.actions and values.shape != s.actions[0].shape:
                    raise images.ConversionError(
                        f'{values.size} values after {s.actions[0].size} in the same bag')
            except images.ConversionError as exc:
                raise RecordingError(f'reference action on {self.topics[role]} at log time '
                                     f'{log_ns * 1e-9:.3f} s in bag {str(self.bag.path)!r}: '
                                     f'{exc}; use --reference ee_pose or another '
                                     '--action-topic') from None
            s.action_times.append(log_ns)
            s.actions.append(values)
        elif role == 'ee_pose':
            position, quaternion, _ = read_pose(msg)
            try:
                rpy = quaternion_to_rpy(*quaternion)
            except ValueError as exc:
                raise RecordingError(f'ee_pose on {self.topics[role]} at log time '
                                     f'{log_ns * 1e-9:.3f} s in bag {str(self.bag.path)!r}: '
                                     f'{exc}; fix the recording or use --reference action'
                                     ) from None
            s.pose_times.append(log_ns)
            s.poses.append((*position, *rpy))
        elif role == 'gripper':
            s.gripper_times.append(log_ns)
            s.grippers.append(float(msg.data))

    def _step(self, k, t_ns, images, pose, joints):
        """Turn a step's inputs into a ``StepInput``: frames decoded and state assembled once."""
        held = [[(i, image) for image in images[i]] for i in range(len(images))]
        picked = matched_frames(held, self.max_skew,  # a previous frame is read only if needed
                                lambda item: ns_to_seconds(self._frame(*item).stamp_ns))
        frames = tuple(None if item is None else self._frame(*item) for item in picked)
        state = self._assemble(pose, joints) if self.layout else None
        return StepInput(k, t_ns, frames, self.cameras, state)

    def _frame(self, camera, image):
        index, log_ns, data = image
        cached = self._decoded[camera].get(index)
        if cached is None:
            topic = self.cameras[camera]
            msg = self.bag.deserialize(data, topic)
            decode = images.compressed_to_rgb if self.compressed else images.image_to_rgb
            rgb = error = None
            try:
                rgb = decode(msg)
            except images.ConversionError as exc:
                error = exc
            cached = FrameInput(topic, index, log_ns, stamp_ns(msg.header.stamp), rgb, error)
            held = self._decoded[camera]
            held[index] = cached
            for old in sorted(held)[:-2]:
                del held[old]
        return cached

    def _assemble(self, pose, joints):
        """Return the ``State`` of the newest pose and joint states (None: none yet)."""
        key = (pose[0] if pose else None, joints[0] if joints else None)
        if self._state[0] != key:
            messages = [None if item is None else self.bag.deserialize(item[2], self.topics[role])
                        for role, item in (('pose', pose), ('joints', joints))]
            state = self.layout.read(*messages, self.topics.get('pose', ''),
                                     self.topics.get('joints', ''), self.pose_frame,
                                     '--action-frame')
            self._state = (key, state)
        return self._state[1]


def as_arrays(streams, action_dim=action_layout.ACTION_DIM):
    """
    Return the streams as numpy arrays: (times int64 (N,), values float64 (N, D)) per role.

    ``action_dim``: the actions' D when the bag has none (else theirs).
    """
    def pack(times, values, dim):
        return (np.asarray(times, dtype=np.int64),
                np.asarray(values, dtype=np.float64).reshape(len(times), dim))
    dim = streams.actions[0].size if streams.actions else action_dim
    return {'action': pack(streams.action_times, streams.actions, dim),
            'ee_pose': pack(streams.pose_times, streams.poses, 6),
            'gripper': pack(streams.gripper_times, streams.grippers, 1)}
