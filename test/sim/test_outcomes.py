"""Why a reach episode failed: hand-made episodes of every category, and the rules' order."""

import numpy as np
import pytest

from vla_ros.sim import outcomes
from vla_ros.sim.tasks import object_layout

# Three objects 20 cm apart; the named one is the red cube.
OBJECTS = {'red cube': (0.40, 0.10), 'green cylinder': (0.40, -0.10), 'blue block': (0.55, 0.0)}
WORKSPACE = (np.array([0.10, -0.35, 0.016]), np.array([0.70, 0.35, 0.40]))
HOME = (0.30, 0.0, 0.20)


def path_to(end, seconds=5.0, hold=2.0, rate=50):
    """Return a straight path from home to ``end``, ``hold`` s at ``end``: (positions, times)."""
    moving = np.linspace(HOME, end, int((seconds - hold) * rate))
    held = np.repeat([end], int(hold * rate), axis=0)
    path = np.concatenate([moving, held])
    return path, np.arange(len(path)) / rate


def classify(end=None, path=None, times=None, **kw):
    if path is None:
        path, times = path_to(end)
    args = {'success': False, 'target': 'red cube', 'objects': OBJECTS, 'box_clamps': 0,
            'closest': None, 'workspace': WORKSPACE, **kw}
    return outcomes.classify(path=path, times=times, **args)


def test_success_whatever_else_holds():
    assert classify(end=(0.70, 0.0, 0.2), success=True, box_clamps=50) == \
        outcomes.Outcome('success')


def test_never_moved():
    path, times = path_to((0.31, 0.005, 0.2))  # 1.1 cm
    got = classify(path=path, times=times, box_clamps=50)  # first rule: clamps don't matter
    assert got.category == 'never_moved' and got.detail == 'path 1.1 cm'
    assert classify(path=np.array([HOME])).category == 'never_moved'


def test_pinned_at_edge_by_box_clamps_or_by_the_end_against_the_workspace():
    # Near the named object, but arm_bridge cut 5 commands at its box: pinned.
    got = classify(end=(0.40, 0.11, 0.07), box_clamps=5)
    assert got.category == 'pinned_at_edge' and got.detail.startswith('5 box clamps')
    assert classify(end=(0.40, 0.11, 0.07), box_clamps=4).category == 'stopped_short'
    # No clamp, but held at sim_arm's y edge (0.35), or its top: pinned, the face named.
    got = classify(end=(0.45, 0.345, 0.2))
    assert got.category == 'pinned_at_edge' and got.detail.endswith(
        '0.5 cm from the y max edge')
    assert classify(end=(0.45, 0.0, 0.395)).category == 'pinned_at_edge'
    # Down on the table (the floor face) is not an edge: judged by the later rules.
    assert classify(end=(0.40, 0.10, 0.017)).category == 'stopped_short'
    # Without a workspace only the clamps count.
    assert classify(end=(0.45, 0.345, 0.2), workspace=None).category == 'wandered'


def test_went_for_another_object():
    got = classify(end=(0.56, 0.03, 0.05))  # 3.2 cm from the blue block's axis
    assert got == outcomes.Outcome(
        'went_for_another_object', 'ended 3.2 cm from the blue block (the red cube 17.5 cm)')
    # 7 cm from the block: too far to say it went for it; nearer the block than the cube.
    assert classify(end=(0.55, 0.07, 0.05)).category == 'wandered'


def test_stopped_short_says_where_the_closest_approach_was():
    high = classify(end=(0.41, 0.10, 0.15), closest=(0.01, 0.07))
    assert high.category == 'stopped_short'
    assert high.detail == ('ended 1.0 cm from its axis; closest 4.0 cm from the region: '
                           '4.0 cm above the band')
    low = classify(end=(0.45, 0.10, 0.03), closest=(0.05, -0.012))
    assert low.detail.endswith('2.0 cm beside the axis, 1.2 cm below the band')
    assert classify(end=(0.45, 0.10, 0.1)).detail.endswith('closest approach not seen')
    assert classify(end=(0.49, 0.10, 0.1)).category == 'stopped_short'  # 9 cm
    assert classify(end=(0.51, 0.10, 0.1)).category == 'wandered'  # 11 cm


def test_the_end_position_is_the_last_second_not_the_last_sample():
    path, times = path_to((0.40, 0.10, 0.1))
    path[-1] = (0.55, 0.0, 0.1)  # one last sample over the block
    assert classify(path=path, times=times).category == 'stopped_short'
    assert classify(path=path, times=None).category == 'went_for_another_object'


def test_wandered():
    got = classify(path=np.array([(0.3, 0, 0.2), (0.3, 0, 0.1), (0.3, 0.03, 0.2)]))
    assert got == outcomes.Outcome('wandered', 'ended at (0.300, 0.030, 0.200) m, 12.2 cm from '
                                   'the red cube, nearest the red cube (12.2 cm)')


def test_the_rules_apply_in_order():
    # One episode that meets the rules from the given one on (success only when it succeeded):
    # each earlier rule, once it holds, wins.
    end = (0.56, 0.0, 0.395)  # at the top edge, over the blue block
    assert classify(end=end, box_clamps=9).category == 'pinned_at_edge'
    assert classify(end=end, workspace=None).category == 'went_for_another_object'
    assert list(outcomes.CATEGORIES) == ['success', 'never_moved', 'pinned_at_edge',
                                         'went_for_another_object', 'stopped_short', 'wandered']


def test_scene_objects_start_places_and_the_named_ones_live_place():
    layout = object_layout(4)
    objects = outcomes.scene_objects(4, 'green cylinder', [0.5, 0.1, 0.03])
    assert objects['green cylinder'] == (0.5, 0.1)
    assert objects['red cube'] == pytest.approx(layout['cube'][:2])
    assert outcomes.scene_objects(4, 'green cylinder')['green cylinder'] == \
        pytest.approx(layout['cylinder'][:2])
