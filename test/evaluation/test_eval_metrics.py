"""vla_eval metrics, references and step pairing against values computed by hand."""

import math
import types

from bag_helpers import T0_NS, write_bag
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from std_msgs.msg import String

from vla_ros.control.images import ConversionError
from vla_ros.control.readers import string_from_cdr
from vla_ros.evaluation import metrics, reference
from vla_ros.evaluation.evaluate import EvalOptions, evaluate_bag
from vla_ros.evaluation.report import build_metrics
from vla_ros.policy import Action, Policy
from vla_ros.recordings import steps
from vla_ros.recordings.bags import Bag, BagWriter
from vla_ros.sim.scenes import scene

MS = 1_000_000
RANGE = np.array([0.1, 0.2, 0.0, 0.5, 0.5, 1.0, 1.0])  # q99 - q01; dz has a zero range


class StubPolicy(Policy):
    """Returns a fixed action and records which scene and instruction each call got."""

    action_dim, unnorm_keys = 7, ('k',)

    def __init__(self, values, width=64, height=48):
        self.values = np.asarray(values, dtype=np.float64)
        self.calls = []
        self._scenes = [scene(i, width, height) for i in range(8)]

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        index = next(i for i, s in enumerate(self._scenes) if np.array_equal(s, images[0]))
        self.calls.append((index, instruction, unnorm_key))
        return Action(values=self.values.copy(), valid=True, token_ids=np.arange(7),
                      normalized=self.values.copy())


def test_metrics_equal_hand_computed_values():
    predicted = [[0.01, 0.02, 0.00, 0.1, 0.0, 0.0, 1.0],
                 [0.00, 0.03, 0.04, 0.0, 0.2, 0.0, 0.2],
                 [9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0],  # invalid: left out of the errors
                 [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]  # no reference: left out too
    ref = [[0.02, 0.00, 0.00, 0.0, 0.0, 0.1, 0.9],
           [0.00, 0.03, 0.00, 0.0, 0.0, 0.0, 0.7],
           [0.0] * 7,
           [math.nan] * 7]
    valid = [True, True, False, True]
    m = metrics.compute(predicted, ref, valid, [0.010, 0.020, 0.030, 0.040], RANGE)
    # errors: e0 = (-0.01, 0.02, 0, 0.1, 0, -0.1, 0.1), e1 = (0, 0, 0.04, 0, 0.2, 0, -0.5)
    mae = [0.005, 0.01, 0.02, 0.05, 0.1, 0.05, 0.3]
    rmse = [math.sqrt(0.0001 / 2), math.sqrt(0.0004 / 2), math.sqrt(0.0016 / 2),
            math.sqrt(0.01 / 2), math.sqrt(0.04 / 2), math.sqrt(0.01 / 2), math.sqrt(0.13)]
    names = metrics.ACTION_NAMES
    assert [m['mae'][n] for n in names] == pytest.approx(mae, abs=1e-15)
    assert [m['rmse'][n] for n in names] == pytest.approx(rmse, abs=1e-15)
    assert [m['mae_normalized'][n] for n in names] == pytest.approx(
        [0.05, 0.05, None, 0.1, 0.2, 0.05, 0.3], abs=1e-14)
    assert m['rmse_normalized']['dz'] is None  # zero range: no normalised value
    assert m['mae_normalized_mean'] == pytest.approx(0.75 / 6, abs=1e-15)
    # cos(step 0) = 0.0002 / (sqrt(0.0005) * 0.02) = 1/sqrt(5); cos(step 1) = 0.0009 / 0.0015
    assert m['translation_cosine'] == pytest.approx((1 / math.sqrt(5) + 0.6) / 2, abs=1e-15)
    assert m['translation_cosine_steps'] == 2
    assert m['gripper_agreement'] == 0.5  # open/open agree, closed/open do not
    assert (m['steps_predicted'], m['invalid_actions'], m['steps_compared']) == (4, 1, 2)
    assert m['invalid_rate'] == 0.25
    assert m['latency_ms'] == pytest.approx({'p50': 25.0, 'p95': 38.5, 'p99': 39.7,
                                             'max': 40.0})


def test_cosine_skips_steps_without_translation_and_empty_metrics_are_null():
    m = metrics.compute([[0, 0, 0, 0, 0, 0, 1], [1e-3, 0, 0, 0, 0, 0, 0]],
                        [[1e-3, 0, 0, 0, 0, 0, 1], [-2e-3, 0, 0, 0, 0, 0, 1]],
                        [True, True], [0.01, 0.01], RANGE)
    assert m['translation_cosine'] == -1.0 and m['translation_cosine_steps'] == 1
    empty = metrics.compute(np.zeros((0, 7)), np.zeros((0, 7)), [], [], RANGE)
    assert empty['mae']['dx'] is None and empty['invalid_rate'] is None
    assert empty['translation_cosine'] is None and empty['latency_ms']['p50'] is None


def test_overall_pools_steps_rather_than_averaging_bags():
    def result(errors):
        n = len(errors)
        pred = np.zeros((n, 7))
        pred[:, 0] = errors
        return types.SimpleNamespace(
            name=f'bag{n}', path='x', storage='mcap', metric_inputs=lambda: (
                pred, np.zeros((n, 7)), np.ones(n, bool), np.full(n, 0.01)),
            chunk_inputs=lambda: (pred[:, None], np.zeros((n, 1, 7))),  # one-row chunks
            counts=lambda: {'steps': n})
    data = build_metrics([result([0.1]), result([0.0, 0.0, 0.0])], RANGE, {})
    assert data['bags']['bag1']['metrics']['mae']['dx'] == pytest.approx(0.1)
    assert data['overall']['metrics']['mae']['dx'] == pytest.approx(0.1 / 4)  # not 0.05
    assert data['overall']['metrics']['chunk_step_mae'][0]['dx'] == pytest.approx(0.1 / 4)
    assert data['overall']['metrics']['chunk_step_compared'] == [4]
    assert data['overall']['counts'] == {'steps': 4}


def test_wrap_angle_is_half_open():
    assert reference.wrap_angle([math.pi, -math.pi, 3 * math.pi / 2, -6.0]) == pytest.approx(
        [math.pi, math.pi, -math.pi / 2, -6.0 + 2 * math.pi])


def test_ee_pose_relabelling_equals_hand_computed():
    step_ns = np.array([0, 100, 200, 300]) * MS
    pose_times = np.array([0, 50, 100, 200, 310]) * MS
    poses = [[0, 0, 0, 0, 0, 3.0],
             [0.5, 0.5, 0.5, 0, 0, 3.0],  # superseded by the pose logged at 100 ms
             [0.01, 0.02, 0.0, 0.1, 0.0, -3.0],  # a pose exactly at a step time counts
             [0.01, 0.02, 0.03, 0.1, 0.2, -3.0],
             [9, 9, 9, 0, 0, 0]]  # after the last step time
    ref = reference.relabel_ee_pose(step_ns, pose_times, poses, np.array([0, 150]) * MS,
                                    [1.0, 0.0])
    expected = [[0.01, 0.02, 0.0, 0.1, 0.0, -6.0 + 2 * math.pi, 1.0],  # yaw wraps across pi
                [0.0, 0.0, 0.03, 0.0, 0.2, 0.0, 1.0],
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]  # no newer pose by 300 ms; gripper closed
    np.testing.assert_allclose(ref[:3], expected, atol=1e-15)
    assert np.isnan(ref[3]).all()  # the last step has no next state (BridgeData drops it)
    # Poses from 150 ms on: no pose at or before steps 0 and 1, so no reference for them.
    late = reference.relabel_ee_pose(step_ns, pose_times + 150 * MS, poses, [0], [1.0])
    assert np.isnan(late[:2]).all() and np.isfinite(late[2]).all()


def test_steps_follow_the_live_node(tmp_path):
    images = [(T0_NS, 0, T0_NS), (T0_NS + 500 * MS, 1, T0_NS + 500 * MS),
              (T0_NS + 1000 * MS, 2, T0_NS + 1100 * MS)]  # stamped 0.1 s in the future
    bag = write_bag(tmp_path / 'steps', 'mcap', images=images, instructions=[
        (T0_NS + 100 * MS, 'a'), (T0_NS + 700 * MS, '  b  '), (T0_NS + 1500 * MS, 'c')])
    policy = StubPolicy(np.zeros(7))
    result = evaluate_bag(bag, policy, 'k', EvalOptions(reference='none', max_image_age=0.35),
                          progress=False)
    # Steps every 0.2 s from the first to the last image; the instruction logged after the
    # last image makes no steps of its own.
    assert result.status == ['idle', 'ready', 'stale', 'ready', 'ready', 'future']
    assert list(result.time_ns - T0_NS) == [k * 200 * MS for k in range(6)]
    assert policy.calls == [(0, 'a', 'k'), (1, 'a', 'k'), (1, 'b', 'k')]
    assert list(result.image_stamp_ns[[1, 3, 4]] - T0_NS) == [0, 500 * MS, 500 * MS]
    counts = result.counts()
    assert (counts['idle'], counts['stale'], counts['future'], counts['predicted']) == (1, 1, 1, 3)
    unchecked = evaluate_bag(bag, StubPolicy(np.zeros(7)), 'k',
                             EvalOptions(reference='none', max_image_age=0), progress=False)
    assert unchecked.status == ['idle'] + ['ready'] * 5


def test_an_instruction_is_decoded_from_its_bytes_as_the_node_decodes_it(tmp_path):
    """Invalid UTF-8 is refused offline with the words the live node refuses it with."""
    good, bad = serialize_message(String(data='pick up the cup')), \
        b'\x00\x01\x00\x00' + (6).to_bytes(4, 'little') + b'\xff\xfe\xfd!!\x00'
    path = write_bag(tmp_path / 'bag', 'mcap', images=[(T0_NS + k * 200 * MS, k,
                                                        T0_NS + k * 200 * MS) for k in range(3)])
    mixed = tmp_path / 'mixed'
    with Bag(path) as source, BagWriter(mixed, 'mcap') as writer:
        for topic, log_ns, data in source.messages(['/camera/image_raw'], raw=True):
            writer.write_raw(topic, 'sensor_msgs/msg/Image', log_ns, data)
        for log_ns, data in ((T0_NS - MS, good), (T0_NS + 300 * MS, bad)):
            writer.write_raw('/vla/instruction', 'std_msgs/msg/String', log_ns, data)
    with pytest.raises(ConversionError) as live:
        string_from_cdr(bad)  # what vla_node's instruction callback does with the bytes
    with Bag(mixed) as opened:
        events = [e for e in steps.StepReader(opened, ['/camera/image_raw'],
                                              {'instruction': '/vla/instruction'}, 5.0)
                  if isinstance(e, steps.Instruction)]
    assert events == [steps.Instruction(T0_NS - MS, 'pick up the cup'),
                      steps.Instruction(T0_NS + 300 * MS, refused=str(live.value))]
    assert str(live.value).startswith('instruction is not valid UTF-8')
    result = evaluate_bag(mixed, StubPolicy(np.zeros(7)), 'k', EvalOptions(reference='none'),
                          progress=False)
    assert result.status == ['ready', 'ready', 'idle'] and result.bad_instructions == 1


def test_steps_above_the_camera_rate_each_get_their_own_recorded_action(tmp_path):
    """--rate 20 on 10 Hz cameras: each step's reference is the action logged after its tick."""
    images = [(T0_NS + i * 100 * MS, i, T0_NS + i * 100 * MS) for i in range(4)]
    steps_ns = [T0_NS + k * 50 * MS for k in range(7)]  # up to the last image
    recorded = np.arange(7)[:, None] * 0.01 * np.ones(7)  # step k's action: 0.01 k everywhere
    bag = write_bag(tmp_path / 'live', 'mcap', images=images,
                    instructions=[(T0_NS - MS, 'pick up the red cup')],
                    actions=[(t + 5 * MS, a) for t, a in zip(steps_ns, recorded)])
    result = evaluate_bag(bag, StubPolicy(np.zeros(7)), 'k', EvalOptions(rate=20.0),
                          progress=False)
    assert list(result.time_ns) == steps_ns and result.status == ['ready'] * 7
    assert list(result.image_log_ns) == [images[k // 2][0] for k in range(7)]
    np.testing.assert_array_equal(result.reference, recorded)
    m = metrics.compute(*result.metric_inputs(), RANGE)
    assert m['steps_compared'] == 7
    assert m['mae']['dx'] == pytest.approx(recorded[:, 0].mean(), abs=1e-12)


def test_ee_pose_reference_through_a_bag(tmp_path):
    step = 200 * MS
    images = [(T0_NS + k * step, k, T0_NS + k * step) for k in range(4)]
    poses = [(T0_NS + k * step, (0.01 * k, 0.0, -0.02 * k), (0.0, 0.05 * k, 0.0))
             for k in range(4)]
    bag = write_bag(tmp_path / 'ee', 'sqlite3', images=images, poses=poses,
                    instructions=[(T0_NS, 'pick up the red cup')],
                    grippers=[(T0_NS, 1.0), (T0_NS + step + MS, 0.0)])
    constant = [0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    options = EvalOptions(reference='ee_pose', gripper_topic='/gripper/state')
    result = evaluate_bag(bag, StubPolicy(constant), 'k', options, progress=False)
    np.testing.assert_allclose(result.reference[:3], [[0.01, 0, -0.02, 0, 0.05, 0, 1.0],
                                                      [0.01, 0, -0.02, 0, 0.05, 0, 1.0],
                                                      [0.01, 0, -0.02, 0, 0.05, 0, 0.0]],
                               atol=1e-12)
    assert np.isnan(result.reference[3]).all()
    m = metrics.compute(*result.metric_inputs(), RANGE)
    # per step: |0.02 - 0.01|, |0 - 0|, |0 + 0.02|, 0, 0.05, 0, gripper 1, 1, 0
    assert m['steps_compared'] == 3
    assert [m['mae'][n] for n in metrics.ACTION_NAMES] == pytest.approx(
        [0.01, 0, 0.02, 0, 0.05, 0, 2 / 3], abs=1e-12)
    cos = (0.02 * 0.01) / (0.02 * math.hypot(0.01, 0.02))
    assert m['translation_cosine'] == pytest.approx(cos, abs=1e-12)
    assert m['gripper_agreement'] == pytest.approx(1 / 3)  # predicted closed (0.0) agrees once
