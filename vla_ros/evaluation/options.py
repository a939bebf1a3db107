"""
What vla_eval adds to the data options (``EvalOptions``), its bag check, and the policy check.

``EvalOptions`` extends ``recordings.options.DataOptions`` (what to read from each bag) with what
the node's control core and the comparison need, with vla_node's parameter names where the two
meet: the reference (``reference``: the recorded actions, ee_pose relabelled with
``gripper_topic``, or none), the chunk execution (``chunk_mode``, ``execute_steps``,
``ensemble_decay``) and the age checks the control core makes (``max_image_age``,
``max_proprio_age``; ``max_camera_skew`` is a data option, as it pairs the frames). Invalid
options raise ``EvalError`` (``RecordingError`` for a data option) when constructed.

``check_bag`` validates one bag against the options (the data's checks and the reference's
topics) while reading at most one message; ``check_policy`` validates the options against the
loaded policy (images, state size; any action size, but ``--reference ee_pose`` relabels
end-effector deltas, so it needs a 7-D policy). Both name the problem and the fix (the
command-line option) in one line.
"""

import dataclasses
import math

from vla_ros.control.action_layout import ACTION_DIM
from vla_ros.control.chunks import MODES
from vla_ros.recordings import options as data
from vla_ros.recordings.bags import FLOAT64, POSE_STAMPED, topic_name
from vla_ros.recordings.options import DataOptions, LIBERO_PROPRIO, step_count

REFERENCES = ('action', 'ee_pose', 'none')

__all__ = ['check_bag', 'check_policy', 'EvalError', 'EvalOptions', 'REFERENCES', 'step_count']


class EvalError(Exception):
    """Bad input to vla_eval; the text names the problem and the fix (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class EvalOptions(DataOptions):
    """The data options, and how vla_eval steps through each bag and compares."""

    reference: str = 'action'  # 'action', 'ee_pose' or 'none'
    gripper_topic: str = ''  # the gripper state of the ee_pose reference
    max_image_age: float = 0.5  # 0: no age checks
    max_proprio_age: float = 0.2  # 0: no state age check
    chunk_mode: str = 'open_loop'
    execute_steps: int = 0
    ensemble_decay: float = 0.01

    actions_role = ('reference action', '--action-topic T, or --reference ee_pose / none')

    def __post_init__(self):
        super().__post_init__()
        if self.reference not in REFERENCES:
            raise EvalError(f'--reference {self.reference}: use one of {", ".join(REFERENCES)}')
        if self.chunk_mode not in MODES:
            raise EvalError(f'--chunk-mode {self.chunk_mode}: use one of {", ".join(MODES)}')
        if self.execute_steps < 0:
            raise EvalError(f'--execute-steps {self.execute_steps} must be >= 0 (0: the whole '
                            'chunk)')
        for flag, value in (('--ensemble-decay', self.ensemble_decay),
                            ('--max-proprio-age', self.max_proprio_age)):
            if value is not None and (math.isnan(value) or value < 0):
                raise EvalError(f'{flag} {value} must be a number >= 0')

    def topics(self):
        """
        Return {role: topic} of every topic read from a bag except the cameras.

        Roles: 'instruction'; 'action' or 'ee_pose' and 'gripper' (references); 'pose' and
        'joints' (the state).
        """
        roles = super().topics()
        if self.reference != 'action':
            del roles['action']
        if self.reference == 'ee_pose':
            roles['ee_pose'] = topic_name(self.ee_pose_topic)
            roles['gripper'] = topic_name(self.gripper_topic)
        return roles


def check_bag(bag, options):
    """Raise unless an opened ``bag`` has every topic ``options`` need (``RecordingError``)."""
    data.check_bag(bag, options)
    topics = options.topics()
    if 'ee_pose' in topics:
        bag.require(topics['ee_pose'], (POSE_STAMPED,), 'ee_pose', '--ee-pose-topic T')
        bag.require(topics['gripper'], (FLOAT64,), 'gripper state', '--gripper-topic T')


def check_policy(policy, options):
    """
    Raise ``EvalError`` unless the cameras, the state and the actions fit the ``policy``.

    ``vla_ros.policy.base.mismatches`` finds the problems (as for vla_node) and says the policy's
    side; here the first gets the options' side and the fix.
    """
    from vla_ros.policy.base import mismatches  # torch: only once a policy is loaded
    cameras, layout = options.cameras(), options.layout()
    if options.reference == 'ee_pose' and policy.action_dim != ACTION_DIM:
        raise EvalError(f'--reference ee_pose relabels end-effector deltas ({ACTION_DIM} values: '
                        f'dx dy dz droll dpitch dyaw gripper) from ee_pose; the policy predicts '
                        f'{policy.action_dim}-D joint positions: use --reference action (the '
                        'recorded vla/action) or --reference none')
    for mismatch in mismatches(policy, len(cameras), layout.dim, policy.action_dim):
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
