"""
The stamp rules every bridge applies to a command before it may move an arm (ROS-free).

A command (an end-effector delta, a joint command, a chunk) carries the stamp of the image it was
computed from; times are float seconds on the node clock. ``stamp_refusal`` is the one place the
rules live, in their order:

1. a non-finite stamp: rejected (``rejected_nan``);
2. older than ``command_timeout``: stale (``dropped_stale``);
3. more than ``future_tolerance`` ahead of now: from the future (``dropped_future``), or stale
   when the clock has since jumped back from a time after it (``clock.before_jump``);
4. older than the last accepted stamp (or the last enable): reordered (``dropped_reordered``).
   An equal stamp is accepted: the rows of one chunk share their image's stamp.
"""

import math

from vla_ros.control.clock import before_jump


def stamp_refusal(stamp, now, command_timeout, future_tolerance, last_stamp=-math.inf,
                  jumped_from=-math.inf, what='command'):
    """Return ``(counter key, reason)`` when ``stamp`` breaks a rule above, else None."""
    if not math.isfinite(stamp):
        return 'rejected_nan', f'{what} stamp {stamp}'
    age = now - stamp
    if age > command_timeout:
        return 'dropped_stale', (f'{what} stamped {age:.3f} s ago (command_timeout '
                                 f'{command_timeout} s)')
    if -age > future_tolerance:
        if before_jump(stamp, jumped_from, future_tolerance):
            return 'dropped_stale', (f'{what} stamped {-age:.3f} s ahead of the clock, from '
                                     'before it jumped back')
        return 'dropped_future', (f'{what} stamped {-age:.3f} s in the future '
                                  f'(future_tolerance {future_tolerance} s); check the clocks')
    if stamp < last_stamp:
        return 'dropped_reordered', (f'{what} stamped {last_stamp - stamp:.3f} s before the last '
                                     'accepted one (or the last enable)')
    return None
