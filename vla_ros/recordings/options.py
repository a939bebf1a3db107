"""
What vla_eval and vla_finetune read from a bag (``DataOptions``), its flags, and the bag check.

``DataOptions`` mirrors vla_node's parameters where the two meet: the cameras (``camera_topics``,
primary first; ``image_topic`` is the one-camera form), the state layout (``proprio``, read from
``ee_pose`` and ``joint_states``; the pose in ``action_frame``, the base frame of the deltas, or
the step has no usable state, as live), the instruction (a topic, or one text for every step),
the recorded actions, the control rate of the steps, and ``max_camera_skew``, by which a step's
frames are paired (``steps``). Invalid options raise ``RecordingError`` when constructed.

``add_data_arguments`` declares the flags of these options for both command lines (vla_eval's
adds the one-camera ``--image-topic`` and a fixed ``--instruction``), and ``data_fields`` turns
the parsed flags into ``DataOptions`` fields. ``check_bag`` validates one bag against the options
(size, topics, types, and that the first joint states name every ``joint:`` entry) while reading
at most one message; it raises ``RecordingError`` naming the problem and the fix (the flag).
"""

import dataclasses
import math

from vla_ros.control.core import repeated_cameras
from vla_ros.control.state import StateLayout
from vla_ros.recordings.bags import (COMPRESSED_IMAGE, FLOAT64_MULTI_ARRAY, IMAGE, JOINT_STATE,
                                     POSE_STAMPED, RecordingError, STRING, topic_name)
from vla_ros.recordings.steps import MAX_STEPS

MAX_RATE_HZ = 1000.0
COMPRESSED_SUFFIX = '/compressed'
LIBERO_PROPRIO = 'ee_position ee_axis_angle joint:<left finger> joint:<right finger>'


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """What to read from each bag and at which rate (topic names absolute)."""

    image_topic: str = ''  # '' = camera/image_raw, or camera/image_raw/compressed
    camera_topics: tuple = ()  # several cameras, primary first (replaces image_topic)
    compressed: bool = False
    instruction_topic: str = '/vla/instruction'
    instruction: str = ''  # non-empty: used at every step instead of the topic
    action_topic: str = '/vla/action'
    ee_pose_topic: str = '/ee_pose'  # the state's pose (and vla_eval's ee_pose reference)
    joint_states_topic: str = '/joint_states'
    proprio: tuple = ()  # the state layout, as vla_node's proprio parameter
    action_frame: str = 'base_link'  # the frame the state's ee_pose must be in, as vla_node's
    rate: float = 5.0
    max_camera_skew: float = 0.05  # None: the newest frames, unpaired

    # The recorded actions' role and flag, in the words of bag errors (vla_eval's differ).
    actions_role = ('action', '--action-topic T naming the recorded std_msgs/Float64MultiArray '
                    'actions (vla/action)')

    def __post_init__(self):
        object.__setattr__(self, 'camera_topics', tuple(self.camera_topics))
        object.__setattr__(self, 'proprio', tuple(self.proprio))
        if not (math.isfinite(self.rate) and 0 < self.rate <= MAX_RATE_HZ):
            raise RecordingError(f'--rate {self.rate:g} Hz: the control rate must be in (0, '
                                 f'{MAX_RATE_HZ:g}] Hz (no camera or policy ticks faster); pass '
                                 'the rate of vla_node, the rate the actions were recorded at, '
                                 'e.g. --rate 5')
        skew = self.max_camera_skew
        if skew is not None and (math.isnan(skew) or skew < 0):
            raise RecordingError(f'--max-camera-skew {skew} must be a number >= 0')
        if not self.action_frame.strip('/'):
            raise RecordingError(f'--action-frame {self.action_frame!r}: name the base frame of '
                                 'the deltas, the frame ee_pose is recorded in (default '
                                 'base_link)')
        problem = repeated_cameras(self.cameras())
        if problem:
            raise RecordingError(f'--camera-topics {problem}')
        self.layout()

    def cameras(self):
        """
        Return the camera topics, primary first.

        As vla_node's ``camera_topics``: with ``compressed``, ``/compressed`` is appended to each
        (unless it already ends so); ``image_topic`` is taken as it is.
        """
        if self.camera_topics:
            suffix = COMPRESSED_SUFFIX if self.compressed else ''
            return tuple(topic_name(t) if not suffix or topic_name(t).endswith(suffix)
                         else topic_name(t) + suffix for t in self.camera_topics)
        default = 'camera/image_raw' + (COMPRESSED_SUFFIX if self.compressed else '')
        return (topic_name(self.image_topic or default),)

    def layout(self):
        """Return the ``StateLayout`` of ``proprio`` (``RecordingError`` for a bad entry)."""
        try:
            return StateLayout(self.proprio)
        except ValueError as exc:
            raise RecordingError(f'--proprio: {exc}; e.g. --proprio {LIBERO_PROPRIO}') from None

    def topics(self):
        """
        Return {role: topic} of every topic read from a bag except the cameras.

        Roles: 'instruction', 'action' (the recorded actions), 'pose' and 'joints' (the state).
        """
        roles = {}
        if not self.instruction:
            roles['instruction'] = topic_name(self.instruction_topic)
        roles['action'] = topic_name(self.action_topic)
        layout = self.layout()
        if layout.needs_pose:
            roles['pose'] = topic_name(self.ee_pose_topic)
        if layout.joints:
            roles['joints'] = topic_name(self.joint_states_topic)
        return roles


def add_data_arguments(parser, training=False):
    """
    Add the data flags to ``parser`` (or an argument group); ``data_fields`` reads them back.

    vla_eval's form (the default) also offers ``--image-topic`` (one camera, the default) and
    ``--instruction TEXT``; ``training`` (vla_finetune) reads ``--camera-topics`` (default
    camera/image_raw) and the instruction topic. Each flag has one help, for both tools.
    """
    if training:
        parser.add_argument('--camera-topics', nargs='+', default=['camera/image_raw'],
                            metavar='T', help='one image topic per policy image, primary first '
                            '(default camera/image_raw)')
    else:
        cameras = parser.add_mutually_exclusive_group()
        cameras.add_argument('--image-topic', default=None, metavar='T',
                             help='image topic of a one-camera policy (default '
                             'camera/image_raw, with --compressed camera/image_raw/compressed)')
        cameras.add_argument('--camera-topics', nargs='+', default=None, metavar='T',
                             help="one image topic per policy image, primary first (vla_node's "
                             'camera_topics; with --compressed, /compressed is appended to '
                             'each)')
    parser.add_argument('--compressed', action='store_true',
                        help='the image topics are sensor_msgs/CompressedImage (jpeg, png; '
                        '/compressed is appended to each)')
    instruction = parser if training else parser.add_mutually_exclusive_group()
    instruction.add_argument('--instruction-topic', default='vla/instruction', metavar='T',
                             help='std_msgs/String instruction topic (default vla/instruction)')
    if not training:
        instruction.add_argument('--instruction', default=None, metavar='TEXT',
                                 help='use this instruction at every step instead of a topic')
    parser.add_argument('--rate', type=float, default=5.0, metavar='HZ',
                        help='control rate of the steps, Hz: the rate the actions were recorded '
                        'at and the policy runs at (default 5.0, as vla_node)')
    parser.add_argument('--action-topic', default='vla/action', metavar='T',
                        help='recorded std_msgs/Float64MultiArray actions (default vla/action)')
    parser.add_argument('--ee-pose-topic', default='ee_pose', metavar='T',
                        help='geometry_msgs/PoseStamped end-effector pose in the base frame '
                        '(default ee_pose)')
    parser.add_argument('--joint-states-topic', default='joint_states', metavar='T',
                        help='sensor_msgs/JointState topic of the joint:NAME --proprio '
                        'entries (default joint_states)')
    parser.add_argument('--proprio', nargs='+', default=[], metavar='ENTRY',
                        help="the state vector's layout, as vla_node's proprio: ee_position, "
                        'ee_axis_angle, ee_rpy, ee_quaternion (from --ee-pose-topic), joint:NAME '
                        '(from --joint-states-topic); default none')
    parser.add_argument('--action-frame', default='base_link', metavar='F',
                        help="as vla_node's action_frame: the base frame of the deltas; a step "
                        'whose ee_pose (--proprio) is in another frame has no usable state '
                        '(default base_link)')


def data_fields(args):
    """Return the ``DataOptions`` fields of parsed data flags (checks what argparse cannot)."""
    image_topic = getattr(args, 'image_topic', None)  # vla_eval's form only
    instruction = getattr(args, 'instruction', None)
    if args.camera_topics is not None and not all(t.strip('/ ') for t in args.camera_topics):
        raise RecordingError(f'--camera-topics {args.camera_topics}: a topic name is empty; pass '
                             'one image topic per camera, the primary camera first')
    if instruction is not None and not instruction.strip():
        raise RecordingError('--instruction is empty; pass the task, e.g. --instruction '
                             '"put the carrot on the plate"')
    return {
        'image_topic': topic_name(image_topic) if image_topic else '',
        'camera_topics': tuple(topic_name(t) for t in args.camera_topics or ()),
        'compressed': args.compressed, 'instruction_topic': topic_name(args.instruction_topic),
        'instruction': (instruction or '').strip(), 'action_topic': topic_name(args.action_topic),
        'ee_pose_topic': topic_name(args.ee_pose_topic),
        'joint_states_topic': topic_name(args.joint_states_topic),
        'proprio': tuple(args.proprio), 'action_frame': args.action_frame, 'rate': args.rate}


def step_count(bag, rate):
    """Return the most steps a bag can have at ``rate``: its log-time span x rate, plus one."""
    return int((bag.end_ns - bag.start_ns) * rate / 1e9) + 1


def check_bag(bag, options):
    """Raise ``RecordingError`` unless an opened ``bag`` has every topic ``options`` need."""
    steps = step_count(bag, options.rate)
    if steps > MAX_STEPS:
        span = (bag.end_ns - bag.start_ns) * 1e-9
        raise RecordingError(f'bag {str(bag.path)!r} spans {span:.3f} s of log time: at --rate '
                             f'{options.rate:g} Hz that is {steps:.3g} steps, more than the '
                             f'{MAX_STEPS} a bag may have; pass the control rate of the node '
                             '(e.g. --rate 5), or split the bag')
    topics = options.topics()
    image_type = COMPRESSED_IMAGE if options.compressed else IMAGE
    how = ('--camera-topics T1 T2 ...' if options.camera_topics else '--image-topic T')
    for topic in options.cameras():
        bag.require(topic, (image_type,), 'image', f'{how} (and --compressed for '
                    'sensor_msgs/msg/CompressedImage)')
    if 'instruction' in topics:
        topic = topics['instruction']
        if bag.topics.get(topic, (None, 0))[1] == 0:
            raise RecordingError(f'bag {str(bag.path)!r} has no instruction: topic {topic} is '
                                 f'{"empty" if topic in bag.topics else "not in it"} (topics: '
                                 f'{bag.describe_topics()}); pass --instruction TEXT or '
                                 '--instruction-topic T')
        bag.require(topic, (STRING,), 'instruction', '--instruction-topic T or --instruction TEXT')
    if 'action' in topics:
        bag.require(topics['action'], (FLOAT64_MULTI_ARRAY,), *options.actions_role)
    layout = options.layout()
    if 'pose' in topics:
        entries = ' '.join(e for e in layout.entries if e.startswith('ee_'))
        bag.require(topics['pose'], (POSE_STAMPED,), f'ee_pose (the state of --proprio '
                    f'{entries})', '--ee-pose-topic T naming the geometry_msgs/PoseStamped '
                    'end-effector pose')
    if 'joints' in topics:
        topic = topics['joints']
        bag.require(topic, (JOINT_STATE,), f'joint states (the state of --proprio '
                    f'{" ".join("joint:" + j for j in layout.joints)})',
                    '--joint-states-topic T naming the sensor_msgs/JointState topic')
        _check_joints(bag, topic, layout.joints)


def _check_joints(bag, topic, joints):
    """Raise ``RecordingError`` unless the first message on ``topic`` has every ``joints``."""
    messages = bag.messages([topic])
    try:
        _, log_ns, msg = next(messages)
    finally:
        messages.close()
    names = list(msg.name)[:len(msg.position)]
    missing = [name for name in joints if name not in names]
    if missing:
        raise RecordingError(f'the joint states on {topic} in bag {str(bag.path)!r} have no '
                             f'position of joint {", ".join(missing)} (--proprio '
                             f'{" ".join("joint:" + j for j in missing)}); the first message, '
                             f'at log time {log_ns * 1e-9:.3f} s, names: '
                             f'{", ".join(names) or "none"}; pass --proprio with joint:NAME of '
                             'those names, or the --joint-states-topic that has the joint')
