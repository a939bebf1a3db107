"""
The tests' shared fixtures; the DDS harness (``ros_env``, ``ros``, ``launch``) is dds_harness.py.

Every test that touches ROS gets its own ``ROS_DOMAIN_ID`` with discovery kept on localhost, its
own rclpy context (never the global one), and a clean process table when it ends. Those tests
are marked ``dds`` (marker_rules.py checks it), so ``-m 'not dds'`` runs the rest
(``make test-python``).

Under ``CI=true`` a test that skips because something it needs is missing fails instead, naming
it (``pytest_runtest_makereport`` below): CI cannot go green by skipping.
"""

import os
from pathlib import Path
import re
import sys
import time

import psutil
import pytest

from vla_ros.closed_loop import processes

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('VLA_SHARED_DIR', REPO.parent / 'shared'))
# Console scripts live beside the interpreter running the tests (the .venv, or a ROS install).
BIN_DIR = Path(sys.executable).parent
# The DDS harness's fixtures (dds_harness.py), and the rule that a test which starts a process
# or talks DDS says so with a mark (marker_rules.py): plugins, seen by every test folder.
pytest_plugins = ('dds_harness', 'marker_rules')
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
    """Poll ``predicate`` until it is truthy (the kit's wait); fail the test after ``timeout``."""
    try:
        return processes.wait_until(predicate, timeout, message, interval=interval)
    except processes.ProcessError as exc:
        failure = str(exc)
    pytest.fail(failure)  # outside the except: the kit's frames are no part of the story


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


def _stray(child):
    """Whether ``child`` outlives its test: multiprocessing's resource tracker does not count."""
    try:
        return (child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                and not any('multiprocessing.resource_tracker' in a for a in child.cmdline()))
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def _no_stray_processes():
    """
    Fail a test that leaves child processes behind.

    The resource tracker that a first spawned process (``vla_finetune --read-workers``) starts
    is one per interpreter and ends with it: it is no test's stray.
    """
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5.0
    children = [c for c in me.children(recursive=True) if _stray(c)]
    while children and time.monotonic() < deadline:
        time.sleep(0.1)
        children = [c for c in me.children(recursive=True) if _stray(c)]
    assert not children, f'stray processes left by the test: {[c.cmdline() for c in children]}'
