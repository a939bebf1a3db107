"""
The layout holds by test: folders by role, ROS-free cores, no import cycle, files of a size.

Read with ``ast`` (nothing is imported): every ``import`` and ``from ... import`` in the package,
at module level or inside functions, is an edge from its module to the module it names.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'vla_ros'
# Folders whose code must run without ROS: the model, the control rules, the simulator core.
ROS_FREE = ('vla_ros.policy', 'vla_ros.control', 'vla_ros.sim')
ROS_PREFIXES = ('rclpy', 'rcl_interfaces', 'rosidl', 'rosgraph_msgs', 'builtin_interfaces',
                'launch', 'ament_index_python', 'cv_bridge')
ROS_SUFFIXES = ('_msgs', '_srvs')
# Where the miniature-checkpoint writer (a tool, not part of any runtime path) may be used:
# the demo, the benchmarks, and the demo policy (rebuilt on the miniature base it was trained on).
TINY_USERS = ('vla_ros.closed_loop.demo', 'vla_ros.bench', 'vla_ros.training.demo_policy')
TEST_MODULES = ('conftest', 'policies', 'policy_helpers', 'bag_helpers')
MAX_LINES = 500


def module_name(path):
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob('*.py')}


def imports(name):
    """Return the modules (top-level names for outside packages) that module ``name`` imports."""
    path = MODULES[name]
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                full = f'{base}.{alias.name}'
                found.add(full if full in MODULES else base)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def within(name, prefix):
    return name == prefix or name.startswith(prefix + '.')


def is_ros(name):
    top = name.split('.')[0]
    return top.startswith(ROS_PREFIXES) or top.endswith(ROS_SUFFIXES)


@pytest.mark.parametrize('folder', ROS_FREE)
def test_ros_free_folders_import_no_ros_and_no_node_code(folder):
    bad = {name: sorted(i for i in deps if is_ros(i) or within(i, 'vla_ros.nodes')
                        or within(i, 'vla_ros.evaluation') or within(i, 'vla_ros.bench'))
           for name, deps in GRAPH.items() if within(name, folder)}
    assert not {k: v for k, v in bad.items() if v}, 'ROS-free code imports ROS or node code'


def test_evaluation_imports_no_ros_and_no_node_code():
    # vla_eval (``--write-bag`` included) runs with the eval extra alone: rosbags' own types.
    bad = {name: sorted(i for i in deps if is_ros(i) or within(i, 'vla_ros.nodes')
                        or within(i, 'vla_ros.bench'))
           for name, deps in GRAPH.items() if within(name, 'vla_ros.evaluation')}
    assert not {k: v for k, v in bad.items() if v}, 'vla_ros.evaluation imports ROS or node code'


def test_training_imports_no_ros_and_no_node_code():
    # Fine-tuning reads bags through vla_ros.evaluation (rosbags), never through ROS.
    bad = {name: sorted(i for i in deps if is_ros(i) or within(i, 'vla_ros.nodes')
                        or within(i, 'vla_ros.bench'))
           for name, deps in GRAPH.items() if within(name, 'vla_ros.training')}
    assert not {k: v for k, v in bad.items() if v}, 'vla_ros.training imports ROS or node code'


def test_no_import_cycle():
    internal = {name: {d for d in deps if d in MODULES and d != name}
                for name, deps in GRAPH.items()}
    state, path = {}, []

    def visit(name):
        state[name] = 'open'
        path.append(name)
        for dep in sorted(internal[name]):
            if state.get(dep) == 'open':
                cycle = path[path.index(dep):] + [dep]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[name] = 'done'

    for name in sorted(internal):
        if name not in state:
            visit(name)


def test_product_code_imports_no_test_fixture():
    for name, deps in GRAPH.items():
        assert not deps & set(TEST_MODULES), f'{name} imports test code'
        if 'vla_ros.policy.tiny' in deps:
            assert name.startswith(TINY_USERS), \
                f'{name} imports the miniature-checkpoint writer vla_ros.policy.tiny'


def test_the_package_root_holds_only_folders():
    assert sorted(p.name for p in PACKAGE.glob('*.py')) == ['__init__.py']
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / '__init__.py').exists())
    assert folders == ['bench', 'closed_loop', 'control', 'evaluation', 'nodes', 'policy',
                       'recordings', 'sim',
                       'training']


def test_no_file_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob('*.py')
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f'split these by concept: {long}'


def test_console_scripts_point_at_main_functions():
    tree = ast.parse((REPO / 'setup.py').read_text())
    scripts = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and isinstance(node.value, str) and ' = vla_ros.' in node.value]
    names = sorted(s.split(' = ')[0] for s in scripts)
    assert names == ['arm_bridge', 'camera_stream', 'sim_arm', 'vla_eval', 'vla_finetune',
                     'vla_node', 'vla_record_demos', 'vla_sim_eval', 'vla_tiny_model']
    for script in scripts:
        module, function = script.split(' = ')[1].split(':')
        defined = {n.name for n in ast.parse(MODULES[module].read_text()).body
                   if isinstance(n, ast.FunctionDef)}
        assert function in defined, script
