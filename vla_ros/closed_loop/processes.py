"""
The process kit of the programs that start nodes (and of the tests' DDS harness).

``node_argv('vla_node', 'x:=1')`` is what ``ros2 run`` with ``config/vla.yaml`` runs (with
``robot='aloha'``, ``config/aloha.yaml`` over it); ``start`` puts a command in its own process
group with its output in a log file, ``stop`` ends it as Ctrl-C would and kills the group when
it does not go; ``Participant`` is this process's own ROS
node, in a private rclpy context, spun on a thread and closed cleanly; ``DemoObserver`` is the
one of a demo program (its diagnostics, sim/task and instruction).
"""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time


class ProcessError(RuntimeError):
    """A node that did not start, answer or stay up; the text says which."""


def config_file(name='vla.yaml'):
    """Return config/NAME: installed under share/vla_ros, or beside the source tree."""
    for base in (Path(sys.prefix) / 'share' / 'vla_ros', Path(__file__).resolve().parents[2]):
        if (base / 'config' / name).is_file():
            return base / 'config' / name
    raise FileNotFoundError(f'config/{name} not found; install the package (pip install -e .)')


def executable(name):
    """Return the path of an installed console script (beside this interpreter, else on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def node_argv(name, *params, remaps=(), robot='gripper'):
    """
    Return the command of node ``name`` with config/vla.yaml, then each ``NAME:=VALUE``.

    ``remaps`` are ``FROM:=TO`` topic remappings (``-r``), e.g. ``vla/action:=vla/policy_action``.
    ``robot='aloha'`` adds config/aloha.yaml after vla.yaml (a later params file overrides).
    """
    files = [config_file()] + ([config_file('aloha.yaml')] if robot == 'aloha' else [])
    return [executable(name), '--ros-args', *[a for f in files for a in ('--params-file', str(f))],
            *[a for p in params for a in ('-p', p)], *[a for r in remaps for a in ('-r', r)]]


def list_param(name, values):
    """Return ``NAME:=[...]``, a string array parameter with every item quoted (``joint:x``)."""
    return f'{name}:=[{", ".join(repr(str(v)) for v in values)}]'


def start(argv, log_path, env=None, cwd=None):
    """Start ``argv`` in its own process group, output to ``log_path``; return the Popen."""
    with open(log_path, 'wb') as log:
        return subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)


def stop(proc, timeout=10.0):
    """Stop like Ctrl-C, then kill what is left of the group; return the exit status."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:  # the group's other processes too (a node's children), also when the leader is gone
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout)
    return proc.returncode


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_like_ctrl_c():
    """
    Make SIGTERM and SIGINT raise KeyboardInterrupt in this (main) thread, as Ctrl-C does.

    So ``kill``, a stopped make target or a timeout stops the program's nodes and writes what it
    has. A program started in the background by a shell inherits SIGINT ignored (and Python
    then keeps it ignored); SIGTERM would kill it outright, leaving its nodes running.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def wait_until(predicate, timeout, what, procs=None, interval=0.02):
    """Poll ``predicate`` until truthy and return it; ProcessError when a proc dies or on time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        dead = [name for name, p in (procs or {}).items() if p.poll() is not None]
        if dead:
            raise ProcessError(f'{", ".join(dead)} exited while waiting for {what}')
        if time.monotonic() > deadline:
            raise ProcessError(f'timed out after {timeout:g} s waiting for {what}')
        time.sleep(interval)


class Participant:
    """
    This process's ROS node: a private rclpy context, the node, an executor spun on a thread.

    Not the global context, so tests and programs never meet another participant's state; not
    the program's command line (``args=[]``): rcl would read ``-p NAME:=VALUE`` (vla_node's
    parameter in vla_sim_eval's) as a deprecated remap rule of this node; rclpy's signal
    handlers are left out, so Ctrl-C is a KeyboardInterrupt of the main thread
    and the program stops its nodes itself. Not the MultiThreadedExecutor: its dispatch thread
    holds the GIL most of the time, which delays the main thread that stamps and publishes.
    """

    def __init__(self, name):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
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

    def now_ns(self):
        """Return the node clock's time in nanoseconds."""
        return self.node.get_clock().now().nanoseconds

    def call_service(self, srv_type, name, request, timeout=10.0):
        """Call a service from the main thread (the executor spins elsewhere); return the reply."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise ProcessError(f'service {name} did not appear within {timeout} s')
            future = client.call_async(request)
            wait_until(future.done, timeout, f'an answer from {name}', interval=0.01)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self):
        """Stop spinning, destroy the node, shut the context down."""
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        # The spin thread out of its wait before the node goes: destroying the node under it
        # raised in that thread ("'NoneType' object has no attribute 'handle'") at exit.
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class DemoObserver(Participant):
    """
    A demo program's participant, with what every demo watches and says.

    The newest ``/diagnostics`` values per status (``status``), the newest ``sim/task``
    (``task``) and the ``vla/instruction`` publisher; each demo adds the topics of its robot that
    a user would watch with ros2 topic echo.
    """

    def __init__(self, name='vla_demo'):
        super().__init__(name)
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.status, self.task = {}, {}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      reliable)
        self.node.create_subscription(String, 'sim/task', self._on_task, reliable)
        self.instruction = self.node.create_publisher(String, 'vla/instruction', reliable)

    def now(self):
        """Return the node clock's time in seconds."""
        return self.now_ns() * 1e-9

    def _on_diagnostics(self, msg):
        from vla_ros.nodes import diagnostics

        for status in msg.status:
            self.status[status.name] = diagnostics.values_of(status)

    def _on_task(self, msg):
        try:
            self.task = json.loads(msg.data)
        except ValueError:
            pass
