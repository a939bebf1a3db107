"""
The documentation and config/vla.yaml against the code: the code's parameter tables are the source.

Each node declares its parameters once (a tuple of ``NodeParam``); its page in docs/ has a table
of them and config/vla.yaml sets them. Both are checked against the declaration, by name, order
and default, with nothing imported but the tables (no node starts, no DDS). The links between the
README and docs/ are checked to lead somewhere.
"""

import importlib
from pathlib import Path
import re

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'config' / 'vla.yaml'
# Where each node's PARAMS is declared (the config modules import no node code).
TABLES = {'vla_node': 'vla_ros.nodes.vla_node_config', 'arm_bridge': 'vla_ros.nodes.arm_bridge',
          'sim_arm': 'vla_ros.nodes.sim_arm_config'}
ROW = re.compile(r'^\| `(\w+)` \| `([^`]*)` \|')
LINK = re.compile(r'\]\(([^)\s]+)\)')


def declared(node, module=None):
    """Return [(name, typed default)] of the node's parameters, as the code declares them."""
    return [(p.name, typed(list(p.default) if isinstance(p.default, tuple) else p.default))
            for p in importlib.import_module(module or TABLES[node]).PARAMS]


def typed(value):
    """Return ``value`` with its type kept in comparisons (5 is not 5.0, true is not 1)."""
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def documented(node, heading='## Parameters'):
    """Return [(name, typed default)] of the rows of the ``heading`` table of docs/NODE.md."""
    text = (REPO / 'docs' / f'{node}.md').read_text()
    section = text.split(f'\n{heading}\n', 1)[1].split('\n#', 1)[0]
    return [(m.group(1), typed(yaml.safe_load(m.group(2) or "''")))
            for m in map(ROW.match, section.splitlines()) if m]


@pytest.mark.parametrize('node', TABLES)
def test_docs_table_lists_every_declared_parameter_with_the_code_default(node):
    assert documented(node) == declared(node)


def test_docs_table_of_the_joint_trajectory_mode_lists_its_parameters():
    assert documented('arm_bridge', '### Joint trajectory parameters') == \
        declared('arm_bridge', 'vla_ros.nodes.joint_bridge')


@pytest.mark.parametrize('node', TABLES)
def test_yaml_sets_every_declared_parameter_to_the_code_default(node):
    params = yaml.safe_load(CONFIG.read_text())[f'/**/{node}']['ros__parameters']
    assert [(name, typed(value)) for name, value in params.items()] == declared(node)


@pytest.mark.parametrize('node', TABLES)
def test_aloha_yaml_sets_only_declared_parameters_with_their_types(node):
    """config/aloha.yaml overrides vla.yaml: a misspelt name is ignored, a 25 is not a double."""
    params = yaml.safe_load((REPO / 'config' / 'aloha.yaml').read_text())[f'/**/{node}'][
        'ros__parameters']
    modules = [TABLES[node]] + (['vla_ros.nodes.joint_bridge'] if node == 'arm_bridge' else [])
    kinds = {p.name: (p.kind, p.item_kind if p.kind is list else None)
             for module in modules for p in importlib.import_module(module).PARAMS}
    kinds.update({f'{c}.joints': (list, str) for c in params.get('controllers', ())})
    for name, value in params.items():
        assert name in kinds, f'config/aloha.yaml: {node} declares no parameter {name}'
        kind, item = kinds[name]
        assert type(value) is kind, f'{name}: {value!r} is not {kind.__name__}'
        assert all(type(v) is item for v in value or ()) if item else True, \
            f'{name}: {value!r} has items that are not {item.__name__}'


def anchors(path):
    """Return the anchors GitHub makes of a Markdown file's headings."""
    found, fence = set(), False
    for line in path.read_text().splitlines():
        fence ^= line.startswith('```')
        if not fence and line.startswith('#'):
            title = line.lstrip('#').strip().lower()
            found.add(re.sub(r'[^\w\- ]', '', title).replace(' ', '-'))
    return found


@pytest.mark.parametrize('page', [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))],
                         ids=lambda p: p.name)
def test_links_to_files_and_headings_lead_somewhere(page):
    for target in LINK.findall(page.read_text()):
        if '://' in target:
            continue
        file_part, _, anchor = target.partition('#')
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.is_relative_to(REPO):
            continue  # ../shared is the contract's, not this repository's
        assert path.exists(), f'{page.name} links to {target}: no such file'
        if anchor and path.suffix == '.md':
            assert anchor in anchors(path), f'{page.name} links to {target}: no such heading'
