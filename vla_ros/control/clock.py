"""
A node clock that can jump back (ROS-free).

With ``use_sim_time`` the node clock is ``/clock``, and every loop of ``ros2 bag play --loop
--clock`` sets it back by the length of the bag. Whatever a node timed on the old time (a chunk's
rows, a stream's end, the newest accepted stamp, a pose's arrival) then lies ahead of the new
time and would pass every age check, or refuse every new input, for as long as the jump.
``ClockWatch`` is the one place that notices: each ``read`` of the clock says how far it jumped
back, if it did; vla_node's control core and arm_bridge both read their clock through one.
``before_jump`` is the one rule for what follows: a stamp ahead of the new time, but no later
than the time the clock jumped back from, is from before the jump (stale), not from the future.
"""

import math


class ClockWatch:
    """The readings of one clock; ``read`` returns how far it jumped back since the last one."""

    def __init__(self):
        self.last = -math.inf         # the latest reading, seconds
        self.jumped_from = -math.inf  # the latest time the clock jumped back from

    def read(self, now):
        """Take the reading ``now`` (seconds); return how far the clock jumped back (0: not)."""
        last, self.last = self.last, now
        if now >= last:
            return 0.0
        self.jumped_from = max(self.jumped_from, last)
        return last - now


def before_jump(stamp, jumped_from, tolerance):
    """Return True when ``stamp`` (ahead of the clock) is no later than ``jumped_from``."""
    return stamp <= jumped_from + tolerance
