"""
The launch files, run under ROS 2 Jazzy's own ``launch`` as ``ros2 launch`` would, and read.

They are also checked statically against setup.py and config/vla.yaml.

Each run builds on conftest's ``colcon_install`` (the package built with colcon), starts
ros2_launch.py in its own process (launch_helpers.py says how the vendored launch sources are
used), talks to the nodes over DDS, and ends with SIGINT, as Ctrl-C in a terminal would.
"""

import ast
import os
from pathlib import Path
import re
import signal
import sys

from conftest import wait_until
from geometry_msgs.msg import PoseStamped, TwistStamped
from launch_helpers import check_clean_shutdown, launch_env, RUNNER, venv_prefix
import numpy as np
import pytest
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / 'launch').glob('*.launch.py'))
CONFIG = REPO / 'config' / 'vla.yaml'
ALOHA_CONFIG = REPO / 'config' / 'aloha.yaml'


def console_scripts():
    tree = ast.parse((REPO / 'setup.py').read_text())
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(r'\s*(\w+)\s*=\s*[\w.]+:\w+\s*', node.value)
            if match:
                scripts.add(match.group(1))
    return scripts


def string_kwargs(tree, name):
    return [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            for kw in node.keywords
            if kw.arg == name and isinstance(kw.value, ast.Constant)]


def launch_arguments(tree):
    """Return {name: default} of every DeclareLaunchArgument in a launch file."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'DeclareLaunchArgument':
            name = node.args[0].value
            defaults = [kw.value.value for kw in node.keywords if kw.arg == 'default_value']
            found[name] = defaults[0] if defaults else None
    return found


def test_there_is_a_launch_file():
    assert (REPO / 'launch' / 'vla.launch.py') in LAUNCH_FILES


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_parses_and_names_what_exists(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)
    executables = string_kwargs(tree, 'executable')
    assert executables, 'the launch file starts no executable'
    assert set(executables) <= console_scripts(), f'unknown executables in {path.name}'
    assert set(string_kwargs(tree, 'package')) == {'vla_ros'}
    for config in re.findall(r"'(\w+\.yaml)'", path.read_text()):
        assert (REPO / 'config' / config).is_file(), f'{path.name} names config/{config}'
    # A launch file only composes: no installs, no shell, no eval.
    for forbidden in ('subprocess', 'os.system', 'eval(', 'exec(', 'pip '):
        assert forbidden not in path.read_text(), f'{path.name} uses {forbidden}'


def test_vla_launch_arguments_are_the_documented_ones_with_the_yaml_defaults():
    tree = ast.parse((REPO / 'launch' / 'vla.launch.py').read_text())
    args = launch_arguments(tree)
    assert set(args) == {'model_path', 'unnorm_key', 'device', 'control_rate_hz', 'namespace',
                         'image_topic', 'policy', 'camera_topics'}
    params = yaml.safe_load(CONFIG.read_text())['/**/vla_node']['ros__parameters']
    for name in ('unnorm_key', 'device', 'control_rate_hz', 'policy', 'camera_topics'):
        assert params[name] == yaml.safe_load(args[name] or "''"), \
            f'launch default of {name} differs from the YAML'


def test_aloha_demo_launch_arguments_default_to_the_yaml_files():
    args = launch_arguments(ast.parse((REPO / 'launch' / 'aloha_demo.launch.py').read_text()))
    assert set(args) == {'model_path', 'unnorm_key', 'control_rate_hz'}
    params = yaml.safe_load(CONFIG.read_text())['/**/vla_node']['ros__parameters']
    params.update(yaml.safe_load(ALOHA_CONFIG.read_text())['/**/vla_node']['ros__parameters'])
    for name in ('unnorm_key', 'control_rate_hz'):
        assert params[name] == yaml.safe_load(args[name] or "''"), \
            f'launch default of {name} differs from config/vla.yaml + config/aloha.yaml'


def test_setup_installs_launch_and_config_files():
    setup = (REPO / 'setup.py').read_text()
    assert "glob('launch/*.launch.py')" in setup and "glob('config/*.yaml')" in setup


# ------------------------------------------------------------------ run as `ros2 launch` would

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
T = ParameterType
# Every argument of vla.launch.py but model_path, none at its default: (launch argument value,
# the vla_node parameter it sets as (type, value); None for the two that are not parameters).
# control_rate_hz is given as '7', which YAML reads as an integer: the node must get a double.
EVERY_ARGUMENT = {
    'unnorm_key': ('synth_kitchen', (T.PARAMETER_STRING, 'synth_kitchen')),
    'device': ('cpu', (T.PARAMETER_STRING, 'cpu')),
    'control_rate_hz': ('7', (T.PARAMETER_DOUBLE, 7.0)),
    'policy': ('policies:slow', (T.PARAMETER_STRING, 'policies:slow')),  # test/policies.py
    'camera_topics': ('[front_camera/image_raw]',
                      (T.PARAMETER_STRING_ARRAY, ['front_camera/image_raw'])),
    'namespace': ('robot1', None),  # the node is /robot1/vla_node
    'image_topic': ('rear_camera/image_raw', None),  # remaps camera/image_raw: not listened to
}


@pytest.fixture(scope='module')
def launch_prefix(colcon_install, tmp_path_factory):
    """Return the colcon install prefix, its console scripts run by this interpreter."""
    return venv_prefix(colcon_install[1], tmp_path_factory.mktemp('launch') / 'vla_ros')


@pytest.fixture
def ros2_launch(launch, launch_prefix, tmp_path):
    """Start ``ros2 launch vla_ros FILE NAME:=VALUE ...`` in its own process; return it."""
    env = launch_env(launch_prefix, tmp_path / 'ros_log', pythonpath=[Path(__file__).parent])
    env['VLA_TEST_POLICY_DELAY'] = '0'  # policies:slow, without the sleep

    def start(file_name, **arguments):
        return launch(sys.executable, RUNNER, 'vla_ros', file_name,
                      *(f'{name}:={value}' for name, value in arguments.items()), env=env)
    return start


def parameters(ros, node, names):
    """Return {name: (type, value)} of ``node``'s parameters, read over its get_parameters."""
    reply = ros.call(GetParameters, f'{node}/get_parameters', GetParameters.Request(names=names),
                     timeout=60.0)
    return {name: (value.type, parameter_value_to_python(value))
            for name, value in zip(names, reply.values)}


def stop_with_sigint(proc):
    """Ctrl-C: SIGINT to the launch process's group; check everything it started ended cleanly."""
    os.killpg(proc.popen.pid, signal.SIGINT)
    returncode = proc.wait_exit(timeout=30.0)
    check_clean_shutdown(proc.output(), returncode, group=proc.popen.pid)


@pytest.mark.dds
def test_every_vla_launch_argument_reaches_vla_node_typed(ros, ros2_launch, tiny_checkpoint):
    declared = launch_arguments(ast.parse((REPO / 'launch' / 'vla.launch.py').read_text()))
    assert set(declared) == {'model_path', *EVERY_ARGUMENT}, 'a launch argument is not tested'
    proc = ros2_launch('vla.launch.py', model_path=tiny_checkpoint,
                       **{name: value for name, (value, _) in EVERY_ARGUMENT.items()})
    expected = {name: param for name, (_, param) in EVERY_ARGUMENT.items() if param}
    expected['model_path'] = (T.PARAMETER_STRING, tiny_checkpoint)
    assert parameters(ros, '/robot1/vla_node', sorted(expected)) == expected
    wait_until(lambda: ('/robot1/front_camera/image_raw', ['sensor_msgs/msg/Image']) in
               ros.node.get_subscriber_names_and_types_by_node('vla_node', '/robot1'), 60.0,
               message='/robot1/vla_node listening on /robot1/front_camera/image_raw')
    stop_with_sigint(proc)


@pytest.mark.dds
def test_vla_launch_defaults_typed_and_image_topic_remaps(ros, ros2_launch, tiny_checkpoint):
    proc = ros2_launch('vla.launch.py', model_path=tiny_checkpoint, unnorm_key='synth_bridge',
                       image_topic='front_camera/image_raw')
    config = yaml.safe_load(CONFIG.read_text())['/**/vla_node']['ros__parameters']
    assert parameters(ros, '/vla_node', ['control_rate_hz', 'camera_topics', 'device']) == {
        'control_rate_hz': (T.PARAMETER_DOUBLE, config['control_rate_hz']),
        'camera_topics': (T.PARAMETER_STRING_ARRAY, config['camera_topics']),
        'device': (T.PARAMETER_STRING, config['device'])}
    wait_until(lambda: ('/front_camera/image_raw', ['sensor_msgs/msg/Image']) in
               ros.node.get_subscriber_names_and_types_by_node('vla_node', '/'), 60.0,
               message='vla_node listening on /front_camera/image_raw (image_topic)')
    stop_with_sigint(proc)


@pytest.mark.dds
def test_demo_launch_closes_the_loop_and_stops_on_sigint(ros, ros2_launch, tiny_checkpoint):
    declared = launch_arguments(ast.parse((REPO / 'launch' / 'demo.launch.py').read_text()))
    assert set(declared) == {'model_path', 'unnorm_key', 'control_rate_hz'}
    deltas = ros.subscribe(PoseStamped, 'vla/ee_delta', RELIABLE)
    twists = ros.subscribe(TwistStamped, 'servo_node/delta_twist_cmds', RELIABLE)
    poses = ros.subscribe(PoseStamped, 'ee_pose', BEST_EFFORT)
    proc = ros2_launch('demo.launch.py', model_path=tiny_checkpoint, unnorm_key='synth_kitchen',
                       control_rate_hz='8')
    assert parameters(ros, '/vla_node', ['model_path', 'unnorm_key', 'control_rate_hz']) == {
        'model_path': (T.PARAMETER_STRING, tiny_checkpoint),
        'unnorm_key': (T.PARAMETER_STRING, 'synth_kitchen'),
        'control_rate_hz': (T.PARAMETER_DOUBLE, 8.0)}
    instruction = ros.publisher(String, 'vla/instruction', RELIABLE)
    ros.wait_for_subscribers(instruction, timeout=60.0)
    start = poses.wait_for(1, timeout=60.0)[-1].pose.position
    instruction.publish(String(data='pick up the red cube'))
    deltas.wait_for(3, timeout=60.0)
    wait_until(lambda: any(t.twist.linear.x or t.twist.linear.y or t.twist.linear.z
                           for t in twists.messages), 10.0, message='arm_bridge moving the arm')

    def moved():
        now = poses.messages[-1].pose.position
        return abs(now.x - start.x) + abs(now.y - start.y) + abs(now.z - start.z) > 1e-3
    wait_until(moved, 10.0, message='sim_arm moving')
    stop_with_sigint(proc)


@pytest.fixture(scope='module')
def aloha_checkpoint(tmp_path_factory):
    """Write the miniature OpenVLA-OFT ALOHA checkpoint (vla_tiny_model --oft aloha), seed 0."""
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    return str(write_tiny_oft_checkpoint(tmp_path_factory.mktemp('oft') / 'aloha', 'aloha',
                                         seed=0))


@pytest.mark.dds
def test_aloha_demo_launch_drives_both_arms_and_stops_on_sigint(ros, ros2_launch,
                                                                aloha_checkpoint):
    """`ros2 launch vla_ros aloha_demo.launch.py model_path:=...`: config/aloha.yaml's loop."""
    commands = ros.subscribe(JointState, 'vla/joint_command', RELIABLE)
    trajectories = {c: ros.subscribe(JointTrajectory, f'{c}/joint_trajectory', RELIABLE)
                    for c in ('left_arm_controller', 'right_arm_controller')}
    joints = ros.subscribe(JointState, 'joint_states', BEST_EFFORT)
    proc = ros2_launch('aloha_demo.launch.py', model_path=aloha_checkpoint)
    # aloha.yaml over vla.yaml, the launch argument's default rate typed double
    assert parameters(ros, '/vla_node', ['policy', 'platform', 'action_space', 'proprio',
                                         'control_rate_hz', 'unnorm_key']) == {
        'policy': (T.PARAMETER_STRING, 'openvla_oft'),
        'platform': (T.PARAMETER_STRING, 'aloha'),
        'action_space': (T.PARAMETER_STRING, 'joint_position'),
        'proprio': (T.PARAMETER_STRING_ARRAY, ['aloha']),
        'control_rate_hz': (T.PARAMETER_DOUBLE, 25.0),
        'unnorm_key': (T.PARAMETER_STRING, '')}
    assert parameters(ros, '/arm_bridge', ['output_mode', 'trajectory_points']) == {
        'output_mode': (T.PARAMETER_STRING, 'joint_trajectory'),
        'trajectory_points': (T.PARAMETER_STRING, 'chunk')}
    assert parameters(ros, '/sim_arm', ['robot', 'task']) == {
        'robot': (T.PARAMETER_STRING, 'aloha'), 'task': (T.PARAMETER_STRING, 'transfer_cube')}
    instruction = ros.publisher(String, 'vla/instruction', RELIABLE)
    ros.wait_for_subscribers(instruction, timeout=60.0)
    start = np.array(joints.wait_for(1, timeout=60.0)[-1].position)
    instruction.publish(String(data='transfer the cube'))
    assert len(commands.wait_for(3, timeout=60.0)[-1].name) == 14
    for controller, received in trajectories.items():
        received.wait_for(1, timeout=30.0)

    def moved():
        return np.abs(np.array(joints.messages[-1].position) - start).max() > 0.01
    wait_until(moved, 10.0, message='the simulated ALOHA moving')
    stop_with_sigint(proc)
