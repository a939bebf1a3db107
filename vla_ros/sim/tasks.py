"""
The simulator's tasks (ROS-free, numpy only): seeded episodes, instructions and success.

An episode is ``(task, object, instruction, seed)``: the seed places the three objects on the
table (``object_layout``) and names the target, so one seed always gives the same scene and the
same instruction; with a start spread it also moves the gripper's start (``start_offset``).
Seeds come in blocks of three (0-2, 3-5, ...) that share one layout and name each object once:
only the instruction tells the three apart, so a policy trained on such episodes has to read it
rather than learn "this table: go there". Objects are named as the
scene draws them, colour then shape: ``red cube``, ``green cylinder``, ``blue block``. Tasks
(``TASKS``):

* ``reach`` ("reach the red cube"): the fingertip midpoint is within ``REACH_RADIUS`` (3 cm)
  of the object's vertical axis, and between the object's top and ``REACH_HEIGHT`` (3 cm) above
  it. The fingertip midpoint is the point between the tips of the two finger pads,
  ``FINGERTIP_OFFSET`` (1.5 cm) below the end-effector point that ``ee_pose`` reports, along the
  gripper's axis (straight down at the identity orientation). So the open fingers may straddle
  the object, but their tips stay above its top.
* ``lift`` ("pick up the red cube"): the lowest point of the object is at least
  ``LIFT_HEIGHT`` (5 cm) above the table top.

``success`` is the condition at one instant; ``EpisodeMonitor`` latches it (the first instant
it holds is the episode's time to success) and builds the ``sim/task`` status, a JSON object:

* ``task``, ``object``, ``instruction``, ``seed``: the episode;
* ``success``: the task was achieved at some instant since the reset (it stays true);
  ``success_now``: it holds at this instant;
* ``time_since_reset``: physics seconds; ``time_to_success``: physics seconds from the reset to
  the first success, null until then;
* the named object's ``object_position`` (centre, xyz m), ``object_yaw`` (rad),
  ``object_top`` and ``object_height`` (its highest and lowest point above the table top, m),
  ``object_lifted`` (``object_height >= LIFT_HEIGHT``);
* ``fingertip_distance``: [horizontal distance, height above the object's top] of the fingertip
  midpoint, m (reach succeeds at <= 0.03 and in [0, 0.03]).
"""

import dataclasses
import math

import numpy as np

TASKS = ('reach', 'lift')
ALOHA_TASKS = ('transfer_cube',)  # the simulated ALOHA's (``vla_ros.sim.aloha``)
INSTRUCTIONS = {'reach': 'reach the {object}', 'lift': 'pick up the {object}'}
# The ALOHA task's one instruction: LeRobot's aloha_sim_transfer_cube datasets' task text.
ALOHA_INSTRUCTIONS = {'transfer_cube': 'Pick up the cube with the right arm and transfer it to '
                      'the left arm.'}
REACH_RADIUS = 0.03  # m, horizontal distance of the fingertip midpoint from the object's axis
REACH_HEIGHT = 0.03  # m, band above the object's top that the fingertip midpoint must be in
LIFT_HEIGHT = 0.05  # m, the object's lowest point above the table top
# Reach's success region in words, for reports.
REACH_REGION = (f"within {REACH_RADIUS * 100:g} cm of the object's axis, 0 to "
                f'{REACH_HEIGHT * 100:g} cm above its top')
FINGERTIP_OFFSET = 0.015  # m from the end-effector site down to the tips of the finger pads
# Where objects are placed (x, y in the base frame, m): in reach of the gripper, inside the
# arm_bridge and sim workspaces, and in view of the scene camera; centres at least
# MIN_SEPARATION apart, so the open fingers never touch a neighbour of the target.
PLACE_LOW = (0.30, -0.20)
PLACE_HIGH = (0.56, 0.20)
MIN_SEPARATION = 0.12
START_SPREAD_MAX = 0.1  # m: the largest start_spread (the start stays in the workspace)


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One graspable object: MuJoCo body (= geom, ``<body>_free`` joint), name, geometry."""

    body: str
    name: str
    shape: str  # 'box' or 'cylinder'
    size: tuple  # MuJoCo geom size: box half extents (x, y, z); cylinder (radius, half height)

    @property
    def half_height(self):
        """Return the centre's height above the table when the object stands upright."""
        return self.size[2] if self.shape == 'box' else self.size[1]

    def vertical_extent(self, rotation):
        """Return how far the object reaches below (= above) its centre, for a 3x3 rotation."""
        up = np.asarray(rotation, dtype=np.float64)[2]  # the world z axis in the body frame
        if self.shape == 'box':
            return float(np.dot(np.abs(up), self.size))
        radius, half = self.size
        tilt = min(1.0, abs(float(up[2])))
        return half * tilt + radius * math.sqrt(max(0.0, 1.0 - tilt * tilt))


# As scene.xml draws them (rgba 0.85 0.15 0.12, 0.15 0.65 0.25, 0.15 0.3 0.85).
OBJECTS = (SceneObject('cube', 'red cube', 'box', (0.02, 0.02, 0.02)),
           SceneObject('cylinder', 'green cylinder', 'cylinder', (0.018, 0.03)),
           SceneObject('block', 'blue block', 'box', (0.03, 0.015, 0.015)))
OBJECT_NAMES = tuple(o.name for o in OBJECTS)


def scene_object(name):
    """Return the ``SceneObject`` called ``name`` ('red cube') or with that body ('cube')."""
    for obj in OBJECTS:
        if name in (obj.name, obj.body):
            return obj
    raise ValueError(f'unknown object {name!r}; the objects are: {", ".join(OBJECT_NAMES)}')


@dataclasses.dataclass(frozen=True)
class Episode:
    """One seeded episode: the task, the named object, the instruction and the seed."""

    task: str
    object: str  # noqa: A003 - the spec's field name; shadows nothing in this small class
    instruction: str
    seed: int


def object_layout(seed):
    """
    Return the seeded start placement ``{body: (x, y, yaw)}`` of every object on the table.

    Each object lies in the ``PLACE_LOW`` .. ``PLACE_HIGH`` rectangle, upright, at a random yaw,
    at least ``MIN_SEPARATION`` from the others; any of them can be the target. The three seeds
    of a block (``seed // 3``) share the layout.
    """
    rng = np.random.default_rng([int(seed) // 3, 3])
    layout = {}
    for obj in OBJECTS:
        while True:
            x, y = rng.uniform(PLACE_LOW, PLACE_HIGH)
            if all(math.hypot(x - ox, y - oy) >= MIN_SEPARATION
                   for ox, oy, _ in layout.values()):
                break
        layout[obj.body] = (float(x), float(y), float(rng.uniform(-math.pi, math.pi)))
    return layout


def start_offset(seed, spread):
    """
    Return the seeded offset (3,) of the gripper's start from its home position, m.

    Each axis is uniform in [-``spread``, ``spread``] (``spread`` in [0, ``START_SPREAD_MAX``]);
    ``spread`` 0 starts every episode at home. Every seed has its own start, so in
    demonstrations the direction to the goal cannot be read off the distance travelled from home.
    """
    if not 0.0 <= spread <= START_SPREAD_MAX:
        raise ValueError(f'start spread must be in [0, {START_SPREAD_MAX}] m, got {spread!r}')
    if spread == 0.0:
        return np.zeros(3)
    return np.random.default_rng([int(seed), 7]).uniform(-spread, spread, 3)


def target_object(seed):
    """
    Return the name of the object that seed ``seed`` asks for.

    Seeds come in blocks of three (0-2, 3-5, ...) that name each object once, in an order drawn
    from the block: every object is the target equally often, and consecutive seeds differ.
    """
    order = np.random.default_rng([int(seed) // 3, 14]).permutation(len(OBJECTS))
    return OBJECTS[int(order[int(seed) % 3])].name


def episode(seed, task='reach'):
    """Return the ``Episode`` of ``seed`` for ``task`` (of ``TASKS``, or ``ALOHA_TASKS``)."""
    if task not in TASKS + ALOHA_TASKS:
        raise ValueError(f'unknown task {task!r}; the tasks are: '
                         f'{", ".join(TASKS + ALOHA_TASKS)}')
    if int(seed) != seed or seed < 0:
        raise ValueError(f'seed must be an integer >= 0, got {seed!r}')
    if task in ALOHA_TASKS:  # one object, the red cube
        return Episode(task, 'cube', ALOHA_INSTRUCTIONS[task], int(seed))
    name = target_object(seed)
    return Episode(task, name, INSTRUCTIONS[task].format(object=name), int(seed))


@dataclasses.dataclass(frozen=True)
class SceneState:
    """
    What success is judged on: the end effector's pose and every object's pose (base frame).

    ``ee_rotation`` and each object's rotation are 3x3 matrices (columns: the body's axes).
    """

    ee_position: np.ndarray
    ee_rotation: np.ndarray
    object_positions: dict  # {body: (3,)}
    object_rotations: dict  # {body: (3, 3)}

    def fingertip_midpoint(self):
        """Return the point between the finger pads' tips (``FINGERTIP_OFFSET`` below ee)."""
        axis = np.asarray(self.ee_rotation, dtype=np.float64)[:, 2]  # the gripper's z axis
        return np.asarray(self.ee_position, dtype=np.float64) - FINGERTIP_OFFSET * axis

    def object_bounds(self, name):
        """Return (lowest, highest) height of object ``name`` above the table top."""
        obj = scene_object(name)
        centre = float(self.object_positions[obj.body][2])
        extent = obj.vertical_extent(self.object_rotations[obj.body])
        return centre - extent, centre + extent


def reach_offset(name, state):
    """Return (horizontal distance, height above the top) of the fingertips from the object."""
    obj = scene_object(name)
    tip = state.fingertip_midpoint()
    centre = np.asarray(state.object_positions[obj.body], dtype=np.float64)
    return float(math.hypot(*(tip[:2] - centre[:2]))), float(tip[2] - state.object_bounds(name)[1])


def reach_miss(horizontal, height):
    """
    Return how far (m) the fingertips are from reach's success region, 0 inside it.

    ``horizontal`` and ``height`` are ``reach_offset``'s (``sim/task``'s ``fingertip_distance``):
    the region is ``horizontal <= REACH_RADIUS`` and ``0 <= height <= REACH_HEIGHT``.
    """
    across = max(0.0, horizontal - REACH_RADIUS)
    up = max(0.0, -height, height - REACH_HEIGHT)
    return math.hypot(across, up)


def success(task, name, state):
    """Return True when ``task`` on object ``name`` is achieved in ``state`` (a SceneState)."""
    if task == 'reach':
        return reach_miss(*reach_offset(name, state)) == 0.0
    if task == 'lift':
        return state.object_bounds(name)[0] >= LIFT_HEIGHT
    raise ValueError(f'unknown task {task!r}; the tasks are: {", ".join(TASKS)}')


class EpisodeMonitor:
    """
    Follow one episode: latch success and its time, and build the ``sim/task`` status.

    ``update(time, state)`` is called on every control tick (``time``: seconds since reset);
    ``status(time, state)`` returns the JSON-ready dict of the module docstring's fields.
    """

    def __init__(self, episode):
        self.episode = episode
        self.time_to_success = None

    @property
    def succeeded(self):
        return self.time_to_success is not None

    def update(self, time, state):
        """Judge ``state`` at ``time``; return whether the task holds now."""
        now = success(self.episode.task, self.episode.object, state)
        if now and self.time_to_success is None:
            self.time_to_success = float(time)
        return now

    def status(self, time, state):
        """Return the status dict (see sim_arm's ``sim/task``) of the episode at ``time``."""
        ep = self.episode
        obj = scene_object(ep.object)
        now = self.update(time, state)
        bottom, top = state.object_bounds(ep.object)
        horizontal, height = reach_offset(ep.object, state)
        rotation = np.asarray(state.object_rotations[obj.body], dtype=np.float64)
        return {
            'task': ep.task, 'object': ep.object, 'instruction': ep.instruction,
            'seed': ep.seed, 'success': self.succeeded, 'success_now': now,
            'time_since_reset': round(float(time), 4),
            'time_to_success': (None if self.time_to_success is None
                                else round(self.time_to_success, 4)),
            'object_position': [round(float(v), 5) for v in state.object_positions[obj.body]],
            'object_yaw': round(math.atan2(rotation[1, 0], rotation[0, 0]), 5),
            'object_top': round(top, 5),
            'object_height': round(bottom, 5),
            'object_lifted': bottom >= LIFT_HEIGHT,
            'fingertip_distance': [round(horizontal, 5), round(height, 5)],
        }
