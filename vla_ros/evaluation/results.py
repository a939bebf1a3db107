"""
``BagResult``: everything vla_eval learned from one bag, one row per control step.

Per step: its time, the primary image, the instruction, the status (the control core's verdict,
or ``bad_image``), the action the step published (what vla_node publishes on ``vla/action`` at
that tick), its validity, the latency of a prediction made at the step, and the reference
action. Per committed chunk (every prediction the core accepted; OpenVLA's are one row): its
rows, the step that predicted it and the step its row 0 is for (``chunks.py``: the step that
took the observation, or the next one when that step had already published a row).

It crosses process boundaries as JSON text (``to_json``/``from_json``), never pickle.
"""

import dataclasses
import json

import numpy as np

from vla_ros.control.action_layout import ACTION_DIM

# What a step did: predicted ('ready', valid or not), published the next action of a chunk
# ('queued'), or why it could not predict. 'bad_image': the node's decoder refused a frame.
STATUSES = ('ready', 'queued', 'idle', 'stale', 'future', 'skewed', 'bad_state', 'bad_image')


@dataclasses.dataclass
class BagResult:
    """Everything vla_eval learned from one bag (see the module docstring)."""

    name: str
    path: str
    storage: str
    time_ns: np.ndarray  # int64 (K,), bag log time of each step
    image_log_ns: np.ndarray  # int64 (K,), of the primary camera's frame
    image_stamp_ns: np.ndarray  # int64 (K,), header stamp of the step's primary frame
    status: list  # (K,) one of STATUSES
    instruction: list  # (K,) str
    predicted: np.ndarray  # float64 (K, D): the published action; for a step whose
    # prediction was invalid and that published nothing, row 0 of that prediction; else NaN
    valid: np.ndarray  # bool (K,): the step published an action
    token_ids: np.ndarray  # int64 (K, D); -1 where nothing was predicted (or an L1 head)
    latency_s: np.ndarray  # float64 (K,); NaN where nothing was predicted
    reference: np.ndarray  # float64 (K, D); NaN rows where there is no reference
    action_stamp_ns: np.ndarray = None  # int64 (K,): the stamp of the primary frame the
    # published action came from (its chunk's observation; vla_node stamps outputs with it), -1
    chunks: np.ndarray = None  # float64 (C, L, D): every committed chunk
    chunk_step: np.ndarray = None  # int64 (C,): the step that predicted it
    chunk_start: np.ndarray = None  # int64 (C,): the step of its row 0
    chunk_len: int = 1  # L
    invalid_predictions: int = 0  # predictions that were not valid (nothing committed)
    bad_instructions: int = 0
    bad_image_reason: str = ''  # why the first refused frame was refused
    reasons: dict = None  # {status: the core's detail for its first step} (stale, skewed ...)
    reference_messages: int = 0  # messages on the reference topic(s)

    def __post_init__(self):
        if self.action_stamp_ns is None:
            self.action_stamp_ns = np.where(self.valid, self.image_stamp_ns, -1)
        if self.chunks is None:
            self.chunks = np.zeros((0, self.chunk_len, self.predicted.shape[1]))
            self.chunk_step = np.zeros(0, np.int64)
            self.chunk_start = np.zeros(0, np.int64)
        if self.reasons is None:
            self.reasons = {}

    @property
    def predicted_mask(self):
        """Return the steps that published an action or ran a prediction that was invalid."""
        ready = np.array([s == 'ready' for s in self.status], dtype=bool)
        return ready | self.valid

    def counts(self):
        """Return the step counts by status, plus invalid actions, chunks, missing references."""
        mask = self.predicted_mask
        ok = mask & self.valid
        counts = {'steps': len(self.status), 'predicted': int(mask.sum()),
                  'invalid': int(mask.sum() - ok.sum()),
                  'invalid_predictions': int(self.invalid_predictions),
                  'chunks': int(len(self.chunk_step)),
                  'no_reference': int((ok & ~np.all(np.isfinite(self.reference), axis=1)).sum()),
                  'bad_instructions': int(self.bad_instructions)}
        for status in STATUSES[1:]:
            counts[status] = self.status.count(status)
        return counts

    def metric_inputs(self):
        """Return (predicted, reference, valid, latency_s) of the predicted steps."""
        mask = self.predicted_mask
        return self.predicted[mask], self.reference[mask], self.valid[mask], self.latency_s[mask]

    def chunk_inputs(self):
        """
        Return (rows, references), both float64 (C, L, D), of every committed chunk.

        ``references[c, j]`` is the reference of the step row ``j`` is for (step
        ``chunk_start[c] + j``); NaN past the last step or where that step has no reference.
        """
        steps = self.chunk_start[:, None] + np.arange(self.chunk_len)[None]  # (C, L)
        inside = steps < len(self.status)
        references = np.full(self.chunks.shape, np.nan)
        references[inside] = self.reference[steps[inside]]
        return self.chunks, references

    def to_json(self):
        """Serialise to JSON text (floats round-trip exactly; NaN kept) for gathering."""
        data = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            data[field.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return json.dumps(data)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        dtypes = {'time_ns': np.int64, 'image_log_ns': np.int64, 'image_stamp_ns': np.int64,
                  'action_stamp_ns': np.int64,
                  'predicted': np.float64, 'valid': bool, 'token_ids': np.int64,
                  'latency_s': np.float64, 'reference': np.float64, 'chunks': np.float64,
                  'chunk_step': np.int64, 'chunk_start': np.int64}
        for name, dtype in dtypes.items():
            data[name] = np.asarray(data[name], dtype=dtype)
        dim = len(data['predicted'][0]) if len(data['predicted']) else ACTION_DIM  # (K, D)
        for name in ('predicted', 'token_ids', 'reference'):
            data[name] = data[name].reshape(-1, dim)
        data['chunks'] = data['chunks'].reshape(len(data['chunk_step']), data['chunk_len'], dim)
        return cls(**data)
