"""
Why a reach episode failed (ROS-free, numpy only): one category each, from what a runner sees.

``classify`` takes the end-effector path (``ee_pose`` positions and their times), where the
objects are, the fingertips' offset from the named object at their closest approach (``sim/task``'s
``fingertip_distance`` there), the commands arm_bridge cut at its workspace box, and the workspace.
The **end position** is the mean end-effector position over the path's last ``END_WINDOW`` seconds
(where the arm settled, not one jittery sample); distances to objects are horizontal, from the
objects' vertical axes. A successful episode is ``success``; a failed one gets the first of these
(``CATEGORIES`` order) whose rule holds:

1. ``never_moved``: the path is shorter than ``NEVER_MOVED_PATH`` (2 cm).
2. ``pinned_at_edge``: arm_bridge cut at least ``PINNED_BOX_CLAMPS`` (5) commands at its workspace
   box, or the end position lies within ``EDGE_MARGIN`` (1 cm) of a side or the top of the
   workspace (for the end position the floor is left out: resting on the table is judged by the
   rules below). The clamps catch pushing into arm_bridge's box, whose floor is the table plane,
   so pushing down into the table counts too; the margin catches an arm held at a box that cuts
   nothing in arm_bridge (sim_arm clips its own, narrower workspace).
3. ``went_for_another_object``: the object nearest the end position is not the named one, and it is
   within ``ANOTHER_OBJECT_RADIUS`` (6 cm) of it.
4. ``stopped_short``: the object nearest the end position is the named one, within
   ``STOPPED_SHORT_RADIUS`` (10 cm): it came toward the right object but never entered the success
   region. The detail says where the closest approach was against the region (``band_offset``):
   beside the axis, above or below the band, so hovering too high and pressing too low show.
5. ``wandered``: anything else.

Every category has a one-line ``detail`` with the numbers its rule used.
"""

import dataclasses
import math

import numpy as np

from vla_ros.sim.tasks import object_layout, OBJECTS, REACH_HEIGHT, reach_miss, REACH_RADIUS

CATEGORIES = ('success', 'never_moved', 'pinned_at_edge', 'went_for_another_object',
              'stopped_short', 'wandered')
NEVER_MOVED_PATH = 0.02  # m of end-effector path
PINNED_BOX_CLAMPS = 5  # commands arm_bridge cut at its workspace box during the episode
EDGE_MARGIN = 0.01  # m from a side or the top of the workspace
ANOTHER_OBJECT_RADIUS = 0.06  # m, horizontal, from another object's axis
STOPPED_SHORT_RADIUS = 0.10  # m, horizontal, from the named object's axis
END_WINDOW = 1.0  # s of path at its end averaged into the end position
AXES = 'xyz'


@dataclasses.dataclass(frozen=True)
class Outcome:
    """An episode's category (one of ``CATEGORIES``) and a line with the numbers behind it."""

    category: str
    detail: str = ''


def scene_objects(seed, name, position=None):
    """
    Return ``{object name: (x, y)}`` of every object of episode ``seed``.

    Each object's start place (``object_layout``); the named object ``name`` at ``position``
    (``sim/task``'s ``object_position``, where it is now) when given. The others may have been
    pushed since: sim/task reports only the named one.
    """
    layout = object_layout(seed)
    found = {o.name: layout[o.body][:2] for o in OBJECTS}
    if position is not None:
        found[name] = tuple(position[:2])
    return {k: (float(x), float(y)) for k, (x, y) in found.items()}


def end_position(path, times=None):
    """Return the mean of ``path`` (N, 3) over its last ``END_WINDOW`` s (no times: the last)."""
    path = np.asarray(path, dtype=np.float64).reshape(-1, 3)
    if times is None:
        return path[-1]
    times = np.asarray(times, dtype=np.float64)
    return path[times >= times[-1] - END_WINDOW].mean(axis=0)


def band_offset(horizontal, height):
    """
    Describe fingertips at (horizontal, height) (``fingertip_distance``) against reach's region.

    E.g. ``'1.2 cm beside the axis, 4.0 cm above the band'``; ``'inside the region'``.
    """
    parts = []
    if horizontal > REACH_RADIUS:
        parts.append(f'{(horizontal - REACH_RADIUS) * 100:.1f} cm beside the axis')
    if height > REACH_HEIGHT:
        parts.append(f'{(height - REACH_HEIGHT) * 100:.1f} cm above the band')
    elif height < 0.0:
        parts.append(f'{-height * 100:.1f} cm below the band')
    return ', '.join(parts) or 'inside the region'


def edge_distance(position, workspace):
    """Return (distance m, face such as 'x max') of the nearest side or top face of the box."""
    low, high = (np.asarray(v, dtype=np.float64) for v in workspace)
    faces = [(float(position[i] - low[i]), f'{AXES[i]} min') for i in (0, 1)]
    faces += [(float(high[i] - position[i]), f'{AXES[i]} max') for i in (0, 1, 2)]
    return min(faces)


def classify(*, success, path, target, objects, box_clamps=0, closest=None, times=None,
             workspace=None):
    """
    Return the ``Outcome`` of one reach episode by the rules of the module docstring.

    ``path``: (N, 3) end-effector positions, m; ``times``: their (N,) times, s (None: the last
    point is the end position); ``target``: the named object; ``objects``: ``{name: (x, y)}`` of
    every object (``scene_objects``); ``box_clamps``: arm_bridge's ``clamped_box`` count over the
    episode; ``closest``: ``fingertip_distance`` (horizontal, height) at the closest approach
    (None: not seen); ``workspace``: (low xyz, high xyz), m (None: only the clamps count).
    """
    if success:
        return Outcome('success')
    path = np.asarray(path, dtype=np.float64).reshape(-1, 3)
    length = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum()) if len(path) else 0.0
    if length < NEVER_MOVED_PATH:
        return Outcome('never_moved', f'path {length * 100:.1f} cm')
    end = end_position(path, times)
    where = f'ended at ({end[0]:.3f}, {end[1]:.3f}, {end[2]:.3f}) m'
    edge = edge_distance(end, workspace) if workspace is not None else (math.inf, '')
    if box_clamps >= PINNED_BOX_CLAMPS or edge[0] <= EDGE_MARGIN:
        at_edge = f', {edge[0] * 100:.1f} cm from the {edge[1]} edge' if edge[1] else ''
        return Outcome('pinned_at_edge', f'{box_clamps} box clamps, {where}{at_edge}')
    distance = {name: math.hypot(end[0] - x, end[1] - y) for name, (x, y) in objects.items()}
    nearest = min(distance, key=distance.get)
    if nearest != target and distance[nearest] <= ANOTHER_OBJECT_RADIUS:
        return Outcome('went_for_another_object',
                       f'ended {distance[nearest] * 100:.1f} cm from the {nearest} '
                       f'(the {target} {distance[target] * 100:.1f} cm)')
    if nearest == target and distance[target] <= STOPPED_SHORT_RADIUS:
        approach = ('closest approach not seen' if closest is None else
                    f'closest {reach_miss(*closest) * 100:.1f} cm from the region: '
                    + band_offset(*closest))
        return Outcome('stopped_short',
                       f'ended {distance[target] * 100:.1f} cm from its axis; {approach}')
    return Outcome('wandered', f'{where}, {distance[target] * 100:.1f} cm from the {target}, '
                   f'nearest the {nearest} ({distance[nearest] * 100:.1f} cm)')
