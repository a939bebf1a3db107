"""
Which action of which chunk a control tick publishes: ``open_loop``, ``receding``, ``ensemble``.

A policy returns a chunk of rows for one observation (OpenVLA: one row; OpenVLA-OFT: 8 for
LIBERO). Row ``i`` of a chunk is the action for the control step at ``t + i * period``, where
``t`` is the first tick with no action yet when the model was asked (the tick that took the
observation when the output was idle, else the one after it): rows are tied to time, so a tick
at ``now`` takes row ``round((now - t) / period)``, never one it already published, and rows
whose step has passed while the model worked (a slow model, ``receding`` switching mid-chunk)
are trimmed, not replayed. Only the first ``execute_steps`` rows are executed (0: all). A chunk
whose image is older than ``max_age`` publishes nothing more, so output stops within
``max_image_age`` of the last fresh image, as without chunks.

* ``open_loop`` (OpenVLA-OFT's own deployment): execute the chunk, and infer again only when it
  is used up (the inference then overlaps the last executed step).
* ``receding``: infer whenever the model is free; a new chunk replaces the current one at the
  step its image time says.
* ``ensemble`` (ACT's temporal ensembling): every chunk that has a row for this step takes part;
  the action is their average with weights ``exp(-decay * j)``, ``j = 0`` the oldest chunk.

When a chunk arrives while no action has been published since its inference started (the output
is idle), the row of the step in progress goes out at once (``catch_up``: ``floor`` instead of
``round``), or the last executable one if the time says later, so one-row chunks (OpenVLA)
always publish and a model faster than the period executes every row from row 0.
ROS-free; the caller (``ControlCore``) holds the lock.
"""

import dataclasses
import math

import numpy as np

MODES = ('open_loop', 'receding', 'ensemble')


@dataclasses.dataclass
class Chunk:
    """The rows of one prediction, its observation, the tick that took it, how far they went."""

    rows: np.ndarray  # (n, D) float64
    source: object  # the observation (its ``stamp_s`` is the image time)
    start_s: float  # the tick of row 0
    limit: int  # rows that may be executed
    last: int = -1  # the last row published

    def index(self, now, period, catch_up=False):
        """Return the row for the tick at ``now`` (``catch_up``: for the step in progress)."""
        return int(math.floor((now - self.start_s) / period + (0.0 if catch_up else 0.5)))


class ChunkSchedule:
    """The chunks in flight and the rule of one ``mode`` (see the module docstring)."""

    def __init__(self, mode='open_loop', period=0.2, execute_steps=0, decay=0.01,
                 max_age=None):
        if mode not in MODES:
            raise ValueError(f'chunk mode {mode!r}: use one of {", ".join(MODES)}')
        self.mode = mode
        self.period = float(period)
        self.execute_steps = int(execute_steps)
        self.decay = float(decay)
        self.max_age = max_age
        self.chunks = []  # oldest first; one at most unless ensembling

    def clear(self):
        self.chunks = []

    def add(self, rows, source, start_s):
        """Take a chunk (K, D), row 0 for the tick at ``start_s``; it replaces the current one."""
        rows = np.asarray(rows, dtype=np.float64)
        limit = len(rows) if self.execute_steps <= 0 else min(self.execute_steps, len(rows))
        chunk = Chunk(rows, source, float(start_s), limit)
        self.chunks = self.chunks + [chunk] if self.mode == 'ensemble' else [chunk]

    def wants_inference(self):
        """Return False while ``open_loop`` executes a chunk that still has rows."""
        if self.mode != 'open_loop' or not self.chunks:
            return True
        chunk = self.chunks[-1]
        return chunk.last >= chunk.limit - 1

    def _fresh(self, now):
        if self.max_age is not None:
            self.chunks = [c for c in self.chunks if now - c.source.stamp_s <= self.max_age]

    def action(self, now, catch_up=False):
        """
        Return ``(row (D,), source, plan)`` to publish at ``now``, or None.

        ``plan``: in ``open_loop``, with the first row published of a chunk, the rows it will
        execute from this one on (rows whose step passed while the model worked are not in it);
        else None.
        """
        self._fresh(now)
        if not self.chunks:
            return None
        if self.mode == 'ensemble':
            return self._ensemble(now, catch_up)
        chunk = self.chunks[-1]
        index = max(chunk.index(now, self.period, catch_up), chunk.last + 1)
        if catch_up:
            index = min(index, chunk.limit - 1)
        if index >= chunk.limit:
            chunk.last = chunk.limit - 1  # used up: open_loop may infer again
            return None
        first = self.mode == 'open_loop' and chunk.last < 0
        plan = chunk.rows[index:chunk.limit] if first else None
        chunk.last = index
        return chunk.rows[index], chunk.source, plan

    def _ensemble(self, now, catch_up):
        newest = self.chunks[-1]
        taking = [(chunk, index) for chunk in self.chunks
                  if (index := max(chunk.index(now, self.period, catch_up), 0)) < chunk.limit]
        self.chunks = [chunk for chunk, _ in taking]  # the others are used up
        if not taking:
            return (newest.rows[newest.limit - 1], newest.source, None) if catch_up else None
        weights = np.exp(-self.decay * np.arange(len(taking)))[:, None]  # oldest first
        rows = np.stack([chunk.rows[index] for chunk, index in taking])  # (m, D)
        return (rows * weights).sum(axis=0) / weights.sum(), taking[-1][0].source, None
