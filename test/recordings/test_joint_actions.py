"""Recorded actions of any size: ALOHA's 14 joint targets pair, read and compare like deltas."""

import numpy as np
import pytest
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

from vla_ros.control.action_layout import ACTION_LABEL, multiarray_to_values
from vla_ros.control.images import ConversionError
from vla_ros.control.joints import PRESETS
from vla_ros.evaluation import metrics
from vla_ros.recordings.actions import recorded_actions


def multiarray(label, values):
    msg = Float64MultiArray(data=[float(v) for v in values])
    msg.layout.dim = [MultiArrayDimension(label=label, size=len(values), stride=len(values))]
    return msg


def test_14_d_actions_pair_with_their_steps_as_7_d_ones_do():
    actions = np.arange(3 * 14, dtype=np.float64).reshape(3, 14)
    out = recorded_actions([0, 40, 80], [40, 80, 120], [1, 41, 90], actions)
    assert out.shape == (3, 14)
    assert np.array_equal(out, actions)
    none = recorded_actions([0, 40], [40, 80], [], [], dim=14)
    assert none.shape == (2, 14) and np.all(np.isnan(none))
    with pytest.raises(ValueError, match='7 values, expected 14'):
        recorded_actions([0], [40], [1], np.zeros((1, 7)), dim=14)


def test_a_joint_vla_action_reads_as_its_values_and_a_foreign_label_is_refused():
    names = PRESETS['aloha']
    values = np.linspace(-1.0, 1.0, 14)
    assert np.array_equal(multiarray_to_values(multiarray(' '.join(names), values)), values)
    assert multiarray_to_values(multiarray(ACTION_LABEL, range(7))).shape == (7,)
    with pytest.raises(ConversionError, match='not a vla/action message'):
        multiarray_to_values(multiarray('step', values))


def test_joint_metrics_are_per_joint_and_skip_the_end_effector_ones():
    names = PRESETS['aloha']
    reference = np.zeros((4, 14))
    predicted = reference + np.arange(14) * 0.1
    out = metrics.compute(predicted, reference, np.ones(4, bool), np.full(4, 0.01),
                          np.ones(14), names)
    assert list(out['mae']) == list(names)
    assert out['mae'][names[3]] == pytest.approx(0.3)
    assert out['translation_cosine'] is None and out['gripper_agreement'] is None
    assert '14-D' in out['ee_metrics_skipped']
    steps = metrics.chunk_steps(predicted[:, None], reference[:, None], np.ones(14), names)
    assert steps['chunk_step_mae'][0][names[13]] == pytest.approx(1.3)


def test_a_joint_state_without_velocity_and_effort_reads_back_from_a_bag(tmp_path):
    # As vla_node publishes vla/joint_command and many robots their joint_states: Fast DDS ends
    # the CDR with 8 bytes of padding, which rosbags alone refuses as a size mismatch.
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from vla_ros.recordings.bags import Bag, BagWriter
    sent = JointState(name=list(PRESETS['aloha']), position=np.linspace(0.0, 1.3, 14).tolist())
    sent.header.stamp.sec = 7
    with BagWriter(tmp_path / 'bag') as writer:
        writer.write_raw('/vla/joint_command', 'sensor_msgs/msg/JointState', 10,
                         serialize_message(sent))
    with Bag(tmp_path / 'bag') as bag:
        (_, log_ns, msg), = bag.messages(['/vla/joint_command'])
    assert log_ns == 10 and list(msg.name) == sent.name and msg.header.stamp.sec == 7
    assert np.array_equal(msg.position, sent.position) and not len(msg.velocity)
