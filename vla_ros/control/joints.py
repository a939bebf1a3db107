"""
Joint-space actions, ROS-free: the joint of each action dimension, limits, the safety checks.

What each action dimension commands, the joints' limits, and the checks between a policy's
absolute joint targets and the arm.

``action_joints`` (vla_node and arm_bridge parameter) names, per action dimension, the joint it
commands: ``NAME`` (an absolute position, rad or m) or ``gripper:NAME`` (a gripper, normalised
0 closed .. 1 open as ALOHA's, turned into ``NAME``'s position by ``GripperRange``). ``PRESETS``
gives OFT's platforms theirs: ALOHA's 14 dimensions are the left arm's six joints and gripper,
then the right arm's (the order of ACT's and OFT's ALOHA data), named as gym-aloha's bimanual
ViperX model names its joints.

Limits (``JointLimit``: position range, speed) come from parameters or from the robot's URDF
(``limits_from_urdf``: ``<limit lower upper velocity>``; a continuous joint has no position
range). ``JointSafety.check`` takes one target per commanded joint and the measured positions,
and returns what may be sent, in this order:

1. NaN or inf in a target: refused (nothing is sent);
2. no measured position for a joint, or a non-finite one: refused (the step cannot be bounded);
3. a target outside its joint's range: clipped to the range, or refused (``beyond_limit``
   'refuse'), counted either way;
4. a step faster than a joint's speed limit over ``dt`` (from the measured position, or from the
   previous point of a chunk): the whole step is scaled down by one factor, so every joint
   arrives together and the motion keeps its direction in joint space (as the end-effector
   bridge scales a step's translation and rotation together), or refused (``too_fast``
   'refuse'); counted either way.
"""

import collections
import dataclasses
import math
import xml.etree.ElementTree as ElementTree

import numpy as np

GRIPPER_PREFIX = 'gripper:'
ALOHA_ARM = ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate')


def aloha_arm(side):
    """Return one ViperX arm's ``action_joints`` (side 'left' or 'right'): six joints, gripper."""
    return tuple(f'vx300s_{side}/{joint}' for joint in ALOHA_ARM) + (
        f'{GRIPPER_PREFIX}vx300s_{side}/left_finger',)


PRESETS = {'aloha': aloha_arm('left') + aloha_arm('right')}
# ALOHA's puppet gripper: finger position (m) at 0 (closed) and 1 (open), ACT's constants.
ALOHA_GRIPPER = (0.01844, 0.05800)
LIMIT_MODES = ('clip', 'refuse')


class JointError(ValueError):
    """A joint list, limit or URDF that cannot work; the text names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class ActionJoint:
    """The joint one action dimension commands; ``gripper``: its value is 0 closed .. 1 open."""

    name: str
    gripper: bool = False


def parse_action_joints(entries):
    """Return the ``ActionJoint`` of each ``action_joints`` entry; raise ``JointError``."""
    joints = []
    for entry in entries:
        entry = str(entry).strip()
        gripper = entry.startswith(GRIPPER_PREFIX)
        name = entry[len(GRIPPER_PREFIX):].strip() if gripper else entry
        if not name:
            raise JointError(f'action_joints entry {entry!r} names no joint; write NAME, or '
                             f'{GRIPPER_PREFIX}NAME for a gripper (0 closed .. 1 open)')
        joints.append(ActionJoint(name, gripper))
    names = [j.name for j in joints]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise JointError(f'action_joints names joint {doubled[0]!r} twice; each action '
                         'dimension commands its own joint')
    if not joints:
        raise JointError('action_joints is empty; name the joint of each action dimension, or '
                         f'use a platform preset ({", ".join(sorted(PRESETS))})')
    return tuple(joints)


def check_action_size(joints, action_dim, what):
    """Raise ``JointError`` unless there is one joint per action dimension of ``what``."""
    if len(joints) != action_dim:
        raise JointError(f'{what} predicts {action_dim}-D actions, but action_joints names '
                         f'{len(joints)} joint(s); give one entry per action dimension, in '
                         "the policy's order")


@dataclasses.dataclass(frozen=True)
class GripperRange:
    """A gripper joint's positions when closed (0) and open (1)."""

    closed: float
    opened: float

    def position(self, value):
        """Return the joint position of the normalised ``value``, clipped to [0, 1]."""
        return self.closed + min(max(float(value), 0.0), 1.0) * (self.opened - self.closed)

    def value(self, position):
        """Return how open a joint ``position`` is: 0 closed .. 1 open."""
        return (float(position) - self.closed) / (self.opened - self.closed)


@dataclasses.dataclass(frozen=True)
class JointLimit:
    """One joint's position range (rad or m; +-inf: none) and speed limit (per second)."""

    lower: float
    upper: float
    velocity: float


def limits_from_parameters(names, lower, upper, velocity):
    """Return ``{name: JointLimit}`` from parallel lists; raise ``JointError`` naming the fix."""
    lists = {'joint_lower': lower, 'joint_upper': upper,
             'joint_velocity': velocity}
    for key, values in lists.items():
        if len(values) != len(names):
            raise JointError(f'{key} has {len(values)} value(s) for {len(names)} joint(s) '
                             f'({", ".join(names)}); give one per joint, in that order')
    limits = {}
    for name, low, high, speed in zip(names, lower, upper, velocity):
        limits[name] = checked_limit(name, float(low), float(high), float(speed), 'parameters')
    return limits


def checked_limit(name, lower, upper, velocity, source):
    """Return ``JointLimit(lower, upper, velocity)``; raise ``JointError`` if it is no limit."""
    if math.isnan(lower) or math.isnan(upper) or not lower < upper:
        raise JointError(f'joint {name!r}: lower limit {lower} is not below upper limit '
                         f'{upper} ({source}); fix the limits')
    if not (math.isfinite(velocity) and velocity > 0):
        raise JointError(f'joint {name!r}: velocity limit {velocity} must be a positive '
                         f'number ({source}); fix the limits')
    return JointLimit(lower, upper, velocity)


def limits_from_urdf(urdf, names):
    """
    Return ``{name: JointLimit}`` of ``names`` from a URDF (``robot_description``'s text).

    Raises ``JointError`` for XML that does not parse, a joint the URDF does not have, and a
    commanded joint without ``<limit>`` (or, except a continuous one, without lower and upper).
    """
    try:
        root = ElementTree.fromstring(urdf)
    except ElementTree.ParseError as exc:
        raise JointError(f'robot_description is not valid URDF XML ({exc}); pass the '
                         "robot's URDF, or the joint limits as parameters") from None
    joints = {j.get('name'): j for j in root.iter('joint')}
    limits = {}
    for name in names:
        joint = joints.get(name)
        if joint is None:
            raise JointError(f'the robot has no joint {name!r} (its URDF joints: '
                             f'{", ".join(sorted(j for j in joints if j)[:12])}); fix '
                             'action_joints or the controller joints')
        limit = joint.find('limit')
        kind = joint.get('type', '')
        if limit is None or limit.get('velocity') is None or (
                kind != 'continuous' and None in (limit.get('lower'), limit.get('upper'))):
            raise JointError(f'the URDF gives joint {name!r} ({kind}) no <limit lower upper '
                             'velocity>; add it to the URDF, or pass joint limits as '
                             'parameters')
        try:
            low, high = (-math.inf, math.inf) if kind == 'continuous' else (
                float(limit.get('lower')), float(limit.get('upper')))
            speed = float(limit.get('velocity'))
        except ValueError:
            raise JointError(f"the URDF's <limit> of joint {name!r} is not numbers; fix the "
                             'URDF') from None
        limits[name] = checked_limit(name, low, high, speed, 'URDF')
    return limits


class JointSafety:
    """The checks between joint targets and the arm (module docstring); counts in ``counts``."""

    def __init__(self, names, limits, beyond_limit='clip', too_fast='clip'):
        missing = [n for n in names if n not in limits]
        if missing:
            raise JointError(f'no limits for joint(s) {", ".join(missing)}; give them as '
                             'parameters or in the URDF')
        for mode in (beyond_limit, too_fast):
            if mode not in LIMIT_MODES:
                raise JointError(f'unknown limit mode {mode!r}; use one of {LIMIT_MODES}')
        self.names = tuple(names)
        self.lower = np.array([limits[n].lower for n in names], dtype=np.float64)
        self.upper = np.array([limits[n].upper for n in names], dtype=np.float64)
        self.velocity = np.array([limits[n].velocity for n in names], dtype=np.float64)
        self.beyond_limit, self.too_fast = beyond_limit, too_fast
        self.counts = collections.Counter()

    def check(self, targets, measured, dt):
        """
        Return (positions to send or None, reason) for one step of ``dt`` seconds.

        ``targets``, ``measured``: one value per joint of ``names`` (``measured`` may hold NaN
        for a joint with no state). The reason is '' when the step is sent as asked, else what
        was clipped or why nothing is sent.
        """
        targets = np.asarray(targets, dtype=np.float64)
        measured = np.asarray(measured, dtype=np.float64)
        if not np.all(np.isfinite(targets)):
            return self._refuse('non_finite', 'NaN or inf in the target')
        if not np.all(np.isfinite(measured)):
            return self._refuse('no_state', 'no measured position of every joint')
        reasons = []
        outside = (targets < self.lower) | (targets > self.upper)
        if outside.any():
            joint = self.names[int(np.argmax(outside))]
            if self.beyond_limit == 'refuse':
                return self._refuse('beyond_limit', f'joint {joint!r} beyond its limits')
            self.counts['clipped_limit'] += 1
            targets = np.clip(targets, self.lower, self.upper)
            reasons.append(f'clipped to the limits of {joint!r}')
        step = targets - measured
        allowed = self.velocity * max(float(dt), 0.0)
        with np.errstate(divide='ignore', invalid='ignore'):
            ratio = np.where(np.abs(step) > allowed, allowed / np.abs(step), 1.0)  # (N,)
        share = float(ratio.min())
        if share < 1.0:
            joint = self.names[int(np.argmin(ratio))]
            if self.too_fast == 'refuse':
                return self._refuse('too_fast', f'joint {joint!r} faster than its limit')
            self.counts['clipped_velocity'] += 1
            targets = measured + step * share
            reasons.append(f'slowed to the speed limit of {joint!r}')
        self.counts['sent'] += 1
        return targets, '; '.join(reasons)

    def check_rows(self, rows, measured, period):
        """
        Check a chunk's rows as the points of one trajectory, a ``period`` apart.

        The first row is a step from ``measured``, each next one from the row before it as
        sent. Returns (rows to send (K', N), reason): the rows up to the first refused one.
        """
        sent, previous, reasons = [], np.asarray(measured, dtype=np.float64), []
        for row in rows:
            positions, reason = self.check(row, previous, period)
            if positions is None:
                return np.array(sent).reshape(len(sent), len(self.names)), reason
            if reason and reason not in reasons:
                reasons.append(reason)
            sent.append(positions)
            previous = positions
        return np.array(sent).reshape(len(sent), len(self.names)), '; '.join(reasons)

    def _refuse(self, key, reason):
        self.counts[key] += 1
        return None, reason
