"""
rosbag2 input and output of vla_eval and vla_finetune through ``rosbags`` (pure Python, no rclpy).

``Bag`` opens a rosbag2 directory (sqlite3 or MCAP; a single ``.db3``/``.mcap`` file works too),
checks that the topics a tool needs exist with the right types, and streams their messages in
bag log-time order. ``BagWriter`` writes a new rosbag2 directory in either storage format. Every
problem a user can cause with a bag (a missing or wrong topic, an empty, truncated or foreign
bag) raises ``RecordingError`` with one line naming the problem and the fix.

``action_messages`` and ``chunk_message`` build vla_node's output messages in the typestore's
own classes, from the layout the live node publishes (``control.action_layout.action_fields`` and
``chunk_fields``), so vla_eval writes them with no ROS install. Messages from
``vla_ros.nodes.messages`` (rclpy message classes, where ROS is there) are written with
``to_rosbags``, a field-by-field copy into the typestore's classes.
"""

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from vla_ros.control.action_layout import ACTION_DIMS, action_fields, chunk_fields
import yaml

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
STRING = 'std_msgs/msg/String'
FLOAT64 = 'std_msgs/msg/Float64'
FLOAT64_MULTI_ARRAY = 'std_msgs/msg/Float64MultiArray'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
JOINT_STATE = 'sensor_msgs/msg/JointState'
STORAGES = ('sqlite3', 'mcap')
_PLUGINS = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
_SUFFIXES = {'.db3': 'sqlite3', '.mcap': 'mcap'}
# What reading a damaged storage file raises: almost anything. Besides the errors of rosbags,
# sqlite3 and apsw, fuzzing truncated, bit-flipped and zero-filled bags (sqlite3 and MCAP, plain
# and zstd-compressed) found OverflowError and MemoryError (a corrupt length asks for an
# impossible read before the data runs out; nothing is allocated), KeyError (a corrupt type
# name), SyntaxError (a corrupt message definition, which the typestore compiles), TypeError
# (corrupt MCAP metadata), struct.error, UnicodeDecodeError and zstd's ZstdError. So every call
# into rosbags on a bag's bytes (open, the message iterator, deserialize) takes any Exception as
# a damaged file; those calls run no code of ours, so no bug of ours is reported as one.
READ_ERRORS = (Exception,)
CDR_TAIL = 8  # bytes of padding a message may end with (deserialize_cdr)
_TYPESTORE = []


class RecordingError(ValueError):
    """A bad bag or data option; the text names the problem and the fix (both tools exit 2)."""


def typestore():
    """Return the ROS 2 Jazzy message classes and CDR serialisation (built once)."""
    if not _TYPESTORE:
        _TYPESTORE.append(get_typestore(Stores.ROS2_JAZZY))
    return _TYPESTORE[0]


def topic_name(name):
    """Return ``name`` as an absolute topic name: 'camera/image_raw' -> '/camera/image_raw'."""
    return '/' + name.strip().lstrip('/')


def _bag_storage(path):
    """Return 'sqlite3' or 'mcap' for a bag directory (metadata.yaml) or a storage file."""
    if path.is_file():
        return _SUFFIXES.get(path.suffix, 'sqlite3')
    try:
        meta = yaml.safe_load((path / 'metadata.yaml').read_text())
        storage = meta['rosbag2_bagfile_information']['storage_identifier']
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        storage = 'mcap' if any(path.glob('*.mcap')) else 'sqlite3'
    return storage if storage in STORAGES else 'sqlite3'


class Bag:
    """
    One rosbag2 recording opened for reading (use as a context manager).

    ``topics`` maps each topic to ``(type, message count)``; ``require`` checks a topic and its
    type; ``messages`` yields ``(topic, log time ns, rosbags message)``, or the raw CDR bytes when
    ``raw`` is true (``deserialize`` turns them into a message later).
    """

    def __init__(self, path):
        self.path = path
        self.storage = 'sqlite3'
        self.topics = {}
        self._reader = None
        self._connections = {}

    def __enter__(self):
        path = self.path
        if not path.exists():
            raise RecordingError(f'bag {str(path)!r} does not exist; pass a rosbag2 directory '
                                 '(the folder holding metadata.yaml)')
        if path.is_dir() and not (path / 'metadata.yaml').exists():
            files = sorted(p.name for p in path.iterdir())[:8]
            raise RecordingError(
                f'{str(path)!r} is not a rosbag2 directory: it has no metadata.yaml (it holds '
                f'{", ".join(files) if files else "nothing"}); pass the directory that '
                '`ros2 bag record -o` created')
        if path.is_file() and path.suffix not in _SUFFIXES:
            raise RecordingError(f'{str(path)!r} is not a rosbag2 bag; pass a rosbag2 directory '
                                 'or a .db3/.mcap file')
        self.storage = _bag_storage(path)
        try:
            reader = AnyReader([path], default_typestore=typestore())
            reader.open()
        except READ_ERRORS as exc:
            detail = _one_line(exc)
            if 'metadata' in detail.lower():
                raise RecordingError(
                    f'cannot read bag {str(path)!r}: its metadata.yaml is damaged '
                    f'({detail[:160]}); restore it from the recording, or rebuild it with '
                    '`ros2 bag reindex`') from None
            raise RecordingError(
                f'cannot read bag {str(path)!r} ({self.storage}): {detail}; the file is '
                'truncated or corrupt: re-record it, or for sqlite3 try `ros2 bag reindex`'
            ) from None
        self._reader = reader
        for conn in reader.connections:
            self._connections.setdefault(conn.topic, []).append(conn)
        self.topics = {name: (info.msgtype or 'mixed types', info.msgcount)
                       for name, info in reader.topics.items()}
        if sum(count for _, count in self.topics.values()) == 0:
            self.close()
            raise RecordingError(f'bag {str(path)!r} is empty: it has no messages '
                                 f'(topics: {self.describe_topics()}); record a run with '
                                 '`ros2 bag record` and pass that bag')
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def start_ns(self):
        """Return the log time of the first message (ns)."""
        return self._reader.start_time

    @property
    def end_ns(self):
        """Return the log time of the last message (ns)."""
        return self._reader.end_time

    def describe_topics(self):
        """Return 'topic (type, N msgs), ...' for error messages."""
        if not self.topics:
            return 'none'
        return ', '.join(f'{name} ({msgtype}, {count} msgs)'
                         for name, (msgtype, count) in sorted(self.topics.items()))

    def require(self, topic, msgtypes, what, option):
        """
        Check that ``topic`` exists with one of ``msgtypes`` and has messages; return its type.

        ``what`` names the topic's role and ``option`` the command-line option that changes it,
        both for the error message.
        """
        if topic not in self.topics:
            raise RecordingError(f'{what} topic {topic} is not in bag {str(self.path)!r}; its '
                                 f'topics are: {self.describe_topics()}; pass {option}')
        msgtype, count = self.topics[topic]
        if msgtype not in msgtypes:
            hint = ''
            if COMPRESSED_IMAGE in msgtypes and msgtype == IMAGE:
                hint = ' (raw images: drop --compressed)'
            elif IMAGE in msgtypes and msgtype == COMPRESSED_IMAGE:
                hint = ' (compressed images: add --compressed)'
            raise RecordingError(f'{what} topic {topic} in bag {str(self.path)!r} has type '
                                 f'{msgtype}, expected {" or ".join(msgtypes)}{hint}; pass '
                                 f'{option} naming a topic of that type (topics: '
                                 f'{self.describe_topics()})')
        if count == 0:
            raise RecordingError(f'{what} topic {topic} in bag {str(self.path)!r} has no '
                                 f'messages; pass {option} naming a recorded topic (topics: '
                                 f'{self.describe_topics()})')
        return msgtype

    def messages(self, topics, raw=False):
        """Yield ``(topic, log_ns, message or raw bytes)`` for ``topics`` in log-time order."""
        connections = [c for t in topics for c in self._connections.get(t, ())]
        if not connections:
            return
        try:
            for conn, log_ns, data in self._reader.messages(connections=connections):
                yield conn.topic, log_ns, data if raw else self.deserialize(data, conn.topic)
        except READ_ERRORS as exc:
            raise RecordingError(f'cannot read bag {str(self.path)!r} ({self.storage}): '
                                 f'{_one_line(exc)}; the file is truncated or corrupt: '
                                 're-record it') from None

    def deserialize(self, data, topic):
        """Turn raw CDR bytes recorded on ``topic`` into a rosbags message."""
        msgtype = self.topics[topic][0]
        try:
            if self._reader.is2:
                return deserialize_cdr(self._reader.typestore, data, msgtype)
            return self._reader.deserialize(data, msgtype)
        except READ_ERRORS as exc:
            raise RecordingError(f'cannot decode a {msgtype} message on {topic} in bag '
                                 f'{str(self.path)!r}: {_one_line(exc)}; the bag is '
                                 'corrupt') from None


def deserialize_cdr(store, data, msgtype):
    """
    Return the message of CDR bytes ``data``, as ``store.deserialize_cdr`` with a longer tail.

    ROS 2's Fast DDS ends a message with up to 8 bytes of padding past its last field (a
    JointState whose velocity and effort are empty, as vla_node's vla/joint_command and many
    robots' joint_states are, carries 8); rosbags allows 3 and refuses the rest as a size
    mismatch. Those bytes are read from the same buffer live subscribers read: taken here.
    """
    if len(data) < 4 or bytes(data[:2]) not in (b'\x00\x00', b'\x00\x01'):
        return store.deserialize_cdr(data, msgtype)  # its own error
    msgdef = store.get_msgdef(msgtype)
    read = msgdef.deserialize_cdr_le if data[1] else msgdef.deserialize_cdr_be
    message, end = read(memoryview(data)[4:], 0, msgdef.cls, store)
    if len(data) - 4 - end > CDR_TAIL:
        raise ValueError(f'CDR message size mismatch: {len(data) - 4 - end} bytes after the '
                         f'last field of {msgtype} (at most {CDR_TAIL} are padding)')
    return message


def stamp_header(stamp_ns, frame_id):
    """Return a rosbags std_msgs/Header stamped ``stamp_ns`` (ns) in ``frame_id``."""
    types = typestore().types
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    stamp = types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
    return types['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)


def _multiarray(dims, data):
    types = typestore().types
    layout = types['std_msgs/msg/MultiArrayLayout'](
        dim=[types['std_msgs/msg/MultiArrayDimension'](label=label, size=size, stride=stride)
             for label, size, stride in dims], data_offset=0)
    return types[FLOAT64_MULTI_ARRAY](layout=layout, data=np.asarray(data, np.float64))


def action_messages(action, stamp_ns, frame_id, gripper_open_is_one=True):
    """
    Return vla_node's (PoseStamped, Float64, Float64MultiArray) for ``action`` as rosbags messages.

    The fields are ``action_layout.action_fields``'s, the layout the live node publishes; the
    pose is stamped ``stamp_ns`` in ``frame_id``.
    """
    position, quaternion, gripper, values = action_fields(action, gripper_open_is_one)
    types = typestore().types
    pose = types['geometry_msgs/msg/Pose'](
        position=types['geometry_msgs/msg/Point'](*position),
        orientation=types['geometry_msgs/msg/Quaternion'](*quaternion))
    return (types[POSE_STAMPED](header=stamp_header(stamp_ns, frame_id), pose=pose),
            types[FLOAT64](data=gripper), _multiarray(ACTION_DIMS, values))


def chunk_message(rows):
    """Return a chunk (K, D) as vla_node's ``vla/action_chunk`` (``chunk_fields``)."""
    return _multiarray(*chunk_fields(rows))


def _one_line(exc):
    """Return ``exc`` as one line naming its type: a parser's text may span lines, or be empty."""
    text = ' '.join(str(exc).split())[:200]
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


def to_rosbags(msg, msgtype=None):
    """
    Copy an rclpy message (e.g. from ``vla_ros.nodes.messages``) into the typestore's class.

    ``msgtype`` defaults to the message's own type ('package/msg/Name'). Nested messages and
    lists of them are copied recursively; array fields become numpy arrays of their element type.
    """
    if msgtype is None:
        msgtype = f'{type(msg).__module__.split(".")[0]}/msg/{type(msg).__name__}'
    cls = typestore().types[msgtype]
    fields = {}
    for name, (kind, spec) in typestore().fielddefs[msgtype][1]:
        value = getattr(msg, name)
        fields[name] = _copy_field(value, kind, spec)
    return cls(**fields)


def _copy_field(value, kind, spec):
    """Copy one field: kind 1 base type, 2 message, 3 fixed array, 4 sequence (rosbags nodes)."""
    if kind == 2:
        return to_rosbags(value, spec)
    if kind in (3, 4):
        element_kind, element_spec = spec[0]
        if element_kind == 2:
            return [to_rosbags(item, element_spec) for item in value]
        if element_spec[0] == 'string':
            return list(value)
        return np.asarray(value, dtype=_NUMPY_TYPES[element_spec[0]])
    return value


_NUMPY_TYPES = {'bool': np.bool_, 'byte': np.uint8, 'char': np.uint8, 'int8': np.int8,
                'octet': np.uint8, 'uint8': np.uint8, 'int16': np.int16, 'uint16': np.uint16,
                'int32': np.int32, 'uint32': np.uint32, 'int64': np.int64, 'uint64': np.uint64,
                'float32': np.float32, 'float64': np.float64}


class BagWriter:
    """
    Write a new rosbag2 directory (use as a context manager).

    ``write(topic, log_ns, msg)`` takes a rosbags message, or an rclpy message (copied with
    ``to_rosbags``); each topic's type is registered on first use. ``storage`` is 'sqlite3' or
    'mcap'. An existing ``path`` is refused, as ``ros2 bag record`` does.
    """

    def __init__(self, path, storage='sqlite3'):
        if storage not in STORAGES:
            raise ValueError(f'storage {storage!r}: use one of {", ".join(STORAGES)}')
        self.path = path
        self.storage = storage
        self._writer = Writer(path, version=Writer.VERSION_LATEST,
                              storage_plugin=_PLUGINS[storage])
        self._connections = {}

    def __enter__(self):
        self._writer.open()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._writer.close()
        return False

    def add_topic(self, topic, msgtype):
        """Register ``topic`` with ``msgtype`` ('package/msg/Name'); return its connection."""
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._connections[topic] = conn
        return conn

    def write(self, topic, log_ns, msg):
        if not hasattr(msg, '__msgtype__'):
            msg = to_rosbags(msg)
        self.write_raw(topic, msg.__msgtype__, log_ns,
                       typestore().serialize_cdr(msg, msg.__msgtype__))

    def write_raw(self, topic, msgtype, log_ns, data):
        """Write already serialised CDR bytes of type ``msgtype``."""
        self._writer.write(self.add_topic(topic, msgtype), int(log_ns), data)


__all__ = ['action_messages', 'Bag', 'BagWriter', 'chunk_message', 'READ_ERRORS', 'RecordingError',
           'stamp_header', 'to_rosbags', 'topic_name', 'typestore']
