"""Launch files and config/vla.yaml, checked statically; run with launch_testing where present."""

import ast
from pathlib import Path
import re

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / 'launch').glob('*.launch.py'))
CONFIG = REPO / 'config' / 'vla.yaml'


def console_scripts():
    tree = ast.parse((REPO / 'setup.py').read_text())
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(r'\s*(\w+)\s*=\s*[\w.]+:\w+\s*', node.value)
            if match:
                scripts.add(match.group(1))
    return scripts


def string_kwargs(tree, name):
    return [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
            for kw in node.keywords
            if kw.arg == name and isinstance(kw.value, ast.Constant)]


def launch_arguments(tree):
    """Return {name: default} of every DeclareLaunchArgument in a launch file."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'DeclareLaunchArgument':
            name = node.args[0].value
            defaults = [kw.value.value for kw in node.keywords if kw.arg == 'default_value']
            found[name] = defaults[0] if defaults else None
    return found


def test_there_is_a_launch_file():
    assert (REPO / 'launch' / 'vla.launch.py') in LAUNCH_FILES


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_parses_and_names_what_exists(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)
    executables = string_kwargs(tree, 'executable')
    assert executables, 'the launch file starts no executable'
    assert set(executables) <= console_scripts(), f'unknown executables in {path.name}'
    assert set(string_kwargs(tree, 'package')) == {'vla_ros'}
    for config in re.findall(r"'(\w+\.yaml)'", path.read_text()):
        assert (REPO / 'config' / config).is_file(), f'{path.name} names config/{config}'
    # A launch file only composes: no installs, no shell, no eval.
    for forbidden in ('subprocess', 'os.system', 'eval(', 'exec(', 'pip '):
        assert forbidden not in path.read_text(), f'{path.name} uses {forbidden}'


def test_vla_launch_arguments_are_the_documented_ones_with_the_yaml_defaults():
    tree = ast.parse((REPO / 'launch' / 'vla.launch.py').read_text())
    args = launch_arguments(tree)
    assert set(args) == {'model_path', 'unnorm_key', 'device', 'control_rate_hz', 'namespace',
                         'image_topic', 'policy', 'camera_topics'}
    params = yaml.safe_load(CONFIG.read_text())['/**/vla_node']['ros__parameters']
    for name in ('unnorm_key', 'device', 'control_rate_hz', 'policy', 'camera_topics'):
        assert params[name] == yaml.safe_load(args[name] or "''"), \
            f'launch default of {name} differs from the YAML'


@pytest.mark.parametrize('node', ['vla_node', 'arm_bridge', 'sim_arm'])
def test_yaml_holds_every_parameter_of_every_node_with_its_default(node):
    import importlib
    declared = importlib.import_module(f'vla_ros.nodes.{node}').PARAMS
    text = CONFIG.read_text()
    params = yaml.safe_load(text)[f'/**/{node}']['ros__parameters']
    assert {p.name: p.default for p in declared} == params
    section = text[text.index(f'/**/{node}:'):]
    for p in declared:  # every parameter has a comment right above it
        assert re.search(r'#[^\n]*\n\s+' + p.name + ':', section), f'{p.name} has no comment'


def test_setup_installs_launch_and_config_files():
    setup = (REPO / 'setup.py').read_text()
    assert "glob('launch/*.launch.py')" in setup and "glob('config/*.yaml')" in setup


def test_launch_runs_with_launch_testing():
    """On a ROS install: the launch description loads and names the vla_node action."""
    pytest.importorskip('launch', reason='the launch package exists only on a ROS install')
    pytest.importorskip('launch_ros', reason='launch_ros exists only on a ROS install')
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    source = PythonLaunchDescriptionSource(str(REPO / 'launch' / 'vla.launch.py'))
    description = source.get_launch_description(None)
    assert any(type(e).__name__ == 'Node' for e in description.entities)
