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
# Folders whose code must run without ROS: the model, the control rules, the simulator core, and
# the offline tools (vla_eval and vla_finetune read and write bags with rosbags' own types).
ROS_FREE = ('vla_ros.policy', 'vla_ros.control', 'vla_ros.sim', 'vla_ros.recordings',
            'vla_ros.evaluation', 'vla_ros.training', 'vla_ros.remote')
# The floors of the package: a module imports from its own floor or the ones below.
# remote (vla_serve, the wire) serves a policy; the nodes' remote client reads its wire.
FLOORS = {'control': 0, 'sim': 0, 'policy': 0, 'recordings': 1, 'remote': 1, 'evaluation': 2,
          'training': 2, 'nodes': 3, 'closed_loop': 4, 'bench': 5}
SIBLINGS = {'evaluation': ('training',), 'training': ('evaluation',)}
PROCESS_MODULES = ('subprocess', 'multiprocessing', 'pty')
OS_STARTERS = ('system', 'fork', 'spawn', 'exec', 'posix_spawn', 'popen')
ROS_PREFIXES = ('rclpy', 'rcl_interfaces', 'rosidl', 'rosgraph_msgs', 'builtin_interfaces',
                'launch', 'ament_index_python', 'cv_bridge')
ROS_SUFFIXES = ('_msgs', '_srvs')
# Where the miniature-checkpoint writer (a tool, not part of any runtime path) may be used:
# the demo, the benchmarks, and the demo policy (rebuilt on the miniature base it was trained on).
TINY_USERS = ('vla_ros.closed_loop.demo', 'vla_ros.bench', 'vla_ros.training.demo_policy')
TEST_DIR = REPO / 'test'
TEST_MODULES = tuple(p.stem for p in TEST_DIR.glob('*.py') if not p.name.startswith('test_'))
# The tests of the package as a whole stay at test/'s root; the rest sit in the folder of the
# package folder they test (test/policy/ for vla_ros/policy/, ...).
PACKAGE_TESTS = ('test_ci_skips', 'test_colcon', 'test_docs', 'test_flake8', 'test_launch',
                 'test_markers', 'test_pep257', 'test_structure')
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
def test_ros_free_folders_import_no_ros(folder):
    bad = {name: sorted(i for i in deps if is_ros(i))
           for name, deps in GRAPH.items() if within(name, folder)}
    assert not {k: v for k, v in bad.items() if v}, f'{folder} imports ROS'


def floor(name):
    """Return the floor of a package module, None for outside modules and the package root."""
    parts = name.split('.')
    return FLOORS[parts[1]] if parts[0] == 'vla_ros' and len(parts) > 1 else None


def test_no_import_runs_up_the_floors():
    # A room uses the rooms below it, never one above: the recordings know nothing of their
    # readers, the nodes nothing of the programs that start them.
    assert set(FLOORS) == {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').exists()}
    up = {name: sorted(d for d in deps if floor(d) is not None and floor(d) > floor(name))
          for name, deps in GRAPH.items() if floor(name) is not None}
    assert not {k: v for k, v in up.items() if v}, 'imports that run up the floors'


def test_sibling_rooms_import_each_other_only_where_allowed():
    # Evaluation and training both read recordings; neither reads the other.
    for room, others in SIBLINGS.items():
        bad = {name: sorted(d for d in deps if any(within(d, f'vla_ros.{o}') for o in others))
               for name, deps in GRAPH.items() if within(name, f'vla_ros.{room}')}
        assert not {k: v for k, v in bad.items() if v}, f'{room} imports {others}'


def starts_processes(name):
    """Return the ways module ``name`` starts a process: an import of subprocess or friends."""
    tree = ast.parse(MODULES[name].read_text())
    calls = {f'os.{node.func.attr}' for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
             and node.func.value.id == 'os' and node.func.attr.startswith(OS_STARTERS)}
    return sorted(calls | {d for d in GRAPH[name] if d.split('.')[0] in PROCESS_MODULES})


def test_only_the_closed_loop_room_starts_processes():
    # The bench's tools (a child benchmark process, pytest on the GPU machine) are one
    # exception; they start nodes through the closed-loop room's process kit. vla_finetune's
    # pool of bag readers (processes of this interpreter running the package's read_episode, no
    # program, through multiprocessing's spawn) is the other.
    readers = {'vla_ros.training.finetune': ['multiprocessing']}
    bad = {name: ways for name in MODULES if not within(name, 'vla_ros.closed_loop')
           and not within(name, 'vla_ros.bench') and (ways := starts_processes(name))
           and ways != readers.get(name)}
    assert not bad, f'only vla_ros.closed_loop starts processes: {bad}'


def test_every_folder_map_names_its_modules():
    missing = {}
    for init in PACKAGE.rglob('__init__.py'):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ''
        names = sorted(p.stem for p in init.parent.glob('*.py') if p.name != '__init__.py')
        names += sorted(p.name for p in init.parent.iterdir() if (p / '__init__.py').exists())
        if lost := [n for n in names if f'``{n}``' not in doc]:
            missing[str(init.parent.relative_to(REPO))] = lost
    assert not missing, f'name each module in its folder map (__init__ docstring): {missing}'


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
    assert folders == sorted(FLOORS)


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
                     'vla_node', 'vla_record_demos', 'vla_serve', 'vla_sim_eval', 'vla_tiny_model']
    for script in scripts:
        module, function = script.split(' = ')[1].split(':')
        defined = {n.name for n in ast.parse(MODULES[module].read_text()).body
                   if isinstance(n, ast.FunctionDef)}
        assert function in defined, script


def test_the_tests_mirror_the_package():
    folders = {p.name for p in TEST_DIR.iterdir() if p.is_dir() and any(p.glob('test_*.py'))}
    assert folders <= set(FLOORS), f'test folders with no package folder: {folders - set(FLOORS)}'
    assert sorted(p.stem for p in TEST_DIR.glob('test_*.py')) == sorted(PACKAGE_TESTS), \
        'a test of one package folder goes into test/<folder>/'
    names = [p.name for p in TEST_DIR.rglob('test_*.py')]
    assert len(names) == len(set(names)), 'test files need unique names (rootdir imports)'
