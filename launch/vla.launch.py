"""Start vla_node with config/vla.yaml; expose only the arguments that vary between robots."""

import os
from typing import List

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    config = os.path.join(get_package_share_directory('vla_ros'), 'config', 'vla.yaml')
    # Defaults equal config/vla.yaml's (test_launch.py checks); the YAML holds everything else.
    args = [
        DeclareLaunchArgument('model_path', description='OpenVLA checkpoint directory'),
        DeclareLaunchArgument('unnorm_key', default_value='',
                              description='dataset statistics key, e.g. bridge_orig'),
        DeclareLaunchArgument('device', default_value='auto', description='auto, cpu, cuda:N'),
        DeclareLaunchArgument('control_rate_hz', default_value='5.0',
                              description='control loop rate, Hz'),
        DeclareLaunchArgument('policy', default_value='openvla',
                              description='openvla or openvla_oft'),
        DeclareLaunchArgument('camera_topics', default_value='[camera/image_raw]',
                              description='one image topic per policy image, primary first, '
                              'e.g. [camera/image_raw, wrist_camera/image_raw]'),
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the node'),
        DeclareLaunchArgument('image_topic', default_value='camera/image_raw',
                              description='camera topic to remap camera/image_raw to'),
    ]
    node = Node(
        package='vla_ros',
        executable='vla_node',
        name='vla_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[config, {
            'model_path': LaunchConfiguration('model_path'),
            'unnorm_key': LaunchConfiguration('unnorm_key'),
            'device': LaunchConfiguration('device'),
            'control_rate_hz': ParameterValue(LaunchConfiguration('control_rate_hz'),
                                              value_type=float),
            'policy': LaunchConfiguration('policy'),
            'camera_topics': ParameterValue(LaunchConfiguration('camera_topics'),
                                            value_type=List[str]),
        }],
        remappings=[('camera/image_raw', LaunchConfiguration('image_topic'))],
        # Ctrl-C: vla_node finishes the inference in flight, sends its hold and frees the model,
        # then the interpreter unloads torch (seconds on a loaded CPU). launch's 5 s default
        # escalates to SIGTERM with an error line; `sigterm_timeout:=N` still overrides.
        sigterm_timeout=LaunchConfiguration('sigterm_timeout', default='15'),
    )
    return LaunchDescription(args + [node])
