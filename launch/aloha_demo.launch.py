"""The simulated ALOHA's closed loop: sim_arm, vla_node, arm_bridge on config/aloha.yaml."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory('vla_ros')
    # Every parameter at its default (vla.yaml), then what ALOHA changes (aloha.yaml): a later
    # file overrides, as --params-file does on the command line.
    config = [os.path.join(share, 'config', name) for name in ('vla.yaml', 'aloha.yaml')]
    # Defaults equal config/aloha.yaml's (test_launch.py checks).
    args = [
        DeclareLaunchArgument('model_path', description='OpenVLA-OFT ALOHA checkpoint directory '
                              '(e.g. one written by vla_tiny_model --oft aloha)'),
        DeclareLaunchArgument('unnorm_key', default_value='',
                              description="dataset statistics key; empty: the checkpoint's only "
                              'one (the miniature: synth_oft_aloha)'),
        DeclareLaunchArgument('control_rate_hz', default_value='25.0',
                              description='control loop rate, Hz (ALOHA: 25)'),
    ]
    rate = ParameterValue(LaunchConfiguration('control_rate_hz'), value_type=float)
    nodes = [
        Node(package='vla_ros', executable='sim_arm', name='sim_arm', output='screen',
             parameters=config),
        # A longer grace after Ctrl-C than launch's 5 s for vla_node, as in vla.launch.py.
        Node(package='vla_ros', executable='vla_node', name='vla_node', output='screen',
             parameters=[*config, {'model_path': LaunchConfiguration('model_path'),
                                   'unnorm_key': LaunchConfiguration('unnorm_key'),
                                   'control_rate_hz': rate}],
             sigterm_timeout=LaunchConfiguration('sigterm_timeout', default='15')),
        Node(package='vla_ros', executable='arm_bridge', name='arm_bridge', output='screen',
             parameters=config),
    ]
    return LaunchDescription(args + nodes)
