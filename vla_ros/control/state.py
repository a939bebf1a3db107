"""
The robot's state vector a policy reads, assembled from the end-effector pose and joint states.

The layout is the ``proprio`` parameter of vla_node: a list of entries, each from ``ee_pose``
(geometry_msgs/PoseStamped, base frame) or ``joint_states`` (sensor_msgs/JointState):

=====================  ====  ==========================================================
entry                  size  value
=====================  ====  ==========================================================
``ee_position``        3     x, y, z (m)
``ee_axis_angle``      3     the orientation as axis * angle, robosuite's convention
                             (LIBERO's state)
``ee_rpy``             3     roll, pitch, yaw (R = Rz Ry Rx)
``ee_quaternion``      4     x, y, z, w
``joint:NAME``         1     the position of joint NAME
``gripper:NAME``       1     how open gripper joint NAME is, 0 closed .. 1 open (its position
                             mapped by ``gripper``, ALOHA's finger range by default)
``aloha``              14    ALOHA's state: ``control.joints.PRESETS['aloha']`` read as above
                             (each arm's six ``joint:`` entries, then its ``gripper:``)
=====================  ====  ==========================================================

A LIBERO-trained OpenVLA-OFT expects ``[ee_position, ee_axis_angle, joint:<left finger>,
joint:<right finger>]`` (8 values), an ALOHA one ``[aloha]`` (its state in its action's order).
The state's stamp is that of its oldest part, so its age is the age of the stalest input.

``read`` makes the state of the newest messages, read by ``readers`` (the pose in the deltas'
frame, a well-formed JointState); vla_node's observations and vla_eval's step reader (and thereby
vla_finetune) both call it, so a message is a bad state live exactly when it is one offline.
ROS-free: the messages are read by attribute.
"""

import math

import numpy as np

from vla_ros.control import readers
from vla_ros.control.core import State
from vla_ros.control.geometry import quaternion_to_axis_angle, quaternion_to_rpy
from vla_ros.control.images import ConversionError
from vla_ros.control.joints import ALOHA_GRIPPER, GRIPPER_PREFIX, GripperRange, PRESETS

POSE_ENTRIES = {'ee_position': 3, 'ee_axis_angle': 3, 'ee_rpy': 3, 'ee_quaternion': 4}
JOINT_PREFIX = 'joint:'
JOINT_PREFIXES = (JOINT_PREFIX, GRIPPER_PREFIX)
# Preset entries: ALOHA's state is its action's joints, read back (OFT's ALOHA order).
STATE_PRESETS = {name: tuple(e if e.startswith(GRIPPER_PREFIX) else JOINT_PREFIX + e
                             for e in joints) for name, joints in PRESETS.items()}


def _joint_of(entry):
    """Return the joint name of a ``joint:`` or ``gripper:`` entry ('' for a pose entry)."""
    prefix = next((p for p in JOINT_PREFIXES if entry.startswith(p)), '')
    return entry[len(prefix):] if prefix else ''


class StateLayout:
    """
    A parsed ``proprio`` layout; ``assemble`` builds the vector (see the module docstring).

    ``entries`` holds the layout with the presets expanded; ``gripper`` maps a ``gripper:``
    joint's position to 0 closed .. 1 open.
    """

    def __init__(self, entries, gripper=GripperRange(*ALOHA_GRIPPER)):
        entries = [e for entry in entries for e in STATE_PRESETS.get(entry, (entry,))]
        unknown = [e for e in entries if e not in POSE_ENTRIES and not _joint_of(e)]
        if unknown:
            raise ValueError(f'unknown proprio entries {unknown}; allowed: '
                             f'{", ".join(POSE_ENTRIES)}, joint:NAME, gripper:NAME and the '
                             f'preset {" or ".join(STATE_PRESETS)}')
        self.entries = entries
        self.gripper = gripper
        self.joints = [_joint_of(e) for e in entries if e not in POSE_ENTRIES]
        self.needs_pose = any(e in POSE_ENTRIES for e in entries)
        self.dim = sum(POSE_ENTRIES.get(e, 1) for e in entries)

    def __bool__(self):
        return bool(self.entries)

    def read(self, pose_msg, joint_msg, pose_source='ee_pose', joint_source='joint_states',
             frame=None, frame_option="parameter 'action_frame'"):
        """
        Return the ``State`` of the newest PoseStamped and JointState (None: none received yet).

        ``frame`` (and ``frame_option``, where it is set): the frame the pose must be in, see
        ``readers.read_pose``. A refused message is a ``State`` whose ``problem`` says why.
        """
        try:
            pose = (readers.read_pose(pose_msg, frame, pose_source, frame_option)
                    if pose_msg is not None and self.needs_pose else None)
            joints = (readers.read_joints(joint_msg, joint_source)
                      if joint_msg is not None and self.joints else None)
        except ConversionError as exc:
            return State(problem=str(exc))
        return self.assemble(pose, joints, pose_source, joint_source)

    def assemble(self, pose=None, joints=None, pose_source='ee_pose',
                 joint_source='joint_states'):
        """
        Return the ``State`` of the newest pose and joint states; ``problem`` names what is wrong.

        ``pose`` = (position (3,), quaternion (4,), stamp_s); ``joints`` = ({name: position},
        stamp_s); None: nothing received yet.
        """
        stamps = []
        if self.needs_pose:
            if pose is None:
                return State(problem=f'no pose received on {pose_source} yet')
            stamps.append(pose[2])
        if self.joints:
            if joints is None:
                return State(problem=f'no joint states received on {joint_source} yet')
            missing = [name for name in self.joints if name not in joints[0]]
            if missing:
                names = ', '.join(sorted(joints[0])) or 'none'
                return State(problem=f'{joint_source} has no joint {", ".join(missing)} '
                             f'(it has: {names}); fix the proprio parameter')
            stamps.append(joints[1])
        values = []
        for entry in self.entries:
            if entry in POSE_ENTRIES:
                position, quaternion = pose[0], pose[1]
                try:
                    values.extend(self._pose_entry(entry, position, quaternion))
                except ValueError as exc:
                    return State(problem=f'{pose_source}: {exc}')
            elif entry.startswith(GRIPPER_PREFIX):
                values.append(self.gripper.value(joints[0][_joint_of(entry)]))
            else:
                values.append(joints[0][_joint_of(entry)])
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            bad = [e for e, v in zip(self._columns(), values) if not math.isfinite(v)]
            # The values stay with the refusal: the count of non-finite states offline reads them.
            return State(values, min(stamps), f'non-finite state values in {", ".join(bad)}')
        return State(values, min(stamps))

    @staticmethod
    def _pose_entry(entry, position, quaternion):
        if entry == 'ee_position':
            return list(position)
        if entry == 'ee_quaternion':
            return list(quaternion)
        if entry == 'ee_rpy':
            return list(quaternion_to_rpy(*quaternion))
        return list(quaternion_to_axis_angle(*quaternion))

    def _columns(self):
        """Return the entry each value comes from (for messages)."""
        return [e for e in self.entries for _ in range(POSE_ENTRIES.get(e, 1))]
