"""
Test harness: real executables in their own processes, talking to the test over real DDS.

Every test that touches ROS gets its own ``ROS_DOMAIN_ID`` with discovery kept on localhost, its
own rclpy context (never the global one), and a clean process table when it ends. Those tests
are marked ``dds`` (marker_rules.py checks it), so ``-m 'not dds'`` runs the rest
(``make test-python``).

Under ``CI=true`` a test that skips because something it needs is missing fails instead, naming
it (``pytest_runtest_makereport`` below): CI cannot go green by skipping.
"""

import itertools
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('VLA_SHARED_DIR', REPO.parent / 'shared'))
# Console scripts live beside the interpreter running the tests (the .venv, or a ROS install).
BIN_DIR = Path(sys.executable).parent

# Fast DDS accepts domain ids 0..232. Spread runs by pid so two suites on one machine do not meet;
# VLA_TEST_DOMAIN_BASE (0..223) pins a run's ten domains, for suites run side by side on purpose.
_DOMAIN_BASE = int(os.environ.get('VLA_TEST_DOMAIN_BASE', 1 + (os.getpid() % 23) * 10))
_DOMAIN_IDS = itertools.cycle(range(_DOMAIN_BASE, _DOMAIN_BASE + 10))

# A test that starts a process or talks DDS says so with a mark: marker_rules.py.
pytest_plugins = ('marker_rules',)
CI = os.environ.get('CI', '').lower() in ('true', '1', 'yes')
# The only skips CI may take: what its machines cannot have by design, not what an install step
# forgot. No GPU; ROS from PyPI wheels, not a ROS install (cv_bridge comes only with one).
CI_MAY_SKIP = re.compile(r"needs (two )?CUDA( devices)?$|could not import 'cv_bridge'")


def _skip_reason(report):
    """Return the reason of a skipped report (pytest keeps it as (path, line, 'Skipped: ...'))."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix('Skipped: ')


def _fail_skip_under_ci(report):
    """Under CI=true, turn a skip that CI may not take into a failure that names its reason."""
    if not (CI and report.skipped) or hasattr(report, 'wasxfail'):
        return
    reason = _skip_reason(report)
    if CI_MAY_SKIP.search(reason):
        return
    report.outcome = 'failed'
    report.longrepr = (f'CI=true: this test would skip, and CI may not skip it; what it needs is '
                       f'missing: {reason}')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_skip_under_ci((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _fail_skip_under_ci((yield).get_result())


def wait_until(predicate, timeout, interval=0.02, message='condition'):
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {timeout:.1f} s waiting for {message}')
        time.sleep(interval)


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


class RosClient:
    """The test's own ROS participant: one node in a private context, spun on a thread."""

    def __init__(self, name='vla_test_client'):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        # Not the MultiThreadedExecutor: its dispatch thread holds the GIL most of the time, which
        # delays the test thread that stamps and publishes commands.
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

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
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                pytest.fail(f'service {name} did not appear within {timeout} s')
            future = client.call_async(request)
            wait_until(future.done, timeout, message=f'a response from {name}')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5.0)


@pytest.fixture
def ros(ros_env):
    """Yield a live rclpy participant in the test's own domain; tear down all it made."""
    client = RosClient()
    yield client
    client.close()


class Process:
    """One executable started for a test, in its own process group, its output kept in a file."""

    def __init__(self, argv, log_path, env):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, 'wb')
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
                                      start_new_session=True)

    @property
    def alive(self):
        return self.popen.poll() is None

    def output(self):
        if not self._log.closed:
            self._log.flush()
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
        """SIGINT like Ctrl-C, then SIGKILL the whole group if it does not go."""
        if self.alive:
            try:
                os.killpg(self.popen.pid, signal.SIGINT)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait(timeout=timeout)
        self._log.close()
        return self.popen.returncode


@pytest.fixture
def launch(ros_env, tmp_path):
    """
    Start executables (console scripts or ``python -m`` modules) for the test; stop them after.

    ``launch('vla_node', '--ros-args', '-p', 'x:=1')`` starts the installed console script;
    ``launch(sys.executable, 'path/to/script.py')`` starts anything else.
    """
    started = []

    def start(executable, *args, env=None):
        path = BIN_DIR / executable
        argv = [str(path) if path.exists() else executable, *map(str, args)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = Process(argv, tmp_path / f'{Path(executable).name}-{len(started)}.log', full_env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        # Shown by pytest only when the test fails: the executable's own words.
        print(f'----- output of {" ".join(proc.argv)} (exit {proc.popen.returncode}) -----')
        print(proc.output())


@pytest.fixture(scope='module')
def conformance_root():
    """Return the OpenVLA golden vectors folder (``openvla_tiny/``); skip when it is absent."""
    from policy_helpers import require_conformance
    return require_conformance()


@pytest.fixture(scope='module')
def torch_one_thread():
    """Run torch on one CPU thread for a module of policy tests (see policy_helpers)."""
    from policy_helpers import one_thread
    with one_thread():
        yield


@pytest.fixture(scope='session')
def oft_checkpoints(tmp_path_factory):
    """
    Return {platform: folder} of the OFT conformance checkpoints, made whole.

    The kit leaves out ``model.safetensors`` (the OFT backbone is the openvla_tiny one, byte
    for byte); it is copied in, as the kit's README says.
    """
    import shutil
    from policy_helpers import conformance_dir
    root = conformance_dir()
    backbone = root / 'openvla_tiny' / 'checkpoints' / 'tiny' / 'model.safetensors'
    kit = root / 'openvla_oft_tiny' / 'checkpoints'
    if not backbone.is_file() or not kit.is_dir():
        pytest.skip(f'OFT golden vectors not found under {root}')
    folders = {}
    for platform in ('libero', 'aloha'):
        folder = tmp_path_factory.mktemp('oft') / platform
        shutil.copytree(kit / f'oft_tiny_{platform}', folder)
        shutil.copyfile(backbone, folder / 'model.safetensors')
        folders[platform] = folder
    return folders


@pytest.fixture(scope='session')
def colcon_install(tmp_path_factory):
    """Build the package with colcon once for the run; return (source dir, install prefix)."""
    from colcon_helpers import build
    return build(tmp_path_factory.mktemp('ws'))


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
    """Write one miniature random-weight checkpoint for the whole run (seed 0)."""
    from vla_ros.policy.tiny import write_tiny_checkpoint
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp('tiny') / 'ckpt', seed=0))


@pytest.fixture(autouse=True)
def _no_stray_processes():
    """Fail a test that leaves child processes behind."""
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    children = me.children(recursive=True)
    while children and time.monotonic() < deadline:
        time.sleep(0.1)
        children = [c for c in me.children(recursive=True) if c.is_running()
                    and c.status() != psutil.STATUS_ZOMBIE]
    assert not children, f'stray processes left by the test: {[c.cmdline() for c in children]}'
