"""
Running the package's launch files under ROS 2 Jazzy's own ``launch``, as ``ros2 launch`` would.

A machine whose ROS comes from the ros-jazzy-* wheels has rclpy but neither ``launch`` nor
``launch_ros``; ``../shared/vendor/ros2_launch_jazzy`` holds their sources (its README says how to
use them). The launch process (ros2_launch.py) runs with those sources and a stand-in
``composition_interfaces`` (launch_stand_ins/) on PYTHONPATH, and finds the package through the
ament index of a colcon build (conftest's ``colcon_install``). colcon writes the console scripts
with the interpreter that ran colcon (Debian's ``/usr/bin/python3``); the nodes must run on this
interpreter, which has torch and the ROS wheels, so ``venv_prefix`` copies the install prefix
with the scripts' first line pointing here, as a virtual-environment user would.
"""

import os
from pathlib import Path
import re
import shutil
import sys

from colcon_helpers import PACKAGE, site_packages
from conftest import SHARED
import psutil
import pytest

TEST_DIR = Path(__file__).resolve().parent
VENDOR = SHARED / 'vendor' / 'ros2_launch_jazzy'
LAUNCH_PACKAGES = ('launch', 'launch_xml', 'launch_yaml', 'launch_ros')
RUNNER = TEST_DIR / 'ros2_launch.py'
STAND_INS = TEST_DIR / 'launch_stand_ins'
# What launch prints for each process it starts, and for one that exits with status 0.
STARTED = re.compile(r'\[INFO\] \[([\w.-]+)\]: process started with pid \[(\d+)\]')
CLEAN_EXIT = re.compile(r'\[INFO\] \[([\w.-]+)\]: process has finished cleanly \[pid (\d+)\]')
# A line a user would read as an error: a logged error, a traceback, an exception's name, a
# process launch reports as died (non-zero exit).
ERROR_LINE = re.compile(r'\[(ERROR|FATAL)\]|Traceback \(most recent call last\)'
                        r'|\w+(Error|Exception)\b|process has died')


def vendored_launch_paths():
    """Return the four package folders of the vendored launch sources; skip when absent."""
    paths = [VENDOR / name for name in LAUNCH_PACKAGES]
    missing = [p.name for p in paths if not (p / p.name / '__init__.py').is_file()]
    if missing:
        pytest.skip(f'ROS 2 launch sources ({", ".join(missing)}) not found in {VENDOR}; they '
                    'come with shared/ beside the repository (or set VLA_SHARED_DIR)')
    for module in ('osrf_pycommon', 'lark'):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f'{module} is not installed beside {sys.executable}, which launch needs '
                        "(pip install -e '.[dev]')")
    return paths


def venv_prefix(install_prefix, dest):
    """Copy a colcon install prefix to ``dest``; point its console scripts at this interpreter."""
    shutil.copytree(install_prefix, dest, symlinks=True)
    for script in (dest / 'lib' / PACKAGE).iterdir():
        first, rest = script.read_text().split('\n', 1)
        assert first.startswith('#!'), f'{script} has no #! line: {first!r}'
        script.write_text(f'#!{sys.executable}\n{rest}')
    return dest


def launch_env(prefix, log_dir, pythonpath=()):
    """Return the environment variables of the launch process (the nodes inherit them)."""
    paths = [*map(str, vendored_launch_paths()), str(STAND_INS), str(site_packages(prefix)),
             *map(str, pythonpath)]
    ament = [str(prefix)] + [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(':') if p]
    return {'PYTHONPATH': os.pathsep.join(paths), 'AMENT_PREFIX_PATH': os.pathsep.join(ament),
            'ROS_LOG_DIR': str(log_dir)}


def started_processes(output):
    """Return {launch name: pid} of every process launch reports it started."""
    return {name: int(pid) for name, pid in STARTED.findall(output)}


def check_clean_shutdown(output, returncode, group):
    """Assert that launch and every process it started ended cleanly, with no error line."""
    started = started_processes(output)
    assert started, f'launch started no process:\n{output}'
    clean = dict(CLEAN_EXIT.findall(output))
    unclean = sorted(set(started) - set(clean))
    assert not unclean, f'not finished cleanly after SIGINT: {unclean}:\n{output}'
    errors = [line for line in output.splitlines() if ERROR_LINE.search(line)]
    assert not errors, 'error lines:\n' + '\n'.join(errors) + f'\n----- whole output:\n{output}'
    assert returncode == 0, f'launch exited {returncode}:\n{output}'
    left = [p.info for p in psutil.process_iter(['pid', 'cmdline', 'status'])
            if (p.pid in started.values() or process_group(p.pid) == group)
            and p.info['status'] != psutil.STATUS_ZOMBIE]
    assert not left, f'processes left running after SIGINT: {left}'


def process_group(pid):
    """Return the process group of ``pid``, or None when it is gone."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
