"""
The DDS harness: real executables in their own processes, talking to the test over real DDS.

Every test that touches ROS gets its own ``ROS_DOMAIN_ID`` with discovery kept on localhost
(``ros_env``), its own participant in a private rclpy context, never the global one (``ros``),
and the executables it starts (``launch``) stopped when it ends. The processes and the
participant are the closed-loop programs' own (``vla_ros.closed_loop.processes``). conftest.py
loads this file as a plugin and marks ``dds`` every test that uses one of these fixtures.
"""

import itertools
import os
from pathlib import Path
import subprocess
import threading
import time

from conftest import REPO, wait_until
import pytest

from vla_ros.closed_loop.processes import executable, Participant, ProcessError, start, stop

# Fast DDS accepts domain ids 0..232. Spread runs by pid so two suites on one machine do not meet;
# VLA_TEST_DOMAIN_BASE (0..223) pins a run's ten domains, for suites run side by side on purpose.
_DOMAIN_BASE = int(os.environ.get('VLA_TEST_DOMAIN_BASE', 1 + (os.getpid() % 23) * 10))
_DOMAIN_IDS = itertools.cycle(range(_DOMAIN_BASE, _DOMAIN_BASE + 10))


@pytest.fixture
def ros_env(monkeypatch):
    """Give the test (and everything it starts) an isolated, localhost-only ROS domain."""
    domain = next(_DOMAIN_IDS)
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    monkeypatch.delenv('ROS_LOCALHOST_ONLY', raising=False)
    monkeypatch.delenv('ROS_STATIC_PEERS', raising=False)
    monkeypatch.setenv('PYTHONUNBUFFERED', '1')
    monkeypatch.setenv('RCUTILS_COLORIZED_OUTPUT', '0')
    return domain


class Inbox:
    """Messages received on one subscription, kept in arrival order with their receive time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items = []

    def __call__(self, msg):
        with self._lock:
            self._items.append((time.monotonic(), msg))

    @property
    def messages(self):
        with self._lock:
            return [m for _, m in self._items]

    @property
    def stamped(self):
        with self._lock:
            return list(self._items)

    def clear(self):
        with self._lock:
            self._items.clear()

    def wait_for(self, count=1, timeout=10.0):
        wait_until(lambda: len(self.messages) >= count, timeout,
                   message=f'{count} message(s)')
        return self.messages


class RosClient(Participant):
    """The test's own ROS participant (the kit's), with inboxes and waits that fail the test."""

    def __init__(self, name='vla_test_client'):
        super().__init__(name)

    def publisher(self, msg_type, topic, qos):
        return self.node.create_publisher(msg_type, topic, qos)

    def subscribe(self, msg_type, topic, qos):
        inbox = Inbox()
        self.node.create_subscription(msg_type, topic, inbox, qos)
        return inbox

    def wait_for_subscribers(self, publisher, count=1, timeout=15.0):
        wait_until(lambda: publisher.get_subscription_count() >= count, timeout,
                   message=f'a subscriber on {publisher.topic_name}')

    def wait_for_publishers(self, topic, count=1, timeout=15.0):
        topic = self.node.resolve_topic_name(topic)
        wait_until(lambda: self.node.count_publishers(topic) >= count, timeout,
                   message=f'a publisher on {topic}')

    def call(self, srv_type, name, request, timeout=10.0):
        try:
            return self.call_service(srv_type, name, request, timeout)
        except ProcessError as exc:
            failure = str(exc)
        pytest.fail(failure)


@pytest.fixture
def ros(ros_env):
    """Yield a live rclpy participant in the test's own domain; tear down all it made."""
    client = RosClient()
    yield client
    client.close()


class Process:
    """One executable started for a test (the kit's ``start``), its output kept in a file."""

    def __init__(self, argv, log_path, env):
        self.argv = argv
        self.log_path = log_path
        self.popen = start(argv, log_path, env=env, cwd=REPO)

    @property
    def alive(self):
        return self.popen.poll() is None

    def output(self):
        return Path(self.log_path).read_text(errors='replace')

    def wait_for_output(self, text, timeout=30.0):
        def seen():
            if text in self.output():
                return True
            if not self.alive:
                pytest.fail(f'{self.argv[0]} exited ({self.popen.returncode}) before printing '
                            f'{text!r}:\n{self.output()}')
            return False
        wait_until(seen, timeout, interval=0.05, message=f'{text!r} from {self.argv[0]}')

    def wait_exit(self, timeout=30.0):
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f'{self.argv[0]} still running after {timeout} s:\n{self.output()}')

    def stop(self, timeout=10.0):
        """SIGINT like Ctrl-C, then SIGKILL the whole group (the kit's ``stop``)."""
        return stop(self.popen, timeout)


@pytest.fixture
def launch(ros_env, tmp_path):
    """
    Start executables (console scripts or ``python -m`` modules) for the test; stop them after.

    ``launch('vla_node', '--ros-args', '-p', 'x:=1')`` starts the installed console script;
    ``launch(sys.executable, 'path/to/script.py')`` starts anything else.
    """
    started = []

    def launch_one(name, *args, env=None):
        argv = [executable(name), *map(str, args)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = Process(argv, tmp_path / f'{Path(name).name}-{len(started)}.log', full_env)
        started.append(proc)
        return proc

    yield launch_one
    for proc in started:
        proc.stop()
        # Shown by pytest only when the test fails: the executable's own words.
        print(f'----- output of {" ".join(proc.argv)} (exit {proc.popen.returncode}) -----')
        print(proc.output())
