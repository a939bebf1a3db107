"""
The marker rule (marker_rules.py) fails a test that leaves the process without saying so.

Tiny tests run through pytest in a subprocess with this folder's conftest as a plugin, as
test_ci_skips.py does: each unmarked test that takes the ROS graph, starts a process or starts
rclpy fails, naming what it did; the same tests marked pass, and a `process` test that starts
rclpy fails.
"""

import os
from pathlib import Path
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.process  # pytest runs in a subprocess

TESTS = """
import subprocess
import sys

import pytest
import rclpy

CHILD = [sys.executable, '-c', 'pass']
RCLPY = 'import rclpy; c = rclpy.Context(); rclpy.init(context=c); rclpy.shutdown(context=c)'


def context():
    c = rclpy.Context()
    rclpy.init(context=c)
    rclpy.shutdown(context=c)


def test_unmarked_ros_env(ros_env):
    pass


def test_unmarked_child():
    subprocess.run(CHILD, check=True)


def test_unmarked_context():
    context()


@pytest.mark.process
def test_process_child_that_starts_rclpy():
    subprocess.run([sys.executable, '-c', RCLPY], check=True)


@pytest.mark.dds
def test_dds_ros_env_child_and_context(ros_env):
    subprocess.run([sys.executable, '-c', RCLPY], check=True)
    context()


@pytest.mark.process
def test_process_child():
    subprocess.run(CHILD, check=True)


def test_unmarked_and_quiet():
    pass
"""


def test_each_rule_fails_an_unmarked_test_and_the_marked_ones_pass(tmp_path):
    (tmp_path / 'test_tiny.py').write_text(TESTS)
    here = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if k not in ('CI', 'PYTEST_ADDOPTS')}
    # The run's own ROS_LOG_DIR: this test is watched for rcl, the tiny dds test starts it.
    env.update(PYTHONPATH=os.pathsep.join([str(here), str(here.parent)]),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_LOG_DIR=str(tmp_path / 'log'))
    done = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'conftest', '-q', '-rA', '-p',
                           'no:cacheprovider', '-W', 'ignore::pytest.PytestUnknownMarkWarning',
                           'test_tiny.py'], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "test_tiny.py::test_unmarked_ros_env takes ['ros_env'] (the ROS graph): mark it " \
        'dds' in out, out
    assert 'ERROR test_tiny.py::test_unmarked_ros_env - ' in out, out
    assert re.search(r"started a process: subprocess.Popen \['.*python.*', '-c', 'pass'\]",
                     out), out
    assert re.search(r'test_unmarked_context is marked neither dds nor process, and\n'
                     r'  started rcl \(an rclpy context, here or in a child\): it wrote '
                     r"\['python_\d+_\d+\.log'\]", out), out
    assert 'test_process_child_that_starts_rclpy is marked process, not dds, and\n' \
        '  started rcl' in out, out
    for name in ('unmarked_child', 'unmarked_context', 'process_child_that_starts_rclpy'):
        assert f'FAILED test_tiny.py::test_{name} - ' in out, out
    for name in ('dds_ros_env_child_and_context', 'process_child', 'unmarked_and_quiet'):
        assert f'PASSED test_tiny.py::test_{name}' in out, out
    assert '3 failed, 3 passed, 1 error' in out, out
