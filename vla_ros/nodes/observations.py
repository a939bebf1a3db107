"""
vla_node's inputs: the newest frames of every camera and the robot's state, as an ``Observation``.

Callbacks only store the newest message of each topic, the newest two of each camera
(sensor-data QoS: latest only; a best-effort subscription also matches reliable publishers). At a
tick, ``observation()`` makes the ``Observation`` the control core judges: one ``Frame`` per
camera, primary first, paired by ``core.matched_frames`` (a camera whose new frame arrived before
the others' uses its previous one, stamped with theirs), and the state ``StateLayout.read`` makes
of ``ee_pose`` and ``joint_states`` when the policy needs it. Every field is read by
``vla_ros.control.readers``, as vla_eval reads a bag: the pose must be in ``action_frame``, the
frame of the deltas (arm_bridge refuses a pose in another frame too).
"""

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CompressedImage, Image, JointState

from vla_ros.control.concurrency import Latest, Recent
from vla_ros.control.core import Frame, matched_frames, Observation
from vla_ros.control.readers import stamp_seconds
from vla_ros.control.state import StateLayout
from vla_ros.nodes import qos


class ObservationInputs:
    """
    The subscriptions of one node's observations (see the module docstring).

    ``pose_frame``: the frame ee_pose must be in (vla_node's ``action_frame``).
    """

    def __init__(self, node, camera_topics, compressed, proprio, max_camera_skew, pose_frame):
        self.node = node
        self.max_camera_skew = max_camera_skew
        self.pose_frame = pose_frame
        suffix = '/compressed' if compressed else ''
        self.topics = tuple(node.resolve_topic_name(topic) + suffix for topic in camera_topics)
        self.layout = StateLayout(proprio)
        self.pose_topic = node.resolve_topic_name('ee_pose')
        self.joint_topic = node.resolve_topic_name('joint_states')
        self._frames = [Recent(2) for _ in self.topics]
        self._pose, self._joints = Latest(), Latest()
        image_type = CompressedImage if compressed else Image
        # (type, topic, callback) of every input, cameras first, then the state's topics.
        self.callbacks = [(image_type, topic, self._store_frame(slot, topic))
                          for slot, topic in zip(self._frames, self.topics)]
        if self.layout.needs_pose:
            self.callbacks.append((PoseStamped, self.pose_topic, self._pose.put))
        if self.layout.joints:
            self.callbacks.append((JointState, self.joint_topic, self._joints.put))
        self.subscriptions = [node.create_subscription(kind, topic, callback, qos.SENSOR)
                              for kind, topic, callback in self.callbacks]

    @staticmethod
    def _store_frame(slot, topic):
        def store(msg):
            slot.put(Frame(msg, stamp_seconds(msg.header.stamp), topic))
        return store

    def observation(self):
        """Return the ``Observation`` of the newest messages (frames may be None)."""
        state = self._state() if self.layout else None
        frames = matched_frames([slot.get() for slot in self._frames], self.max_camera_skew,
                                lambda frame: frame.stamp_s)
        return Observation(frames, self.topics, state, needs_state=bool(self.layout))

    def _state(self):
        return self.layout.read(self._pose.get(), self._joints.get(), self.pose_topic,
                                self.joint_topic, self.pose_frame)

    def ages(self, now):
        """Return {topic: seconds since its newest stamp} of the cameras and the state."""
        ages = {topic: now - frames[0].stamp_s for topic, frames
                in zip(self.topics, (slot.get() for slot in self._frames)) if frames}
        if self.layout:
            state = self._state()
            if not state.problem:
                ages['state'] = now - state.stamp_s
        return ages

    def clear(self):
        for slot in (*self._frames, self._pose, self._joints):
            slot.clear()
