"""
The marker rule, checked for every test of every run: a test that leaves this process says so.

- ``dds``: the test talks DDS: it takes a fixture of the ROS graph (``ROS_FIXTURES``), starts an
  rclpy context, or starts a program that does (a node, ``ros2 launch``).
- ``process``: it starts other processes, none of which talks DDS (a Python subprocess, colcon
  build, flake8's workers).

``make test-fast`` runs neither (nor ``gpu``). Between the start of its setup and the end of its
teardown, a test that is not marked ``dds`` fails when

- it takes a fixture of ``ROS_FIXTURES`` (checked before setup, from pytest's fixture closure, so
  one taken through another fixture counts), or without any mark one of ``PROCESS_FIXTURES``;
- rcl sets up its logging, here or in a child: it does so when a first rclpy context starts, and
  then writes a log file into ``ROS_LOG_DIR``, which points at an empty folder for the test;
- it has no ``process`` mark either, and this interpreter starts a process: Python's audit events
  for every way it has (``subprocess``, ``os.fork``, ``os.exec*``, ``os.posix_spawn``, ...).

conftest.py loads this module as a plugin (``pytest_plugins``); test_markers.py shows each rule.
"""

import os
from pathlib import Path
import sys
import tempfile
import threading

import pytest

# The fixtures that put a test on a ROS graph, and those that start a process of their own.
ROS_FIXTURES = frozenset({'ros', 'ros_env', 'launch'})
PROCESS_FIXTURES = frozenset({'colcon_install'})
MARKS = ('dds', 'process')
STARTS_A_PROCESS = frozenset({'subprocess.Popen', 'os.fork', 'os.forkpty', 'os.exec',
                              'os.posix_spawn', 'os.spawn', 'os.system', 'pty.spawn'})


class Watch:
    """What an unmarked test did that needs a mark, gathered while ``active``."""

    def __init__(self):
        self.active = False
        self.seen = []
        self._lock = threading.Lock()

    def audit(self, event, args):
        # Called for every audit event of the process (file opens, imports...): stay cheap.
        if event in STARTS_A_PROCESS and self.active:
            with self._lock:
                self.seen.append(f'{event}{_argv(event, args)}')

    def take(self):
        with self._lock:
            seen, self.seen = self.seen, []
        return seen


def _argv(event, args):
    """Return what ran, for the message: the argv of a Popen or an exec, else nothing."""
    if event not in ('subprocess.Popen', 'os.exec', 'os.posix_spawn') or len(args) < 2:
        return ''
    argv = args[1]
    return f' {argv!r:.300}' if isinstance(argv, (str, bytes)) else f' {list(map(str, argv))[:6]}'


WATCH = Watch()
sys.addaudithook(WATCH.audit)  # audit hooks cannot be removed: one for the interpreter's life


def marked(item):
    """Return the marks of ``MARKS`` the test has (its own, its class's or its module's)."""
    return {name for name in MARKS if item.get_closest_marker(name)}


def fixture_problem(item):
    """Return why the test's fixtures need a mark it lacks, or None."""
    fixtures = set(getattr(item, 'fixturenames', ()))
    marks = marked(item)
    if fixtures & ROS_FIXTURES and 'dds' not in marks:
        return f'takes {sorted(fixtures & ROS_FIXTURES)} (the ROS graph): mark it dds'
    if fixtures & PROCESS_FIXTURES and not marks:
        return f'takes {sorted(fixtures & PROCESS_FIXTURES)} (starts a process): mark it process'
    return None


class RosLogDir:
    """An empty ``ROS_LOG_DIR`` for one test; ``take`` returns (and removes) what rcl wrote."""

    def __init__(self, root):
        self.path = Path(tempfile.mkdtemp(prefix='ros-log-', dir=root))
        self._old = os.environ.get('ROS_LOG_DIR')
        os.environ['ROS_LOG_DIR'] = str(self.path)

    def take(self):
        written = sorted(self.path.iterdir())
        for path in written:
            path.unlink()
        return [path.name for path in written]

    def close(self):
        if self._old is None:
            os.environ.pop('ROS_LOG_DIR', None)
        else:
            os.environ['ROS_LOG_DIR'] = self._old
        self.path.rmdir()


_LOG_ROOT = []
_CURRENT = {}  # the unmarked test being watched: {'item': ..., 'logs': RosLogDir}


def _check(item):
    """Fail the test if, since the last check, it started a process or rcl."""
    if _CURRENT.get('item') is not item:
        return
    seen, logs = WATCH.take(), _CURRENT['logs'].take()
    if not (seen or logs):
        return
    lines = [f'{item.nodeid} is marked ' + ('process, not dds' if _CURRENT['marks'] else
                                            'neither dds nor process') + ', and']
    lines += [f'  started a process: {s}' for s in seen[:5]]
    if logs:
        lines.append(f'  started rcl (an rclpy context, here or in a child): it wrote {logs}')
    lines.append('Mark it dds if it talks DDS, process if it only starts processes '
                 '(test/marker_rules.py).')
    pytest.fail('\n'.join(lines), pytrace=False)


def _stop():
    WATCH.active = False
    if _CURRENT:
        _CURRENT.pop('logs').close()
        _CURRENT.clear()


# Plain hooks, not wrappers (any pytest >= 7, as on the GPU machine): tryfirst runs before
# pytest's own setup, trylast after its call and its teardown (not when those raised: then the
# next test's setup or the end of the run stops the watch).
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _stop()
    marks = marked(item)
    if 'dds' in marks:
        return
    problem = fixture_problem(item)
    if problem:
        pytest.fail(f'{item.nodeid} {problem} (test/marker_rules.py)', pytrace=False)
    if not _LOG_ROOT:
        _LOG_ROOT.append(tempfile.mkdtemp(prefix='vla-marker-rules-'))
    _CURRENT.update(item=item, logs=RosLogDir(_LOG_ROOT[0]), marks=marks)
    WATCH.take()
    WATCH.active = not marks  # a `process` test may start processes, not rcl


@pytest.hookimpl(trylast=True)
def pytest_runtest_call(item):
    _check(item)  # what setup and the test did: a failure of the test, not an error


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        _check(item)
    finally:
        _stop()


def pytest_unconfigure(config):
    _stop()
    for root in _LOG_ROOT:
        os.rmdir(root)
