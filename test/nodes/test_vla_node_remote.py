"""
vla_node ``policy: remote`` against ``vla_serve`` in its own process, over DDS and websockets.

The OFT LIBERO miniature (two cameras, 8-D state) is served by ``python -m vla_ros.remote.serve``;
the robot of test_vla_node_oft feeds the node, and every chunk row the node publishes is
recomputed with ``predict`` in this process, as for the node with the checkpoint in-process.
"""

import os
import socket
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from std_msgs.msg import Float64MultiArray
from test_vla_node import COMMANDS, CONFIG, latest_diagnostics, TEST_DIR
from test_vla_node_oft import (CAMERAS, groups_by_stamp, INSTRUCTION, oft_checkpoint,  # noqa: F401
                               PROPRIO, reference, robot, rows_0_to_3_of_predict, UNNORM_KEY)

from vla_ros.control.action_layout import multiarray_to_chunk

pytestmark = pytest.mark.dds  # every test here talks DDS


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def start_server(launch, checkpoint, port):
    """Start vla_serve (as ``python -m``: the console script needs a reinstall) on ``port``."""
    server = launch(sys.executable, '-m', 'vla_ros.remote.serve', '--model', checkpoint,
                    '--policy', 'openvla_oft', '--platform', 'libero', '--center-crop',
                    '--unnorm-key', UNNORM_KEY, '--device', 'cpu', '--dtype', 'float32',
                    '--port', port)
    server.wait_for_output('listening on', timeout=120.0)
    return server


def start_remote_node(launch, port, *params):
    args = ['--ros-args', '--params-file', str(CONFIG)]
    for param in ('policy:=remote', f'server_uri:=ws://127.0.0.1:{port}',
                  f'camera_topics:={CAMERAS}', f'proprio:={PROPRIO}',
                  f'instruction:={INSTRUCTION}', 'control_rate_hz:=5.0', *params):
        args += ['-p', param]
    path = os.pathsep.join([TEST_DIR, os.environ.get('PYTHONPATH', '')])
    node = launch('vla_node', *args, env={'PYTHONPATH': path})
    node.wait_for_output('active', timeout=120.0)
    return node


def test_remote_publishes_the_rows_and_stamps_of_predict(
        ros, launch, robot, oft_checkpoint, reference):  # noqa: F811 - the imported fixtures
    port = free_port()
    start_server(launch, oft_checkpoint, port)
    chunks = ros.subscribe(Float64MultiArray, 'vla/action_chunk', COMMANDS)
    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', COMMANDS)
    start_remote_node(launch, port, 'max_image_age:=1.0', 'chunk_mode:=open_loop',
                      'execute_steps:=4')
    feed = robot()
    deltas.wait_for(4, timeout=30.0)
    time.sleep(5.0)
    groups = groups_by_stamp(deltas.messages)[1:-1]  # the first and last may be partial
    assert len(groups) >= 3
    for group in groups:
        index, state_index = rows_0_to_3_of_predict(group, feed, reference)
        whole = [c for c in map(multiarray_to_chunk, chunks.messages)
                 if np.allclose(c, reference(index, state_index), rtol=1e-5, atol=1e-7)]
        assert whole, f'frame {index}: vla/action_chunk never carried its whole chunk'


def test_a_killed_server_stops_output_in_time_is_named_and_output_resumes(
        ros, launch, robot, oft_checkpoint):  # noqa: F811 - the imported fixtures
    port = free_port()
    server = start_server(launch, oft_checkpoint, port)
    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', COMMANDS)
    diag = ros.subscribe(DiagnosticArray, '/diagnostics', COMMANDS)
    timeout, period = 0.5, 0.2
    start_remote_node(launch, port, f'request_timeout:={timeout}', 'execute_steps:=1')
    robot()
    deltas.wait_for(3, timeout=30.0)
    server.popen.kill()  # a crash: SIGKILL, no goodbye
    killed = time.monotonic()
    time.sleep(2.0)
    last = deltas.stamped[-1][0]
    # DDS delivery adds a little: 0.1 s of slack on top of the promise.
    assert last - killed <= period + timeout + 0.1, f'output {last - killed:.2f} s after kill'
    values = latest_diagnostics(diag)
    assert int(values['model_errors']) > 0 and int(values['remote_failures']) > 0
    assert f'127.0.0.1:{port}' in values['remote_last_error']
    assert 'RemoteError' in values['last_error']
    count = len(deltas.messages)
    start_server(launch, oft_checkpoint, port)
    back = time.monotonic()
    deltas.wait_for(count + 3, timeout=15.0)
    # The backoff caps at 2 s: the first action within that, a period and an inference.
    assert deltas.stamped[count][0] - back < 4.0
    values = latest_diagnostics(diag)
    assert int(values['remote_connects']) == 2
    assert float(values['remote_round_trip_p50_ms']) >= float(values['remote_server_p50_ms'])
