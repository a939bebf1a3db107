"""
One reader per message field, shared by the live nodes and the bag reader.

ROS-free, like ``images`` (which reads the image fields): each reader takes a message's *fields*
by attribute (``header.stamp.sec``, ``pose.position``, ``name``, ``position``), so an rclpy message
from a subscription and a rosbags message from a bag are read by the same lines. What vla_node
refuses is therefore refused offline in the same words, and vla_eval and vla_finetune see what the
node would have seen. Instructions are read from their serialized bytes, which both sides have:
a ``raw=True`` subscription live, ``Bag.messages(raw=True)`` offline.

* **stamps**: ``stamp_ns`` (a ``builtin_interfaces/Time``, exact), ``stamp_seconds``
  (``sec + nanosec * 1e-9``, the float every age and skew is computed from), and
  ``header_stamp_ns_from_cdr`` for a serialized message (the demo recorder's);
* **ee_pose** (geometry_msgs/PoseStamped): ``read_pose``, position, quaternion and stamp, in the
  frame the deltas are in (arm_bridge refuses a pose in another frame too);
* **joint states** (sensor_msgs/JointState): ``read_joints``, ``{name: position}`` and stamp; one
  position per name and each name once, else the message is refused (NaN is left to the state
  layout, which refuses it only in the entries it uses);
* **instructions** (std_msgs/String): ``string_from_cdr``, strict UTF-8.

Every refusal raises ``ConversionError`` with a message naming the problem and the fix.
"""

import collections

from vla_ros.control.images import ConversionError

NS = 1_000_000_000


def stamp_ns(stamp):
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * NS + int(stamp.nanosec)


def ns_to_seconds(ns):
    """
    Return integer nanoseconds as float seconds, computed as ``sec + nanosec * 1e-9``.

    The one float form of a stamp: ages and skews computed from a bag's stamps then equal those
    the live node computes from its messages.
    """
    ns = int(ns)
    return ns // NS + (ns % NS) * 1e-9


def stamp_seconds(stamp):
    """Return a builtin_interfaces/Time as float seconds (``ns_to_seconds``)."""
    return ns_to_seconds(stamp_ns(stamp))


def header_stamp_ns_from_cdr(raw):
    """Return the header stamp (ns) of a serialized message that starts with a std_msgs/Header."""
    order = 'little' if raw[1] & 1 else 'big'  # CDR encapsulation: 0x0001 little endian
    sec = int.from_bytes(raw[4:8], order, signed=True)
    return sec * NS + int.from_bytes(raw[8:12], order)


def read_pose(msg, frame=None, source='ee_pose', frame_option="parameter 'action_frame'"):
    """
    Return ``(position (x, y, z), quaternion (x, y, z, w), stamp_s)`` of a PoseStamped.

    ``frame``: the frame the pose must be in, the base frame of the deltas (None: any); a leading
    '/' is ignored on both sides, as arm_bridge does. ``frame_option`` names where ``frame`` is
    set (the parameter, the command-line option), for the message.
    """
    if frame is not None:
        found = msg.header.frame_id
        if found.lstrip('/') != frame.lstrip('/'):
            raise ConversionError(
                f'{source} is in frame {found!r}, expected {frame!r} ({frame_option}, the base '
                f'frame of the deltas); publish {source} in {frame!r} or set {frame_option} '
                'to the frame it is in')
    p, q = msg.pose.position, msg.pose.orientation
    return ((p.x, p.y, p.z), (q.x, q.y, q.z, q.w), stamp_seconds(msg.header.stamp))


def read_joints(msg, source='joint_states'):
    """
    Return ``({name: position}, stamp_s)`` of a JointState.

    Refused: names and positions of different lengths (which position is whose?), and a name
    given twice (which of its positions is it?). Non-finite positions are kept: the state layout
    refuses them in the joints it uses.
    """
    names, positions = list(msg.name), list(msg.position)
    if len(positions) != len(names):
        raise ConversionError(f'{source} has {len(names)} names but {len(positions)} positions; '
                              'publish one position per joint name')
    twice = sorted(name for name, n in collections.Counter(names).items() if n > 1)
    if twice:
        raise ConversionError(f'{source} names joint {", ".join(map(repr, twice))} more than '
                              'once; publish each joint once')
    return dict(zip(names, map(float, positions))), stamp_seconds(msg.header.stamp)


def string_from_cdr(raw):
    """
    Decode a serialized std_msgs/String strictly: invalid UTF-8 raises instead of being replaced.

    rclpy's own deserialisation silently replaces invalid UTF-8 with U+FFFD, which would turn a
    garbled instruction into a prompt. ``raw`` is the CDR bytes a ``raw=True`` subscription
    delivers and a bag stores: a 4-byte encapsulation header (its second byte's low bit: 1 =
    little endian), a uint32 length that counts the terminating NUL, then the bytes.
    """
    raw = bytes(raw)
    if len(raw) < 8 or raw[0] != 0 or raw[1] not in (0, 1, 6, 7):
        raise ConversionError('instruction message is not a CDR-serialized std_msgs/String; '
                              'publish std_msgs/msg/String')
    length = int.from_bytes(raw[4:8], 'little' if raw[1] & 1 else 'big')
    payload = raw[8:8 + length]
    if length == 0 or len(payload) != length or payload[-1] != 0:
        raise ConversionError(f'instruction message is truncated (length field {length}, '
                              f'{len(raw) - 8} bytes of data); publish std_msgs/msg/String')
    try:
        return payload[:-1].decode('utf-8')
    except UnicodeDecodeError as exc:
        raise ConversionError(f'instruction is not valid UTF-8 ({exc.reason} at byte '
                              f'{exc.start}); send UTF-8 text') from None
