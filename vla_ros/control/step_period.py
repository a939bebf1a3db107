"""
How long one policy step lasts, learned from when the deltas arrive (ROS-free).

``servo_twist`` streams each accepted delta as ``delta / period`` for one period, so the period
must be the policy's: 0.2 s for OpenVLA at 5 Hz, 0.05 s for an OpenVLA-OFT chunk executed at
20 Hz. ``StepPeriod`` learns it, so no rate has to be configured twice:

* It counts the *arrivals* (node clock at receipt) of accepted deltas, not their header stamps:
  every row of one chunk carries the same image stamp.
* An arrival less than half a stream period (``shortest / 2``) after the last counted one
  belongs to the same burst and is not counted: a burst delivered at once (a network hiccup, a
  stalled executor) would otherwise drag the period towards zero and the speed up. A policy
  faster than the stream gains nothing from this either way: the bridge streams at most one
  step per stream period (the newest supersedes the others), and ``shortest`` is the floor.
  ``same_burst`` is this rule; the safety core uses it too, to tell the same message delivered
  twice from two equal rows of a chunk (``vla_ros.control.safety``, check 3).
* An interval longer than ``longest`` (the bridge's ``command_timeout``) is a pause (a stopped
  policy, a disable, a restart), not a step, and is ignored.
* The period is the median of the last ``window`` intervals, clamped to ``[shortest,
  longest]``: a few late or early deltas do not move it, and a rate change takes over after
  ``window // 2 + 1`` steps.
* Until one interval is known (the first delta), the period is ``longest``. Every step is cut at
  ``stamp + command_timeout`` anyway, so no real step lasts longer: the first step is never
  faster than the policy asked, only slower (a shorter guess would be faster when wrong).

A positive ``fixed`` period switches learning off (the ``step_duration`` parameter). The
learned period is kept across enable and reset: it belongs to the policy, not to the stream.
"""

import collections
import statistics

WINDOW = 11            # intervals the median is taken over
REPORT_CHANGE = 0.2    # a learned period is reported again when it moves by more than this
SOURCES = ('fixed', 'initial', 'learned')


BURST_SHARE = 0.5       # arrivals closer than this share of a stream period arrived together


def same_burst(earlier, later, stream_period):
    """Return True when ``later`` arrived less than half a stream period after ``earlier``."""
    return 0.0 <= later - earlier < BURST_SHARE * stream_period


class StepPeriod:
    """The step period: ``fixed`` if positive, else learned (see the module docstring)."""

    def __init__(self, fixed=0.0, shortest=0.02, window=WINDOW):
        self.fixed = float(fixed)
        self.shortest = float(shortest)
        self._intervals = collections.deque(maxlen=int(window))
        self._last = None       # the last counted arrival
        self._reported = None   # the period last returned by ``news``

    @property
    def source(self):
        """Return ``fixed``, ``initial`` (no interval yet: the first guess) or ``learned``."""
        if self.fixed > 0.0:
            return 'fixed'
        return 'learned' if self._intervals else 'initial'

    def arrive(self, t, longest):
        """Count the arrival at ``t`` of an accepted delta; ``longest``: command_timeout."""
        if self._last is not None:
            if same_burst(self._last, t, self.shortest):
                return  # the same burst: the last counted arrival stands for it
            gap = t - self._last
            if 0.0 <= gap <= longest:
                self._intervals.append(gap)
            # A longer (or negative: a clock jump) gap is a pause: no interval.
        self._last = t

    def seconds(self, longest):
        """Return the period in force, in seconds; ``longest``: command_timeout."""
        if self.fixed > 0.0:
            return self.fixed
        if not self._intervals:
            return max(self.shortest, longest)
        # Where the bounds cross (command_timeout below one stream period) the longer wins:
        # a longer step is a slower one.
        return max(self.shortest, min(statistics.median(self._intervals), longest))

    def news(self, longest):
        """
        Return a line to log when the learned period is new or moved, else None.

        A line comes when the period is first learned and when it then moves by more than
        ``REPORT_CHANGE`` (20 %) from the last one reported; never for a fixed period.
        """
        if self.source != 'learned':
            return None
        period = self.seconds(longest)
        told = self._reported
        if told is not None and abs(period - told) <= REPORT_CHANGE * told:
            return None
        self._reported = period
        rate = f'{period:.3g} s ({1.0 / period:.3g} Hz)'
        if told is None:
            return (f'step period learned: {rate}, the median interval between the deltas '
                    'arriving; each delta is streamed as delta / period for one period')
        return f'step period changed: {told:.3g} s -> {rate}'
