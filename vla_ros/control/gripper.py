"""
Gripper conventions and hysteresis for arm_bridge (ROS-free).

A policy's gripper value means different things in different datasets, so the convention is a
parameter (``gripper_convention``), never a guess:

* ``open_is_one``: a value in [0, 1], 1 = open, 0 = closed. OpenVLA / BridgeData V2 (RLDS
  datasets are standardised to this), and what vla_node publishes on ``vla/gripper`` by default.
* ``closed_is_one``: a value in [0, 1], 1 = closed, 0 = open (vla_node with
  ``gripper_open_is_one: false``, and stacks that command "closedness").
* ``signed``: a value in [-1, 1], -1 = open, +1 = closed: robosuite / LIBERO's gripper action,
  what OpenVLA's LIBERO evaluation sends after ``normalize_gripper_action`` and
  ``invert_gripper_action``.

Every value is first turned into an *openness* in [0, 1] (1 = open; values beyond the range
are clipped). The hysteresis then votes: openness above ``threshold`` is a vote to open, below it
a vote to close, exactly at it (or NaN / inf) no vote, which breaks a streak. The state flips
only after ``consecutive`` votes in a row that disagree with it. The state starts unknown: the
first ``consecutive`` agreeing votes set it, and nothing is commanded before that, so a bridge
that starts never opens a gripper holding an object on its own.

Relative gripper actions (fractal / RT-1's raw "open or close from now") are not a convention
here; a model trained on them through the OpenVLA data pipeline already emits absolute values.
"""

import dataclasses
import math

from vla_ros.control.geometry import is_finite_number

CONVENTIONS = ('open_is_one', 'closed_is_one', 'signed')
OPEN = 'open'
CLOSED = 'closed'


def openness(value, convention):
    """Return the openness in [0, 1] (1 = open) of a gripper value, or None if non-finite."""
    value = float(value)
    if not math.isfinite(value):
        return None
    if convention == 'open_is_one':
        level = value
    elif convention == 'closed_is_one':
        level = 1.0 - value
    elif convention == 'signed':
        level = (1.0 - value) / 2.0
    else:
        raise ValueError(f'unknown gripper convention {convention!r}; use one of {CONVENTIONS}')
    return min(1.0, max(0.0, level))


@dataclasses.dataclass(frozen=True)
class GripperConfig:
    """The gripper parameters of arm_bridge (``gripper_`` + field name)."""

    convention: str = 'open_is_one'
    threshold: float = 0.5
    consecutive: int = 2
    open_position: float = 1.0
    closed_position: float = 0.0

    def validate(self):
        """Return a list of problems, each naming the parameter and its allowed values."""
        problems = []
        if self.convention not in CONVENTIONS:
            problems.append(f"parameter 'gripper_convention' is {self.convention!r}; allowed: "
                            + ', '.join(CONVENTIONS))
        if not (is_finite_number(self.threshold) and 0.0 < self.threshold < 1.0):
            problems.append(f"parameter 'gripper_threshold' is {self.threshold!r}; allowed range "
                            '(0.0, 1.0), on the openness scale (0.5 = the middle of any '
                            'convention)')
        if not (isinstance(self.consecutive, int) and not isinstance(self.consecutive, bool)
                and 1 <= self.consecutive <= 100):
            problems.append(f"parameter 'gripper_consecutive' is {self.consecutive!r}; allowed: "
                            'an integer in [1, 100]')
        for name in ('open_position', 'closed_position'):
            if not is_finite_number(getattr(self, name)):
                problems.append(f"parameter 'gripper_{name}' is {getattr(self, name)!r}; "
                                'allowed: any finite number')
        if (is_finite_number(self.open_position) and is_finite_number(self.closed_position)
                and self.open_position == self.closed_position):
            problems.append("parameters 'gripper_open_position' and 'gripper_closed_position' "
                            f'are both {self.open_position}; they must differ')
        return problems


@dataclasses.dataclass(frozen=True)
class GripperUpdate:
    """
    The outcome of one gripper value.

    ``position`` is the command to publish (None while the state is unknown or the value was
    rejected); ``flipped`` is True when this value changed the state; ``rejected`` when it was
    NaN or inf.
    """

    position: object
    state: object
    flipped: bool = False
    rejected: bool = False


class GripperHysteresis:
    """Open/closed state from a stream of gripper values; see the module docstring."""

    def __init__(self, config):
        self.config = config
        self.state = None          # None (unknown), OPEN or CLOSED
        self._vote = None          # the vote of the current streak
        self._streak = 0           # how many votes in a row disagree with the state

    def position(self):
        """Return the position command of the current state (None while unknown)."""
        if self.state is None:
            return None
        return self.config.open_position if self.state == OPEN else self.config.closed_position

    def update(self, value):
        """Feed one gripper value; return a ``GripperUpdate``."""
        level = openness(value, self.config.convention)
        if level is None:
            self._streak, self._vote = 0, None
            return GripperUpdate(None, self.state, rejected=True)
        if level > self.config.threshold:
            vote = OPEN
        elif level < self.config.threshold:
            vote = CLOSED
        else:
            vote = None
        if vote is None or vote == self.state:
            self._streak, self._vote = 0, None
            return GripperUpdate(self.position(), self.state)
        self._streak = self._streak + 1 if vote == self._vote else 1
        self._vote = vote
        if self._streak < self.config.consecutive:
            return GripperUpdate(self.position(), self.state)
        self.state, self._streak, self._vote = vote, 0, None
        return GripperUpdate(self.position(), self.state, flipped=True)

    def reset(self):
        """Forget the state (unknown again: nothing is commanded until a new streak)."""
        self.state, self._vote, self._streak = None, None, 0


# A gripper command and the delta of its step arrive within this many seconds of each other:
# vla_node publishes them back to back, and DDS may deliver the two topics in either order.
PAIR_WINDOW_S = 0.1
# What became of one gripper command (``StepPairing``): applied, or why it was ignored.
PAIRINGS = ('applied', 'with_rejected_delta', 'without_delta')


class StepPairing:
    """
    Match gripper commands to the delta of the same control step (ROS-free).

    A gripper command moves the gripper only together with a fresh, accepted delta of the same
    step; alone, or with a stale or rejected delta, it is ignored. ``std_msgs/Float64`` carries
    no stamp, so the step is found by arrival: a command belongs to the newest delta that arrived
    at most ``window`` seconds before it and has no command yet; one that arrives first waits up
    to ``window`` for its delta (the next delta to arrive). Feed events in arrival order; each
    call returns ``[(value, outcome)]`` for the commands it settles, outcome one of ``PAIRINGS``.
    Feed each step's delta once: a repeat (the same message delivered twice, which the safety
    core drops as ``dropped_duplicate``) is no new step, and would take its step's command.
    """

    def __init__(self, window=PAIR_WINDOW_S):
        self.window = float(window)
        self._delta = None  # [arrival, accepted, taken] of the newest delta
        self._waiting = []  # [(arrival, value)] commands that came before their delta

    def delta(self, arrival, accepted):
        """Record a delta that arrived at ``arrival``, accepted or not by the safety core."""
        settled, taken = [], False
        for when, value in self._waiting:
            if not taken and arrival - when <= self.window:
                settled.append((value, 'applied' if accepted else 'with_rejected_delta'))
                taken = True
            else:
                settled.append((value, 'without_delta'))
        self._waiting = []
        self._delta = [arrival, bool(accepted), taken]
        return settled

    def gripper(self, arrival, value):
        """Take a gripper command: settle it now if its delta is here, else let it wait."""
        last = self._delta
        if last is not None and not last[2] and arrival - last[0] <= self.window:
            last[2] = True
            return [(value, 'applied' if last[1] else 'with_rejected_delta')]
        self._waiting.append((arrival, value))
        return []

    def expire(self, now):
        """Settle the commands that waited longer than ``window`` for a delta: ignored."""
        settled = [(v, 'without_delta') for t, v in self._waiting if now - t > self.window]
        self._waiting = [(t, v) for t, v in self._waiting if now - t <= self.window]
        return settled

    def reset(self):
        """Forget every delta and waiting command (disable, reset)."""
        self._delta, self._waiting = None, []
