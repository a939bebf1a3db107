"""
vla_record_demos' ROS participant: the scripted expert (or the policy's labeller), and the bag.

``ExpertRecorder`` subscribes to what the bag records (the robot's cameras, ``joint_states``,
``sim/task``; the gripper robot's ``ee_pose`` too) and writes each message as it arrives, on this
node's clock (as ``ros2 bag record`` logs). In expert mode a timer at ``rate`` publishes the
expert's action as vla_node does for the robot's action space: the gripper robot's end-effector
delta on ``vla/ee_delta``, ``vla/gripper`` and ``vla/action``; ALOHA's 14 joint targets on
``vla/joint_command`` (names: ``PRESETS['aloha']``) and ``vla/action``, each tick the plan's
targets for one period later (``aloha_expert.plan_at``). In corrections mode (gripper robot
only) each action vla_node publishes on ``vla/policy_action`` is one step: the expert labels it
(``vla/action``), and the policy's action (or on a ``takeover`` share of steps the expert's)
goes to arm_bridge. ``record_demos`` runs the episodes and the nodes (its docstring has the
whole story).
"""

import dataclasses
import json
import math
import threading

from geometry_msgs.msg import PoseStamped
import mujoco
import numpy as np
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, Float64MultiArray, String

from vla_ros.closed_loop.processes import Participant
from vla_ros.control.geometry import quaternion_to_rpy
from vla_ros.control.joints import PRESETS
from vla_ros.control.readers import header_stamp_ns_from_cdr, stamp_ns
from vla_ros.nodes import messages, qos
from vla_ros.recordings.bags import BagWriter
from vla_ros.sim import aloha, aloha_expert
from vla_ros.sim.expert import ScriptedExpert

IMAGE = (Image, 'sensor_msgs/msg/Image')
JOINTS = (JointState, 'sensor_msgs/msg/JointState')
ACTION = (Float64MultiArray, 'std_msgs/msg/Float64MultiArray')
INSTRUCTION = (String, 'std_msgs/msg/String')


@dataclasses.dataclass(frozen=True)
class Robot:
    """
    A simulated robot's topics (relative names) and their types, as the bag stores them.

    ``recorded``: subscribed and logged; ``stamped``: the recorded topics with a header (the
    reset filter; each must show before an episode starts), the primary camera first (the
    expert acts on its newest image and stamps its commands with it); ``published``: the
    expert's, logged too; ``commands``: those arm_bridge subscribes to.
    """

    recorded: dict
    stamped: tuple
    published: dict
    commands: tuple


ROBOTS = {
    'gripper': Robot(
        recorded={'camera/image_raw': IMAGE, 'wrist_camera/image_raw': IMAGE,
                  'ee_pose': (PoseStamped, 'geometry_msgs/msg/PoseStamped'),
                  'joint_states': JOINTS, 'sim/task': (String, 'std_msgs/msg/String')},
        stamped=('camera/image_raw', 'wrist_camera/image_raw', 'ee_pose', 'joint_states'),
        published={'vla/instruction': INSTRUCTION,
                   'vla/ee_delta': (PoseStamped, 'geometry_msgs/msg/PoseStamped'),
                   'vla/gripper': (Float64, 'std_msgs/msg/Float64'), 'vla/action': ACTION},
        commands=('vla/ee_delta', 'vla/gripper')),
    'aloha': Robot(
        recorded={**{f'{camera}/image_raw': IMAGE for camera in aloha.CAMERAS},
                  'joint_states': JOINTS, 'sim/task': (String, 'std_msgs/msg/String')},
        stamped=(*(f'{camera}/image_raw' for camera in aloha.CAMERAS), 'joint_states'),
        published={'vla/instruction': INSTRUCTION, 'vla/joint_command': JOINTS,
                   'vla/action': ACTION},
        commands=('vla/joint_command',)),
}
# Corrections: the policy's topics (vla_node remapped), and what of them the bag logs.
POLICY_REMAPS = ('vla/ee_delta:=vla/policy_ee_delta', 'vla/gripper:=vla/policy_gripper',
                 'vla/action:=vla/policy_action')
POLICY_ACTION = ('vla/policy_action', 'std_msgs/msg/Float64MultiArray')
POLICY_DELTA = 'vla/policy_ee_delta'  # only its stamp is used
# Best effort (matches the cameras' publisher) but a few deep, so a busy moment drops no frame.
CAMERA_QOS = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                        reliability=ReliabilityPolicy.BEST_EFFORT)
STATE_QOS = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST,
                       reliability=ReliabilityPolicy.RELIABLE)
MAX_IMAGE_AGE = 0.5  # s: the expert acts only on a fresh image, as vla_node does


class ExpertRecorder(Participant):
    """The expert as a ROS participant, and the recorder of the current episode's bag."""

    def __init__(self, rate, corrections=False, takeover=0.0, robot='gripper'):
        super().__init__('vla_record_demos')
        self.rate, self.corrections, self.takeover = rate, corrections, takeover
        self.robot = ROBOTS[robot]
        self.primary = self.robot.stamped[0]
        # ALOHA's expert plans on the scene's kinematics, loaded once
        self._aloha = (mujoco.MjModel.from_xml_path(str(aloha.scene_path()))
                       if robot == 'aloha' else None)
        self.plan = None  # ALOHA: the episode's plan, made by ``plan_aloha``
        self.plan_inputs = None  # and what it was planned from (the cube, the arms' joints)
        self._rng = None  # the episode's takeover draws
        self._lock = threading.Lock()  # the bag, the episode and the newest state
        self._bag = None
        self._episode = None  # (Episode, ScriptedExpert, start ns)
        self._since_ns = None  # messages stamped before this belong to the previous episode
        self._called_ns = None  # the reset was asked for then: no later than the reset itself
        self.state = {}  # topic -> newest message (or stamp, for images)
        self.status = None  # newest sim/task of the current episode
        self.actions = self.takeovers = 0
        self._pubs = {name: self.node.create_publisher(cls, name, qos.COMMAND)
                      for name, (cls, _) in self.robot.published.items()}
        for name, (cls, _) in self.robot.recorded.items():
            self.node.create_subscription(
                cls, name, self._recorder(name), CAMERA_QOS if 'image' in name else STATE_QOS,
                raw=True)
        self._policy_stamp = None  # the newest vla/policy_ee_delta's: the policy's image
        if corrections:  # the policy's actions pace the steps
            self.node.create_subscription(Float64MultiArray, POLICY_ACTION[0], self._on_policy,
                                          STATE_QOS)
            self.node.create_subscription(PoseStamped, POLICY_DELTA, self._on_policy_delta,
                                          STATE_QOS)
        else:
            self.node.create_timer(1.0 / rate, self._act)

    def topic(self, name):
        return self.node.resolve_topic_name(name)

    # ---------------------------------------------------------------- recording
    def _recorder(self, name):
        cls, msgtype = self.robot.recorded[name]

        def record(raw):
            with self._lock:
                now = self.now_ns()  # under the lock: the bag's log times only go forward
                if name in self.robot.stamped:
                    stamp = header_stamp_ns_from_cdr(raw)
                    if self._since_ns is not None and stamp < self._since_ns:
                        return  # from before the reset
                    self.state[name] = stamp if 'image' in name else deserialize_message(raw,
                                                                                         cls)
                else:
                    status = json.loads(deserialize_message(raw, cls).data)
                    since = (now - self._called_ns) * 1e-9 if self._called_ns else math.inf
                    if self._episode is None or status.get('seed') != self._episode[0].seed \
                            or status.get('time_since_reset', math.inf) > since + 0.5:
                        return  # another episode's, or from before the reset
                    self.status = status
                if self._bag is not None:
                    self._bag.write_raw(self.topic(name), msgtype, now, raw)
        return record

    def _publish(self, name, msg, now):
        """Publish one of our own messages and log it in the bag (under the lock)."""
        self._pubs[name].publish(msg)
        if self._bag is not None:
            self._bag.write_raw(self.topic(name), self.robot.published[name][1], now,
                                serialize_message(msg))

    # ---------------------------------------------------------------- episodes
    def begin(self, episode, called_ns, reset_ns):
        """
        Follow ``episode``, its reset asked for at ``called_ns`` and answered by ``reset_ns``.

        Stamps before ``reset_ns`` are the previous episode's; a ``sim/task`` of this seed that
        counts more time since its reset than has passed since ``called_ns`` (plus 0.5 s) is
        from before the reset. (Measured from the answer, a reply slower than 0.5 s on a busy
        CPU left every status of the episode out, and the recorder gave up.)
        """
        with self._lock:
            self._since_ns, self._called_ns = reset_ns, called_ns
            self.state.clear()
            self.status = None
            self.plan = None
            self._episode = (episode, None, None)

    def plan_aloha(self):
        """
        Plan ALOHA's episode once the cube has settled; return whether it is planned.

        Planned from the newest ``sim/task`` (the cube) and ``joint_states`` (the arms, held
        at their start) in the calling thread, not the executor's (it takes about a second).
        """
        with self._lock:
            status, joints = self.status, self.state.get('joint_states')
        if status is None or joints is None or \
                status.get('time_since_reset', 0.0) < aloha_expert.SETTLE:
            return False
        start = {side: [joints.position[joints.name.index(n)] for n in aloha.arm_joints(side)]
                 for side in aloha.SIDES}
        cube = [float(v) for v in status['cube_position']]
        plan = aloha_expert.plan_actions(self._aloha, np.asarray(cube), start)
        with self._lock:
            self.plan = plan
        self.plan_inputs = {'cube_position': cube, 'arm_start': start}
        return True

    def start(self, bag_path):
        """Open the bag, publish the instruction and let the expert act."""
        episode = self._episode[0]
        bag = BagWriter(bag_path, 'mcap').__enter__()
        with self._lock:
            self._bag = bag
            self.actions = self.takeovers = 0
            self._policy_stamp = None
            self._rng = np.random.default_rng([episode.seed, 21])
            self.state.pop(self.primary, None)  # act only on images that are in the bag
            now = self.now_ns()
            self._publish('vla/instruction', String(data=episode.instruction), now)
            # ALOHA's plan starts at the first tick: a dict that it fills in (``_label_aloha``)
            expert = ({} if self._aloha is not None else
                      ScriptedExpert(episode.task, episode.object, period=1.0 / self.rate))
            self._episode = (episode, expert, now)

    def finish(self):
        """Stop acting and close the bag."""
        with self._lock:
            bag, self._bag = self._bag, None
            self._episode = (self._episode[0], None, None) if self._episode else None
        if bag is not None:
            bag.__exit__(None, None, None)

    def ready(self):
        """Return True when the reset shows: a fresh image, pose, joints and sim/task."""
        with self._lock:
            return self.status is not None and all(n in self.state for n in self.robot.stamped)

    def result(self):
        """Return (success, time_to_success) of the current episode from sim/task."""
        with self._lock:
            status = self.status or {}
        return bool(status.get('success')), status.get('time_to_success')

    # ---------------------------------------------------------------- the expert
    def _label(self, now):
        """
        Return (the expert's action on the newest state, its image's stamp) or None.

        None before the episode's state is complete or when the newest image is stale (as
        vla_node, the expert acts only on a fresh image; ALOHA's plan, made from the simulator's
        state, goes on and is stamped now). Called under the lock.
        """
        expert = self._episode[1] if self._episode else None
        image_ns = self.state.get(self.primary)
        if expert is None or image_ns is None:
            return None
        if self._aloha is not None:
            # A plan in time, from the simulator's state, not from an image: stamped now, and
            # late frames (three cameras on a busy machine) skip no step of it.
            return self._label_aloha(expert, now), now
        if (now - image_ns) * 1e-9 > MAX_IMAGE_AGE:
            return None
        pose, joints, status = self.state.get('ee_pose'), self.state.get('joint_states'), \
            self.status
        if None in (pose, joints, status):
            return None
        p, q = pose.pose.position, pose.pose.orientation
        try:
            fingers = sum(joints.position[joints.name.index(n)]
                          for n in ('left_finger_joint', 'right_finger_joint'))
            action = expert.act((p.x, p.y, p.z), status['object_position'],
                                quaternion_to_rpy(q.x, q.y, q.z, q.w), status['object_yaw'],
                                fingers, status['object_top'])
        except (KeyError, ValueError) as exc:  # a sim_arm of another version: say so, skip
            self.node.get_logger().warning(f'no expert action: {type(exc).__name__}: {exc}',
                                           throttle_duration_sec=5.0)
            return None
        return action, image_ns

    def _label_aloha(self, started, now):
        """Return the plan's 14 targets for one period after ``now`` (the plan starts now)."""
        started.setdefault('ns', now)
        return aloha_expert.plan_at(self.plan, (now - started['ns']) * 1e-9 + 1.0 / self.rate)

    def _command(self, action, stamp_ns, now):
        """
        Send ``action`` to arm_bridge and the bag; return vla/action's message.

        The gripper robot's on ``vla/ee_delta`` and ``vla/gripper``, ALOHA's on
        ``vla/joint_command``, stamped ``stamp_ns`` (the image it acted on, as vla_node's; ALOHA:
        now).
        """
        stamp = Time(nanoseconds=stamp_ns).to_msg()
        if self._aloha is not None:
            out = dict(messages.joint_action_to_messages(PRESETS['aloha'], action, stamp))
            self._publish('vla/joint_command', out['joint_command'], now)
            return out['action']
        delta, gripper, raw = messages.action_to_messages(action, stamp, 'base_link')
        self._publish('vla/ee_delta', delta, now)
        self._publish('vla/gripper', gripper, now)
        return raw

    def _act(self):
        """Run at ``rate``: one expert action on the newest image, pose and task state."""
        with self._lock:
            now = self.now_ns()
            labelled = self._label(now)
            if labelled is None:
                return
            self._publish('vla/action', self._command(*labelled, now), now)
            self.actions += 1

    def _on_policy_delta(self, msg):
        """Keep the stamp vla_node gave its command (its chunk's image), as arm_bridge gets it."""
        with self._lock:
            self._policy_stamp = msg.header.stamp

    def _on_policy(self, msg):
        """
        Label a step the policy took; execute the policy's action (or the expert's).

        The policy's action keeps vla_node's stamp (its ``ee_delta``, published just before),
        so arm_bridge ages a chunk's later rows as it does live; the expert's is stamped with
        the image it acted on. The takeover draw is one per policy action, so a seed gives the
        same draws whatever the timing.
        """
        with self._lock:
            now = self.now_ns()
            image_ns = self.state.get(self.primary)
            if self._episode is None or self._episode[1] is None or image_ns is None:
                return  # between episodes (the policy is being reset): nothing reaches the arm
            proposed = np.asarray(msg.data, dtype=np.float64)
            if proposed.shape != (7,) or not np.all(np.isfinite(proposed)):
                self.node.get_logger().warning(
                    f'{POLICY_ACTION[0]}: not a finite 7-D action; skipped',
                    throttle_duration_sec=5.0)
                return
            if self._bag is not None:
                self._bag.write_raw(self.topic(POLICY_ACTION[0]), POLICY_ACTION[1], now,
                                    serialize_message(msg))
            labelled = self._label(now)
            takeover = self._rng.random() < self.takeover and labelled is not None
            if takeover or self._policy_stamp is None:
                self._command(labelled[0] if takeover else proposed, image_ns, now)
            else:
                self._command(proposed, stamp_ns(self._policy_stamp), now)
            if labelled is not None:
                stamp = Time(nanoseconds=image_ns).to_msg()
                _, _, label = messages.action_to_messages(labelled[0], stamp, 'base_link')
                self._publish('vla/action', label, now)
                self.actions += 1
            self.takeovers += takeover

    def bridge_listening(self):
        return all(self._pubs[n].get_subscription_count() > 0 for n in self.robot.commands)

    def policy_up(self):
        """Return True when vla_node listens for the instruction and publishes its actions."""
        return (self._pubs['vla/instruction'].get_subscription_count() > 0
                and self.node.count_publishers(self.topic(POLICY_ACTION[0])) > 0)

    def close(self):
        self.finish()
        super().close()
