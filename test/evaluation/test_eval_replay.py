"""
A bag replayed with ``/clock`` through vla_node on ``use_sim_time`` gives vla_eval's actions.

This is ``ros2 bag play --clock`` made deterministic (see ``bag_helpers.SimTimeReplay``): the bag
is stamped around t = 1000 s, far from the wall clock, so the node publishes only if its timer and
its image-age check both run on the node (simulated) clock.
"""

import time

from bag_helpers import frames, NS, SimTimeReplay, T0_NS, write_bag
from conftest import REPO
from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray

from vla_ros.evaluation.evaluate import EvalOptions, evaluate_bag
from vla_ros.policy import OpenVLAPolicy

pytestmark = pytest.mark.dds  # every test here talks DDS

CONFIG = REPO / 'config' / 'vla.yaml'
COMMANDS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
MS = 1_000_000
UNNORM_KEY = 'synth_bridge'


def stamp_ns(header):
    return header.stamp.sec * NS + header.stamp.nanosec


def test_sim_time_replay_through_vla_node_equals_vla_eval(ros, launch, tiny_checkpoint,
                                                          tmp_path):
    # Camera at 10 Hz, control at 5 Hz; the instruction changes mid-run.
    bag = write_bag(tmp_path / 'run', 'sqlite3', images=frames(12, 100 * MS), instructions=[
        (T0_NS - 50 * MS, 'pick up the red cup'), (T0_NS + 650 * MS, 'open the top drawer')])
    policy = OpenVLAPolicy.from_pretrained(tiny_checkpoint, device='cpu', dtype='float32')
    result = evaluate_bag(bag, policy, UNNORM_KEY, EvalOptions(reference='none'),
                          progress=False)
    policy.close()
    published = result.predicted_mask & result.valid  # what the node must publish
    expected = {int(result.image_stamp_ns[k]): result.predicted[k]
                for k in np.flatnonzero(published)}
    assert len(expected) >= 3 and len(set(result.instruction)) == 2

    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', COMMANDS)
    actions = ros.subscribe(Float64MultiArray, 'vla/action', COMMANDS)
    replay = SimTimeReplay(ros.node, bag)
    node = launch('vla_node', '--ros-args', '--params-file', CONFIG,
                  '-p', f'model_path:={tiny_checkpoint}', '-p', f'unnorm_key:={UNNORM_KEY}',
                  '-p', 'use_sim_time:=true', '-p', 'control_rate_hz:=5.0',
                  '-p', 'device:=cpu', '-p', 'dtype:=float32')
    node.wait_for_output('active', timeout=120.0)
    for pub in [*replay.publishers.values(), replay.clock_pub]:
        ros.wait_for_subscribers(pub, timeout=30.0)
    replay.publish_clock(T0_NS - NS)  # on the 0.2 s grid, like the timer's start time
    time.sleep(0.3)
    count = 0
    for k, t_ns in enumerate(result.time_ns):
        replay.tick(int(t_ns))
        if published[k]:
            count += 1
            deltas.wait_for(count, timeout=60.0)
    time.sleep(0.5)  # nothing else may arrive

    received = deltas.messages
    assert [stamp_ns(d.header) for d in received] == sorted(expected)
    raws = actions.wait_for(len(expected), timeout=10.0)
    assert len(raws) == len(expected)
    for delta, raw in zip(received, raws):
        np.testing.assert_array_equal(np.asarray(raw.data), expected[stamp_ns(delta.header)])
        assert delta.header.frame_id == 'base_link'
