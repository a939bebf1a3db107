"""
``colcon build`` of this package in a fresh workspace, and the install layout a ROS install needs.

The build is conftest's ``colcon_install`` (colcon_helpers.py: the package's files built with the
colcon on PATH, once per run; test_launch.py runs the launch files from the same build). The
expectations come from the sources: the console scripts from ``setup.py``'s entry points, the
Python packages and their data from the files under ``vla_ros/``, the launch and config files from
``launch/`` and ``config/``.
"""

import ast
import os
from pathlib import Path

from colcon_helpers import PACKAGE, site_packages
import pytest

pytestmark = pytest.mark.process  # colcon_install runs colcon build


def console_scripts(setup_py):
    """Return {name: 'module:function'} from the console_scripts entry points of ``setup_py``."""
    for node in ast.walk(ast.parse(setup_py.read_text(), str(setup_py))):
        if isinstance(node, ast.keyword) and node.arg == 'entry_points':
            scripts = ast.literal_eval(node.value)['console_scripts']
            pairs = (script.split('=', 1) for script in scripts)
            return {name.strip(): target.strip() for name, target in pairs}
    raise AssertionError(f'{setup_py} has no entry_points')


def test_console_scripts_in_lib_package(colcon_install):
    source, prefix = colcon_install
    scripts = console_scripts(source / 'setup.py')
    assert {'vla_node', 'arm_bridge', 'sim_arm', 'camera_stream'} <= set(scripts)
    lib = prefix / 'lib' / PACKAGE
    for name in scripts:
        script = lib / name
        assert script.is_file(), f'{name} not installed in {lib}: {sorted(os.listdir(lib))}'
        assert os.access(script, os.X_OK), f'{script} is not executable'


def test_entry_points_name_installed_functions(colcon_install):
    """Each console script's module is installed and defines its function at module level."""
    source, prefix = colcon_install
    packages = site_packages(prefix)
    for name, target in console_scripts(source / 'setup.py').items():
        module, _, function = target.partition(':')
        path = packages.joinpath(*module.split('.')).with_suffix('.py')
        assert path.is_file(), f'{name} = {target}: {path} not installed'
        tree = ast.parse(path.read_text(), str(path))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert function in defined, f'{name} = {target}: {path.name} defines no {function}()'


def test_launch_config_and_package_xml_in_share(colcon_install):
    source, prefix = colcon_install
    share = prefix / 'share' / PACKAGE
    assert (share / 'package.xml').is_file()
    expected = ({f'launch/{p.name}' for p in (source / 'launch').glob('*.launch.py')}
                | {f'config/{p.name}' for p in (source / 'config').glob('*.yaml')})
    assert {'launch/vla.launch.py', 'launch/demo.launch.py', 'config/vla.yaml'} <= expected
    missing = sorted(name for name in expected if not (share / name).is_file())
    assert not missing, f'not installed in {share}: {missing}'


def test_ament_index_marker(colcon_install):
    _, prefix = colcon_install
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE
    assert marker.is_file(), f'{marker} missing: `ros2 pkg` and launch cannot find {PACKAGE}'


def test_every_package_module_and_data_file_installed(colcon_install):
    """The installed vla_ros mirrors the source: each subpackage, module and data file."""
    source, prefix = colcon_install
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
