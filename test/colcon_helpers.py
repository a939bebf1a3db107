"""
``colcon build`` of this package in a fresh workspace, once per run (conftest's colcon_install).

The package's files (what git tracks, plus new files git does not ignore) are copied to
``WS/src/vla_ros`` and built with the colcon found on PATH (Debian's ``colcon``,
``python3-colcon-ros`` and ``python3-colcon-python-setup-py``; ``.ci/run`` installs them).
test_colcon.py checks the install layout; test_launch.py runs the launch files from it.
"""

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'vla_ros'
BUILD_TIMEOUT_S = 240
COLCON_DEBS = 'colcon python3-colcon-ros python3-colcon-python-setup-py'
# What a copy of the repository never needs (used only where git cannot list the files).
IGNORED = ('.git', '.venv', '.venv-*', 'build', 'install', 'log', 'out', '__pycache__',
           '*.egg-info', '.pytest_cache', '.hypothesis')


def source_files():
    """Return the package's files relative to the repository root: git's list, else None."""
    try:
        out = subprocess.run(
            ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
            cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # --cached still lists files deleted from the work tree but not yet from the index.
    return [name for name in out.decode().split('\0') if name and (REPO / name).is_file()]


def copy_package(dest):
    """Copy the package's sources to ``dest`` (git's file list, or the tree less build output)."""
    names = source_files()
    if names is None:
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*IGNORED))
        return
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def colcon_env(colcon, workspace):
    """Return the environment for colcon: this test's venv and any colcon settings left out."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP')
           and not k.startswith('COLCON_')}
    venv_bin = str(Path(sys.prefix) / 'bin')
    path = [p for p in env.get('PATH', '').split(os.pathsep) if p and p != venv_bin]
    env['PATH'] = os.pathsep.join([str(Path(colcon).parent)] + path)
    env['COLCON_HOME'] = str(workspace / '.colcon')  # no user defaults or mixins
    return env


def build(workspace):
    """Build the package with colcon in ``workspace``; return (source dir, install prefix)."""
    colcon = shutil.which('colcon')
    if colcon is None:
        pytest.skip(f'colcon is not installed (Debian: apt-get install {COLCON_DEBS}; '
                    '.ci/run does this)')
    source = workspace / 'src' / PACKAGE
    copy_package(source)
    try:
        result = subprocess.run([colcon, 'build', '--event-handlers', 'console_direct+'],
                                cwd=workspace, env=colcon_env(colcon, workspace),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f'colcon build took over {BUILD_TIMEOUT_S} s:\n{exc.output}')
    if result.returncode != 0:
        pytest.fail(f'colcon build failed (exit {result.returncode}) in {workspace}:\n'
                    f'{result.stdout}')
    return source, workspace / 'install' / PACKAGE


def site_packages(prefix):
    """Return the one site-packages (or dist-packages) folder under ``prefix``/lib."""
    found = [p for p in (prefix / 'lib').glob('python3*/*-packages') if (p / PACKAGE).is_dir()]
    assert len(found) == 1, f'expected one site-packages holding {PACKAGE}, found {found}'
    return found[0]
