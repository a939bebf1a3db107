"""The closed loop of the README demo: sim_arm -> vla_node -> arm_bridge -> sim_arm, over DDS."""

import re
import sys
import time

from conftest import REPO, wait_until
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from launch_helpers import process_group
import numpy as np
import psutil
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from vla_ros.closed_loop import processes
from vla_ros.nodes import diagnostics
from vla_ros.sim import tasks

pytestmark = pytest.mark.dds  # every test here talks DDS

RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
CONFIG = str(REPO / 'config' / 'vla.yaml')


def test_closed_loop_runs_10_s_without_error(ros, launch, tiny_checkpoint):
    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', RELIABLE)
    twists = ros.subscribe(TwistStamped, 'servo_node/delta_twist_cmds', RELIABLE)
    poses = ros.subscribe(PoseStamped, 'ee_pose', BEST_EFFORT)
    diags = ros.subscribe(DiagnosticArray, '/diagnostics', RELIABLE)
    nodes = [
        launch('sim_arm', '--ros-args', '--params-file', CONFIG),
        launch('vla_node', '--ros-args', '--params-file', CONFIG, '-p',
               f'model_path:={tiny_checkpoint}', '-p', 'unnorm_key:=synth_bridge'),
        launch('arm_bridge', '--ros-args', '--params-file', CONFIG),
    ]
    instruction = ros.publisher(String, 'vla/instruction', RELIABLE)
    ros.wait_for_subscribers(instruction, timeout=90.0)
    poses.wait_for(1, timeout=60.0)
    start_pose = poses.messages[-1].pose.position
    instruction.publish(String(data='pick up the red cube'))
    deltas.wait_for(1, timeout=30.0)
    deltas.clear()
    time.sleep(10.0)

    assert all(node.alive for node in nodes), 'a node died during the closed loop'
    received = deltas.stamped
    # Image stamp to command: when vla/ee_delta reached the test (one clock, one machine).
    # Inbox receive times are monotonic; the stamps are ROS (system) time.
    offset = time.time() - time.monotonic()
    latency = np.array([t + offset - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)
                        for t, m in received]) * 1e3
    p50, p95 = np.percentile(latency, [50, 95])
    print(f'closed loop, 10 s: {len(received)} actions; image stamp -> vla/ee_delta latency '
          f'p50 {p50:.1f} ms, p95 {p95:.1f} ms; {len(twists.messages)} twists')
    assert 10 * 5 * 0.8 <= len(received) <= 10 * 5 * 1.1
    assert 0 < p50 < 1000 and p95 < 2000
    moving = [t for t in twists.messages if abs(t.twist.linear.x) + abs(t.twist.linear.y)
              + abs(t.twist.linear.z) > 0]
    assert moving, 'arm_bridge never commanded motion'
    end_pose = poses.messages[-1].pose.position
    moved = np.linalg.norm([end_pose.x - start_pose.x, end_pose.y - start_pose.y,
                            end_pose.z - start_pose.z])
    assert moved > 0.01, 'the simulated arm did not move'
    statuses = {}
    for msg in diags.messages:
        for status in msg.status:
            statuses[status.name.split(':')[0]] = diagnostics.values_of(status)
    assert {'vla_node', 'arm_bridge', 'sim_arm'} <= set(statuses)
    assert int(statuses['vla_node']['model_errors']) == 0
    assert int(statuses['vla_node']['invalid_actions']) == 0
    assert int(statuses['arm_bridge']['rejected_nan']) == 0


@pytest.mark.parametrize('policy', ['reach', 'openvla_oft'])
def test_demo_runs_an_oft_miniature_with_two_cameras_state_and_chunks(launch, tmp_path, policy):
    """`make demo` (the trained reach policy) and the random OFT: the summary a user reads."""
    out = tmp_path / 'demo'
    seconds = 10  # the demo's default is 20: the summary is the same, the suite's time is not
    demo = launch(sys.executable, '-m', 'vla_ros.closed_loop.demo', '--policy', policy,
                  '--seconds', str(seconds), '--out', str(out))
    code = demo.wait_exit(timeout=240.0)
    text = demo.output()
    assert code == 0, text
    summary = text[text.index(f'== {seconds} s closed loop'):]
    instruction = tasks.episode(0).instruction  # the demo's default episode: seed 0, reach
    assert f"sending instruction: '{instruction}'" in text
    assert re.search(rf"task       reach, seed 0: '{instruction}' (succeeded after [\d.]+ s|not "
                     r'reached \(fingertips [\d.]+ cm across, [+-][\d.]+ cm above)', summary), \
        summary
    figures = re.search(rf'vla_node   {policy}: actions: (\d+), achieved ([\d.]+) Hz \(target '
                        r'10.0\); chunks (\d+) ', summary)
    assert figures, summary
    actions, rate, chunks = int(figures[1]), float(figures[2]), int(figures[3])
    # On 2 CPU cores (sim_arm rendering two cameras beside it) a miniature's chunk takes one to
    # two control periods (p50 90-160 ms), so open_loop skips one or more ticks per chunk of 8:
    # 141 to 185 actions in 20 s in six runs, before and after issue 18 alike. The rate is
    # a benchmark's figure (bench.node); here the loop must run, at most of its rate.
    assert seconds * 10 * 0.6 <= actions <= seconds * 10 * 1.1 and 6.0 <= rate <= 11.0, summary
    assert actions / 8 * 0.9 <= chunks <= actions, summary  # open_loop: 8 actions per chunk
    assert 'skewed 0, bad state 0, invalid 0' in summary, summary
    assert re.search(r'latency    image stamp -> vla/ee_delta: p50 [\d.]+ ms', summary)
    assert re.search(r'arm_bridge .* clamped: translation \d+, rotation \d+, box \d+', summary)
    moved = float(re.search(r'end effector moved ([\d.]+) cm', summary)[1])
    assert moved > 1.0, summary
    for name in ('ee_path.png', 'frame_end.png', 'wrist_end.png'):
        assert (out / name).is_file(), name


DEAF_CHILD_LEADER = """
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal('
                          'signal.SIGINT, signal.SIG_IGN); print("deaf", flush=True); '
                          'time.sleep(30)'], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
print('up', flush=True)
signal.pause()
"""


def test_stop_ends_the_whole_process_group_even_when_its_leader_goes_at_ctrl_c(tmp_path):
    """A node's own children must not outlive it: stop kills what is left of the group."""
    log = tmp_path / 'leader.log'
    # The leader's child is deaf to SIGINT, as a node's worker process can be; the leader exits
    # 0 at Ctrl-C (Python's handler, so also where this test runs with SIGINT ignored, as in a
    # background job of a non-interactive shell: sh could not trap it there).
    proc = processes.start([sys.executable, '-c', DEAF_CHILD_LEADER], log)
    wait_until(lambda: 'up' in log.read_text(), 10.0, message='the leader and its deaf child')
    assert processes.stop(proc, timeout=5.0) == 0  # the leader went at Ctrl-C, cleanly

    def group_gone():  # nothing of its group is left running (a zombie waits for init only)
        return not [p for p in psutil.process_iter(['status'])
                    if p.info['status'] != psutil.STATUS_ZOMBIE
                    and process_group(p.pid) == proc.pid]
    wait_until(group_gone, 5.0, message='the group to end')


def test_a_participant_does_not_read_the_programs_command_line_as_ros_arguments(monkeypatch):
    """vla_sim_eval's ``-p NAME:=VALUE`` is vla_node's: rcl took it as a remap of its own node."""
    monkeypatch.setattr(sys, 'argv', ['vla_sim_eval', '-p', 'vla/action:=elsewhere'])
    participant = processes.Participant('vla_test_argv')
    try:
        assert participant.node.resolve_topic_name('vla/action') == '/vla/action'
    finally:
        participant.close()
