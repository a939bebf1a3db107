"""
vla_node's lifecycle over DDS, each test against a real vla_node process.

Reconfigure after a topic instruction or a reset, lifecycle requests that are not valid now, a
policy that calls sys.exit or hangs, loader errors, and Ctrl-C.
"""

import os
from pathlib import Path
import re
import signal
import time

from conftest import wait_until
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from policies import FAIL_INSTRUCTION
import pytest
from rcl_interfaces.srv import GetParameters
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from test_vla_node import (COMMANDS, is_hold, latest_diagnostics, reference,  # noqa: F401
                           send_instruction, set_param, start_acting, start_camera, start_node)

pytestmark = pytest.mark.dds  # every test here talks DDS

# Lines a clean run or a clean stop must not print (rclpy's own tracebacks included).
ERROR_LINE = re.compile(r'error|traceback|exception|failed', re.IGNORECASE)


def change_state(ros, transition=None, label='', timeout=60.0):
    """Ask vla_node for one lifecycle transition (by name or label); return ``success``."""
    request = ChangeState.Request()
    if transition is not None:
        request.transition.id = (transition if isinstance(transition, int)
                                 else getattr(Transition, f'TRANSITION_{transition}'))
    request.transition.label = label
    return ros.call(ChangeState, '/vla_node/change_state', request, timeout=timeout).success


def lifecycle_state(ros):
    return ros.call(GetState, '/vla_node/get_state', GetState.Request()).current_state.label


def instruction_parameter(ros):
    get = GetParameters.Request(names=['instruction'])
    return ros.call(GetParameters, '/vla_node/get_parameters', get).values[0].string_value


def reconfigure(ros):
    """Deactivate, clean up, configure and activate, as a lifecycle manager restarts a node."""
    for transition in ('DEACTIVATE', 'CLEANUP', 'CONFIGURE', 'ACTIVATE'):
        assert change_state(ros, transition), transition


def timed(call):
    """Return (result, seconds) of ``call()``."""
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def error_lines(node):
    return [line for line in node.output().splitlines() if ERROR_LINE.search(line)]


def test_reconfigure_follows_the_newest_instruction_or_stays_idle_after_a_reset(
        ros, launch, tiny_checkpoint, reference):  # noqa: F811
    start_text, topic_text = 'pick up the red cup', 'open the top drawer of the cabinet'
    actions = ros.subscribe(Float64MultiArray, 'vla/action', COMMANDS)
    node = start_node(launch, tiny_checkpoint, 'control_rate_hz:=5.0',
                      f'instruction:={start_text}')
    start_camera(launch, '--rate', '20', '--frames', '1')  # always scene 0
    node.wait_for_output('active', timeout=90.0)
    expected = reference(0, topic_text).values
    assert not (reference(0, start_text).values == expected).all(), 'the model ignores the task'

    def acts_on_the_topic_instruction():
        actions.clear()
        actions.wait_for(3, timeout=20.0)
        received = [list(m.data) for m in actions.messages]
        assert all(values == list(expected) for values in received), \
            'after a reconfigure the node acts on its start-up instruction again'

    send_instruction(ros, topic_text)
    wait_until(lambda: any(list(m.data) == list(expected) for m in actions.messages), 20.0,
               message='actions for the topic instruction')
    reconfigure(ros)
    acts_on_the_topic_instruction()
    assert instruction_parameter(ros) == topic_text
    assert f"instruction='{topic_text}'" in node.output()  # the configured line says it

    assert ros.call(Trigger, '/vla_node/reset', Trigger.Request()).success
    assert instruction_parameter(ros) == ''
    reconfigure(ros)
    time.sleep(0.5)
    actions.clear()
    time.sleep(1.5)
    assert actions.messages == [], 'a reset node resumed an old task after a reconfigure'
    assert instruction_parameter(ros) == ''

    # An instruction set as a parameter is followed too; one refused there idles the node, and
    # the parameter says so instead of keeping the old task.
    assert set_param(ros, 'instruction', f'  {topic_text} ').successful
    acts_on_the_topic_instruction()
    assert instruction_parameter(ros) == topic_text  # as the node follows it: stripped
    assert not set_param(ros, 'instruction', 'x' * 1001).successful
    wait_until(lambda: instruction_parameter(ros) == '', 5.0, message="the parameter to say ''")
    assert node.alive


def test_invalid_lifecycle_requests_are_refused_and_ctrl_c_stops_quietly(
        ros, launch, tiny_checkpoint):
    # Predictions of 0.6 s and more at 5 Hz (images may be that old at use): the next one starts
    # within a tick (0.2 s) of each action, so Ctrl-C 0.3 s after an action lands in one.
    node, deltas = start_acting(ros, launch, tiny_checkpoint, 'policy:=policies:slow',
                                'control_rate_hz:=5.0', 'max_image_age:=2.0',
                                env={'VLA_TEST_POLICY_DELAY': '0.6'})
    for request in ({'transition': 'CONFIGURE'}, {'transition': 'CLEANUP'},
                    {'transition': 'ACTIVATE'}, {'transition': 99},
                    {'label': 'configure'}, {'label': 'no_such_transition'}):
        assert not change_state(ros, **request), f'{request} accepted while active'
        assert node.alive, f'{request} ended the node:\n{node.output()}'
    assert lifecycle_state(ros) == 'active'
    assert 'lifecycle request refused: transition id 1 is not valid in state' in node.output()
    count = len(deltas.messages)
    deltas.wait_for(count + 2, timeout=20.0)
    assert not any(is_hold(m) for m in deltas.messages[count:]), 'the node stopped acting'

    count = len(deltas.messages)
    deltas.wait_for(count + 1, timeout=10.0)
    time.sleep(0.3)
    os.killpg(node.popen.pid, signal.SIGINT)  # Ctrl-C, while a prediction runs
    assert node.wait_exit(timeout=30.0) == 0
    assert error_lines(node) == [], node.output()


def test_a_policy_calling_sys_exit_is_a_model_error_and_the_node_acts_again(
        ros, launch, tiny_checkpoint):
    diag_inbox = ros.subscribe(DiagnosticArray, '/diagnostics', COMMANDS)
    node, deltas = start_acting(ros, launch, tiny_checkpoint, 'policy:=policies:exiting',
                                'control_rate_hz:=5.0')
    send_instruction(ros, FAIL_INSTRUCTION)
    wait_until(lambda: int(latest_diagnostics(diag_inbox)['model_errors']) >= 2, 20.0,
               message='SystemExit counted as a model error')
    assert 'SystemExit: injected sys.exit' in latest_diagnostics(diag_inbox)['last_error']
    assert 'policy error, nothing published: SystemExit' in node.output()
    send_instruction(ros, 'pick up the red cup')
    count = len(deltas.messages)
    deltas.wait_for(count + 2, timeout=20.0)  # the worker took the next predictions
    ok, seconds = timed(lambda: change_state(ros, 'DEACTIVATE'))
    assert ok and seconds < 3.0, f'deactivate took {seconds:.1f} s'
    assert node.alive


def test_deactivate_while_inference_hangs_answers_at_once_and_nothing_follows_the_hold(
        ros, launch, tiny_checkpoint):
    hang = 5.0  # the old deactivate waited for it: 4.4 s and more after the 3 ticks below
    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', COMMANDS)
    diag_inbox = ros.subscribe(DiagnosticArray, '/diagnostics', COMMANDS)
    node = start_node(launch, tiny_checkpoint, 'policy:=policies:slow', 'control_rate_hz:=5.0',
                      'instruction:=pick up the red cup',
                      env={'VLA_TEST_POLICY_DELAY': str(hang)})
    start_camera(launch, '--rate', '20')
    node.wait_for_output('active', timeout=90.0)
    # The first prediction starts at the first tick with an image, then hangs for `hang` s.
    wait_until(lambda: int(latest_diagnostics(diag_inbox)['ticks_skipped']) >= 3, 20.0,
               message='a prediction under way')

    ok, seconds = timed(lambda: change_state(ros, 'DEACTIVATE'))
    assert ok and seconds < 3.0, f'deactivate took {seconds:.1f} s while inference hung'
    wait_until(lambda: deltas.messages and is_hold(deltas.messages[-1]), 5.0, message='the hold')
    for name, srv_type, request in (('enable', SetBool, SetBool.Request(data=True)),
                                    ('get_state', GetState, GetState.Request())):
        response, seconds = timed(lambda: ros.call(srv_type, f'/vla_node/{name}', request))
        assert seconds < 2.0, f'~/{name} took {seconds:.1f} s while inference hung'
    assert latest_diagnostics(diag_inbox)['lifecycle_state'] == 'inactive'
    # /diagnostics keeps coming until the hung prediction ends (and says how long it took).
    wait_until(lambda: float(latest_diagnostics(diag_inbox)['inference_latency_max_ms'])
               >= hang * 1e3, hang + 10.0, message='the hung prediction to end')
    time.sleep(0.5)
    assert len(deltas.messages) == 1 and is_hold(deltas.messages[0]), \
        'a prediction computed before the hold was published after it'

    # A hang after activate again: ~/reset answers during it, and deactivate again at once.
    skipped = int(latest_diagnostics(diag_inbox)['ticks_skipped'])
    assert change_state(ros, 'ACTIVATE')
    wait_until(lambda: int(latest_diagnostics(diag_inbox)['ticks_skipped']) >= skipped + 3,
               20.0, message='a second prediction under way')
    response, seconds = timed(lambda: ros.call(Trigger, '/vla_node/reset', Trigger.Request()))
    assert response.success and seconds < 2.0, f'~/reset took {seconds:.1f} s'
    ok, seconds = timed(lambda: change_state(ros, 'DEACTIVATE'))
    assert ok and seconds < 3.0, f'deactivate took {seconds:.1f} s while inference hung'
    assert node.alive


@pytest.fixture(scope='module')
def oft_empty_head(tmp_path_factory):
    """Write a miniature OFT checkpoint whose action head file is empty, as a failed copy."""
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    folder = write_tiny_oft_checkpoint(tmp_path_factory.mktemp('oft') / 'libero')
    (head,) = Path(folder).glob('action_head--*checkpoint.pt')
    head.write_bytes(b'')
    return str(folder)


@pytest.mark.parametrize('case, words', [
    ('empty_oft_head', ['is empty (0 bytes)', 'copy the file again']),
    ('factory_raises', ["policy 'policies:refusing' failed to load: ValueError: no policy for",
                        'fix policies:refusing (called as factory(model_path, device=...']),
    ('not_callable', ["policy 'policies:FAIL_INSTRUCTION': policies.FAIL_INSTRUCTION is a str, "
                      'not a callable']),
], ids=['empty-oft-head', 'factory-raises-ValueError', 'not-callable'])
def test_loader_errors_fail_configure_with_one_clear_line(launch, tiny_checkpoint, request, case,
                                                          words):
    if case == 'empty_oft_head':
        node = start_node(launch, request.getfixturevalue('oft_empty_head'),
                          'policy:=openvla_oft')
    else:
        policy = 'refusing' if case == 'factory_raises' else 'FAIL_INSTRUCTION'
        node = start_node(launch, tiny_checkpoint, f'policy:=policies:{policy}')
    assert node.wait_exit(timeout=90.0) == 1
    output = node.output()
    assert output.count('[ERROR]') == 1, output
    assert 'configure failed (1 problem)' in output and 'Traceback' not in output, output
    for text in words:
        assert text in output, output
