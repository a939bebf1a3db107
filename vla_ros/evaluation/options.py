"""
What vla_eval reads from a bag and how it steps through it (``EvalOptions``), and the input checks.

``EvalOptions`` mirrors vla_node's parameters where the two meet: the cameras
(``camera_topics``, primary first; ``image_topic`` is the one-camera form), the state layout
(``proprio``, read from ``ee_pose`` and ``joint_states``; the pose in ``action_frame``, the base
frame of the deltas, or the step has no usable state, as live), the control rate and the chunk
execution (``chunk_mode``, ``execute_steps``, ``ensemble_decay``), and the checks the control core
makes (``max_image_age``, ``max_camera_skew``, ``max_proprio_age``). Invalid options raise
``EvalError`` when constructed.

``check_bag`` validates one bag against the options (topics, types, size, and that the first
joint states name every ``joint:`` entry) while reading at most one message; ``check_policy``
validates the options against the loaded policy (images, state size, action size). Both raise
``EvalError`` with one line naming the problem and the fix (the command-line option).
"""

import dataclasses
import math

from vla_ros.control.action_layout import ACTION_DIM
from vla_ros.control.chunks import MODES
from vla_ros.control.core import repeated_cameras
from vla_ros.control.state import StateLayout
from vla_ros.recordings.bags import (COMPRESSED_IMAGE, EvalError, FLOAT64, FLOAT64_MULTI_ARRAY,
                                     IMAGE, POSE_STAMPED, STRING, topic_name)
from vla_ros.recordings.steps import MAX_STEPS

JOINT_STATE = 'sensor_msgs/msg/JointState'
REFERENCES = ('action', 'ee_pose', 'none')
COMPRESSED_SUFFIX = '/compressed'
LIBERO_PROPRIO = 'ee_position ee_axis_angle joint:<left finger> joint:<right finger>'


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What to read from each bag and how to step through it (topic names absolute)."""

    image_topic: str = ''  # '' = camera/image_raw, or camera/image_raw/compressed
    camera_topics: tuple = ()  # several cameras, primary first (replaces image_topic)
    compressed: bool = False
    instruction_topic: str = '/vla/instruction'
    instruction: str = ''  # non-empty: used at every step instead of the topic
    reference: str = 'action'  # 'action', 'ee_pose' or 'none'
    action_topic: str = '/vla/action'
    ee_pose_topic: str = '/ee_pose'  # the ee_pose reference and the state's pose
    gripper_topic: str = ''
    joint_states_topic: str = '/joint_states'
    proprio: tuple = ()  # the state layout, as vla_node's proprio parameter
    action_frame: str = 'base_link'  # the frame the state's ee_pose must be in, as vla_node's
    rate: float = 5.0
    max_image_age: float = 0.5  # 0: no age checks
    max_camera_skew: float = 0.05  # None: no skew check
    max_proprio_age: float = 0.2  # 0: no state age check
    chunk_mode: str = 'open_loop'
    execute_steps: int = 0
    ensemble_decay: float = 0.01

    def __post_init__(self):
        object.__setattr__(self, 'camera_topics', tuple(self.camera_topics))
        object.__setattr__(self, 'proprio', tuple(self.proprio))
        if self.reference not in REFERENCES:
            raise EvalError(f'--reference {self.reference}: use one of {", ".join(REFERENCES)}')
        if self.chunk_mode not in MODES:
            raise EvalError(f'--chunk-mode {self.chunk_mode}: use one of {", ".join(MODES)}')
        if self.execute_steps < 0:
            raise EvalError(f'--execute-steps {self.execute_steps} must be >= 0 (0: the whole '
                            'chunk)')
        for flag, value in (('--ensemble-decay', self.ensemble_decay),
                            ('--max-camera-skew', self.max_camera_skew),
                            ('--max-proprio-age', self.max_proprio_age)):
            if value is not None and (math.isnan(value) or value < 0):
                raise EvalError(f'{flag} {value} must be a number >= 0')
        if not self.action_frame.strip('/'):
            raise EvalError(f'--action-frame {self.action_frame!r}: name the base frame of the '
                            'deltas, the frame ee_pose is recorded in (default base_link)')
        problem = repeated_cameras(self.cameras())
        if problem:
            raise EvalError(f'--camera-topics {problem}')
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
        """Return the ``StateLayout`` of ``proprio`` (raises ``EvalError`` for a bad entry)."""
        try:
            return StateLayout(self.proprio)
        except ValueError as exc:
            raise EvalError(f'--proprio: {exc}; e.g. --proprio {LIBERO_PROPRIO}') from None

    def topics(self):
        """
        Return {role: topic} of every topic read from a bag except the cameras.

        Roles: 'instruction'; 'action' or 'ee_pose' and 'gripper' (references); 'pose' and
        'joints' (the state).
        """
        roles = {}
        if not self.instruction:
            roles['instruction'] = topic_name(self.instruction_topic)
        if self.reference == 'action':
            roles['action'] = topic_name(self.action_topic)
        elif self.reference == 'ee_pose':
            roles['ee_pose'] = topic_name(self.ee_pose_topic)
            roles['gripper'] = topic_name(self.gripper_topic)
        layout = self.layout()
        if layout.needs_pose:
            roles['pose'] = topic_name(self.ee_pose_topic)
        if layout.joints:
            roles['joints'] = topic_name(self.joint_states_topic)
        return roles


def step_count(bag, rate):
    """Return the most steps a bag can have at ``rate``: its log-time span x rate, plus one."""
    return int((bag.end_ns - bag.start_ns) * rate / 1e9) + 1


def check_bag(bag, options):
    """Raise ``EvalError`` unless an opened ``bag`` has every topic ``options`` need."""
    steps = step_count(bag, options.rate)
    if steps > MAX_STEPS:
        raise EvalError(f'bag {str(bag.path)!r} spans {(bag.end_ns - bag.start_ns) * 1e-9:.3f} s '
                        f'of log time: at --rate {options.rate:g} Hz that is {steps:.3g} steps, '
                        f'more than the {MAX_STEPS} vla_eval evaluates per bag; pass the control '
                        'rate of the node (e.g. --rate 5), or split the bag')
    topics = options.topics()
    image_type = COMPRESSED_IMAGE if options.compressed else IMAGE
    how = ('--camera-topics T1 T2 ...' if options.camera_topics else '--image-topic T')
    for topic in options.cameras():
        bag.require(topic, (image_type,), 'image', f'{how} (and --compressed for '
                    'sensor_msgs/msg/CompressedImage)')
    if 'instruction' in topics:
        topic = topics['instruction']
        if bag.topics.get(topic, (None, 0))[1] == 0:
            raise EvalError(f'bag {str(bag.path)!r} has no instruction: topic {topic} is '
                            f'{"empty" if topic in bag.topics else "not in it"} (topics: '
                            f'{bag.describe_topics()}); pass --instruction TEXT or '
                            '--instruction-topic T')
        bag.require(topic, (STRING,), 'instruction', '--instruction-topic T or --instruction TEXT')
    if 'action' in topics:
        bag.require(topics['action'], (FLOAT64_MULTI_ARRAY,), 'reference action',
                    '--action-topic T, or --reference ee_pose / none')
    if 'ee_pose' in topics:
        bag.require(topics['ee_pose'], (POSE_STAMPED,), 'ee_pose', '--ee-pose-topic T')
        bag.require(topics['gripper'], (FLOAT64,), 'gripper state', '--gripper-topic T')
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
    """Raise ``EvalError`` unless the first message on ``topic`` has a position of ``joints``."""
    messages = bag.messages([topic])
    try:
        _, log_ns, msg = next(messages)
    finally:
        messages.close()
    names = list(msg.name)[:len(msg.position)]
    missing = [name for name in joints if name not in names]
    if missing:
        raise EvalError(f'the joint states on {topic} in bag {str(bag.path)!r} have no position '
                        f'of joint {", ".join(missing)} (--proprio '
                        f'{" ".join("joint:" + j for j in missing)}); the first message, at log '
                        f'time {log_ns * 1e-9:.3f} s, names: {", ".join(names) or "none"}; pass '
                        '--proprio with joint:NAME of those names, or the --joint-states-topic '
                        'that has the joint')


def check_policy(policy, options):
    """
    Raise ``EvalError`` unless the cameras, the state and the actions fit the ``policy``.

    ``vla_ros.policy.base.mismatches`` finds the problems (as for vla_node) and says the policy's
    side; here the first gets the options' side and the fix.
    """
    from vla_ros.policy.base import mismatches  # torch: only once a policy is loaded
    cameras, layout = options.cameras(), options.layout()
    for mismatch in mismatches(policy, len(cameras), layout.dim, ACTION_DIM):
        if mismatch.kind == 'cameras':
            hint = ('list one topic per image with --camera-topics, the primary camera first'
                    if mismatch.needed > 1
                    else 'pass one --image-topic (or one --camera-topics topic)')
            raise EvalError(f'{len(cameras)} camera topic(s) {", ".join(cameras)}, but '
                            f'{mismatch.sentence}; {hint}')
        if mismatch.kind == 'state':
            given = f'--proprio {" ".join(layout.entries)}' if layout else 'no --proprio'
            fix = (f'pass --proprio with {mismatch.needed} values, for a LIBERO-style arm '
                   f'--proprio {LIBERO_PROPRIO}' if mismatch.needed else 'drop --proprio')
            raise EvalError(f'{given} gives {layout.dim} state values, but {mismatch.sentence}; '
                            f'{fix}')
        raise EvalError(f'{mismatch.sentence}; vla_eval compares end-effector deltas '
                        f'({ACTION_DIM} values: dx dy dz droll dpitch dyaw gripper, --platform '
                        'libero or bridge), not joint positions (aloha)')
