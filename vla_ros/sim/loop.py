"""
ROS-free pieces of the simulator's control loop; times are integer nanoseconds.

``Pacer`` maps a clock (the node clock in real time, or a tick counter in sim time) onto whole
physics steps, so the state always has an exact time; ``Schedule`` says when a periodic output
(camera frame, ee_pose) is due on that time line; ``whole_steps`` turns a duration in seconds
into whole physics steps, the rest carried over.
"""


def whole_steps(pending, duration, timestep):
    """Return ``(steps, rest)``: the whole ``timestep``s in ``pending + duration`` seconds."""
    pending += max(0.0, float(duration))
    steps = int(pending / timestep + 1e-6)
    return steps, pending - steps * timestep


class Pacer:
    """
    Decide how many physics steps bring the state up to a clock's now.

    The state's time is ``epoch_ns + steps * step_ns``. When the clock has run more than
    ``max_steps`` ahead (the loop stalled, or the clock jumped), only ``max_steps`` are run and the
    epoch moves on by the rest: a stall is skipped, never raced through. A clock that goes back
    runs no steps until it has caught up again.
    """

    def __init__(self, step_ns, epoch_ns=0, max_steps=50):
        if step_ns <= 0 or max_steps < 1:
            raise ValueError(f'step_ns must be > 0 and max_steps >= 1, got {step_ns}, '
                             f'{max_steps}')
        self.step_ns = int(step_ns)
        self.epoch_ns = int(epoch_ns)
        self.max_steps = int(max_steps)
        self.steps = 0  # steps run since the start (never reset)
        self.skips = 0  # times the clock was too far ahead and time was skipped

    @property
    def now_ns(self):
        """Return the time of the state after the steps run so far."""
        return self.epoch_ns + self.steps * self.step_ns

    def advance(self, clock_ns):
        """Return the number of steps to run now to reach ``clock_ns``; count them as run."""
        steps = max(0, (int(clock_ns) - self.epoch_ns) // self.step_ns - self.steps)
        if steps > self.max_steps:
            self.epoch_ns += (steps - self.max_steps) * self.step_ns
            self.skips += 1
            steps = self.max_steps
        self.steps += steps
        return steps


class Schedule:
    """Say when a periodic output is due, keeping its average rate when ticks are coarser."""

    def __init__(self, rate_hz):
        if not rate_hz > 0:
            raise ValueError(f'rate must be > 0 Hz, got {rate_hz}')
        self.period_ns = int(round(1e9 / rate_hz))
        self._next = None

    def due(self, now_ns):
        """Return True when an output is due at ``now_ns`` (then the next one is scheduled)."""
        if self._next is not None and now_ns < self._next:
            return False
        base = now_ns if self._next is None else self._next
        self._next = max(base + self.period_ns, now_ns)
        return True
