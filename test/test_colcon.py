"""
``colcon build`` of this package in a fresh workspace, and the install layout a ROS install needs.

The package's files (what git tracks, plus new files git does not ignore) are copied to
``WS/src/vla_ros`` and built with the colcon found on PATH (Debian's ``colcon``,
``python3-colcon-ros`` and ``python3-colcon-python-setup-py``; ``.ci/run`` installs them where it
can). Skipped, with the reason, where there is no colcon. The expectations come from the sources:
the console scripts from ``setup.py``'s entry points, the Python packages and their data from the
files under ``vla_ros/``, the launch and config files from ``launch/`` and ``config/``.
"""

import ast
import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'vla_ros'
COLCON = shutil.which('colcon')
BUILD_TIMEOUT_S = 240
# What a copy of the repository never needs (used only where git cannot list the files).
IGNORED = ('.git', '.venv', 'build', 'install', 'log', 'out', '__pycache__', '*.egg-info',
           '.pytest_cache', '.hypothesis')

pytestmark = pytest.mark.skipif(
    COLCON is None,
    reason='colcon is not installed (Debian: apt-get install colcon python3-colcon-ros '
           'python3-colcon-python-setup-py; .ci/run does this when it runs as root)')


def source_files():
    """Return the package's files relative to the repository root: git's list, else a walk."""
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


def colcon_env(workspace):
    """Return the environment for colcon: this test's venv and any colcon settings left out."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME', 'PYTHONSTARTUP')
           and not k.startswith('COLCON_')}
    venv_bin = str(Path(sys.prefix) / 'bin')
    path = [p for p in env.get('PATH', '').split(os.pathsep) if p and p != venv_bin]
    env['PATH'] = os.pathsep.join([str(Path(COLCON).parent)] + path)
    env['COLCON_HOME'] = str(workspace / '.colcon')  # no user defaults or mixins
    return env


def console_scripts(setup_py):
    """Return {name: 'module:function'} from the console_scripts entry points of ``setup_py``."""
    for node in ast.walk(ast.parse(setup_py.read_text(), str(setup_py))):
        if isinstance(node, ast.keyword) and node.arg == 'entry_points':
            scripts = ast.literal_eval(node.value)['console_scripts']
            pairs = (script.split('=', 1) for script in scripts)
            return {name.strip(): target.strip() for name, target in pairs}
    raise AssertionError(f'{setup_py} has no entry_points')


@pytest.fixture(scope='module')
def build(tmp_path_factory):
    """Build the package with colcon in a new workspace; return (source dir, install prefix)."""
    workspace = tmp_path_factory.mktemp('ws')
    source = workspace / 'src' / PACKAGE
    copy_package(source)
    try:
        result = subprocess.run([COLCON, 'build', '--event-handlers', 'console_direct+'],
                                cwd=workspace, env=colcon_env(workspace), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f'colcon build took over {BUILD_TIMEOUT_S} s:\n{exc.output}')
    assert result.returncode == 0, (
        f'colcon build failed (exit {result.returncode}) in {workspace}:\n{result.stdout}')
    return source, workspace / 'install' / PACKAGE


def site_packages(prefix):
    """Return the one site-packages (or dist-packages) folder under ``prefix``/lib."""
    found = [p for p in (prefix / 'lib').glob('python3*/*-packages') if (p / PACKAGE).is_dir()]
    assert len(found) == 1, f'expected one site-packages holding {PACKAGE}, found {found}'
    return found[0]


def test_console_scripts_in_lib_package(build):
    source, prefix = build
    scripts = console_scripts(source / 'setup.py')
    assert {'vla_node', 'arm_bridge', 'sim_arm', 'camera_stream'} <= set(scripts)
    lib = prefix / 'lib' / PACKAGE
    for name in scripts:
        script = lib / name
        assert script.is_file(), f'{name} not installed in {lib}: {sorted(os.listdir(lib))}'
        assert os.access(script, os.X_OK), f'{script} is not executable'


def test_entry_points_name_installed_functions(build):
    """Each console script's module is installed and defines its function at module level."""
    source, prefix = build
    packages = site_packages(prefix)
    for name, target in console_scripts(source / 'setup.py').items():
        module, _, function = target.partition(':')
        path = packages.joinpath(*module.split('.')).with_suffix('.py')
        assert path.is_file(), f'{name} = {target}: {path} not installed'
        tree = ast.parse(path.read_text(), str(path))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert function in defined, f'{name} = {target}: {path.name} defines no {function}()'


def test_launch_config_and_package_xml_in_share(build):
    source, prefix = build
    share = prefix / 'share' / PACKAGE
    assert (share / 'package.xml').is_file()
    expected = ({f'launch/{p.name}' for p in (source / 'launch').glob('*.launch.py')}
                | {f'config/{p.name}' for p in (source / 'config').glob('*.yaml')})
    assert {'launch/vla.launch.py', 'launch/demo.launch.py', 'config/vla.yaml'} <= expected
    missing = sorted(name for name in expected if not (share / name).is_file())
    assert not missing, f'not installed in {share}: {missing}'


def test_ament_index_marker(build):
    _, prefix = build
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE
    assert marker.is_file(), f'{marker} missing: `ros2 pkg` and launch cannot find {PACKAGE}'


def test_every_package_module_and_data_file_installed(build):
    """The installed vla_ros mirrors the source: each subpackage, module and data file."""
    source, prefix = build
    installed = site_packages(prefix) / PACKAGE
    files = sorted(p.relative_to(source / PACKAGE) for p in (source / PACKAGE).rglob('*')
                   if p.is_file() and '__pycache__' not in p.parts and p.suffix != '.pyc')
    subpackages = {f.parent for f in files if f.name == '__init__.py'} - {Path('.')}
    roles = ('bench', 'control', 'evaluation', 'nodes', 'policy', 'sim', 'training')
    assert {Path(role) for role in roles} <= subpackages, sorted(map(str, subpackages))
    assert Path('sim/scene.xml') in files
    assert Path('policy/assets/tiny/config.json') in files
    assert Path('training/assets/reach/trainable.safetensors') in files  # the demo's policy
    missing = [str(f) for f in files if not (installed / f).is_file()]
    assert not missing, f'not installed in {installed}: {missing}'
