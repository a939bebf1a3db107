"""
Evaluate one bag: every control step through the same conversions and ``predict`` as the node.

``evaluate_bag(path, policy, unnorm_key, options)`` returns a ``BagResult``: per step its time,
image, instruction, status, predicted action, validity, latency and reference action. Reading,
deserialising and converting frames runs on a background thread one step ahead of ``predict``
(``prefetch``), so the model is never waiting on the bag. ``check_bag`` validates a bag's topics
without reading its messages; the command line calls it for every bag before loading a model.
"""

import dataclasses
import json
from pathlib import Path
import queue
import threading
import time

import numpy as np
from tqdm import tqdm

from vla_ros.evaluation import reference as references
from vla_ros.evaluation.bags import (Bag, COMPRESSED_IMAGE, EvalError, FLOAT64,
                                     FLOAT64_MULTI_ARRAY, IMAGE, POSE_STAMPED, STRING, topic_name)
from vla_ros.evaluation.steps import as_arrays, step_time, StepReader

REFERENCES = ('action', 'ee_pose', 'none')
ACTION_DIM = 7


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What to read from each bag and how to step through it (topic names absolute)."""

    image_topic: str = ''  # '' = camera/image_raw, or camera/image_raw/compressed
    compressed: bool = False
    instruction_topic: str = '/vla/instruction'
    instruction: str = ''  # non-empty: used at every step instead of the topic
    reference: str = 'action'  # 'action', 'ee_pose' or 'none'
    action_topic: str = '/vla/action'
    ee_pose_topic: str = '/ee_pose'
    gripper_topic: str = ''
    rate: float = 5.0
    max_image_age: float = 0.5

    def topics(self):
        """Return {role: topic} of every topic read from a bag."""
        default = 'camera/image_raw/compressed' if self.compressed else 'camera/image_raw'
        roles = {'image': topic_name(self.image_topic or default)}
        if not self.instruction:
            roles['instruction'] = topic_name(self.instruction_topic)
        if self.reference == 'action':
            roles['action'] = topic_name(self.action_topic)
        elif self.reference == 'ee_pose':
            roles['ee_pose'] = topic_name(self.ee_pose_topic)
            roles['gripper'] = topic_name(self.gripper_topic)
        return roles


def check_bag(bag, options):
    """Raise ``EvalError`` unless an opened ``bag`` has every topic ``options`` need."""
    topics = options.topics()
    image_type = COMPRESSED_IMAGE if options.compressed else IMAGE
    bag.require(topics['image'], (image_type,), 'image', '--image-topic T (and --compressed for '
                'sensor_msgs/msg/CompressedImage)')
    if 'instruction' in topics:
        topic = topics['instruction']
        if bag.topics.get(topic, (None, 0))[1] == 0:
            raise EvalError(f'bag {str(bag.path)!r} has no instruction: topic {topic} is '
                            f'{"empty" if topic in bag.topics else "not in it"} (topics: '
                            f'{bag.describe_topics()}); pass --instruction TEXT or '
                            '--instruction-topic T')
        bag.require(topic, (STRING,), 'instruction', '--instruction-topic T or --instruction TEXT')
    if 'action' in topics:
        bag.require(topics['action'], (FLOAT64_MULTI_ARRAY,), 'reference action',
                    '--action-topic T, or --reference ee_pose / none')
    if 'ee_pose' in topics:
        bag.require(topics['ee_pose'], (POSE_STAMPED,), 'ee_pose', '--ee-pose-topic T')
        bag.require(topics['gripper'], (FLOAT64,), 'gripper state', '--gripper-topic T')


@dataclasses.dataclass
class BagResult:
    """Everything vla_eval learned from one bag, one row per control step."""

    name: str
    path: str
    storage: str
    time_ns: np.ndarray  # int64 (K,), bag log time of each step
    image_log_ns: np.ndarray  # int64 (K,)
    image_stamp_ns: np.ndarray  # int64 (K,), header stamp of the step's image
    status: list  # (K,) 'ready' (predicted), 'idle', 'stale', 'future', 'bad_image'
    instruction: list  # (K,) str
    predicted: np.ndarray  # float64 (K, 7); NaN rows where nothing was predicted
    valid: np.ndarray  # bool (K,)
    token_ids: np.ndarray  # int64 (K, 7); -1 where nothing was predicted
    latency_s: np.ndarray  # float64 (K,); NaN where nothing was predicted
    reference: np.ndarray  # float64 (K, 7); NaN rows where there is no reference
    bad_instructions: int = 0

    @property
    def predicted_mask(self):
        return np.array([s == 'ready' for s in self.status], dtype=bool)

    def counts(self):
        """Return the step counts by status, plus invalid actions and missing references."""
        mask = self.predicted_mask
        ok = mask & self.valid
        counts = {'steps': len(self.status), 'predicted': int(mask.sum()),
                  'invalid': int(mask.sum() - ok.sum()),
                  'no_reference': int((ok & ~np.all(np.isfinite(self.reference), axis=1)).sum()),
                  'bad_instructions': int(self.bad_instructions)}
        for status in ('idle', 'stale', 'future', 'bad_image'):
            counts[status] = self.status.count(status)
        return counts

    def metric_inputs(self):
        """Return (predicted, reference, valid, latency_s) of the predicted steps."""
        mask = self.predicted_mask
        return self.predicted[mask], self.reference[mask], self.valid[mask], self.latency_s[mask]

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
                  'predicted': np.float64, 'valid': bool, 'token_ids': np.int64,
                  'latency_s': np.float64, 'reference': np.float64}
        for name, dtype in dtypes.items():
            data[name] = np.asarray(data[name], dtype=dtype)
        for name in ('predicted', 'token_ids', 'reference'):
            data[name] = data[name].reshape(-1, ACTION_DIM)
        return cls(**data)


def evaluate_bag(path, policy, unnorm_key, options, name=None, progress=True, desc=None,
                 background=True):
    """
    Run ``policy`` on every control step of the bag at ``path``; return a ``BagResult``.

    ``policy`` is an ``OpenVLAPolicy`` (or anything with the same ``predict``); ``unnorm_key``
    must be resolved already. ``background``: read the bag on a thread ahead of ``predict``.
    Raises ``EvalError`` for bad input.
    """
    path = Path(path)
    with Bag(path) as bag:
        check_bag(bag, options)
        storage = bag.storage
        estimate = int((bag.end_ns - bag.start_ns) * options.rate / 1e9) + 1
    topics = options.topics()
    state = {}

    def produce():
        with Bag(path) as bag:
            reader = StepReader(bag, topics, options.rate, compressed=options.compressed,
                                instruction=options.instruction or None,
                                max_image_age=options.max_image_age)
            yield from reader
            state['streams'] = reader.streams

    rows = []
    bar = tqdm(total=estimate, desc=desc or name or path.name, unit='step', disable=None,
               leave=False) if progress else None
    try:
        for step in prefetch(produce()) if background else produce():
            row = {'step': step}
            if step.status == 'ready':
                start = time.perf_counter()
                action = policy.predict(step.rgb, step.instruction, unnorm_key=unnorm_key)
                row['latency'] = time.perf_counter() - start
                row['action'] = action
                step.rgb = None  # keep one frame in memory, not one per step
            rows.append(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return _result(name or path.name, path, storage, rows, state['streams'], options)


def _result(name, path, storage, rows, streams, options):
    k = len(rows)
    predicted = np.full((k, ACTION_DIM), np.nan)
    token_ids = np.full((k, ACTION_DIM), -1, dtype=np.int64)
    valid = np.zeros(k, dtype=bool)
    latency = np.full(k, np.nan)
    for i, row in enumerate(rows):
        action = row.get('action')
        if action is None:
            continue
        values = np.asarray(action.values, dtype=np.float64).reshape(ACTION_DIM)
        predicted[i] = values
        token_ids[i] = np.asarray(action.token_ids, dtype=np.int64).reshape(-1)[:ACTION_DIM]
        valid[i] = bool(action.valid) and bool(np.all(np.isfinite(values)))
        latency[i] = row['latency']
    steps = [row['step'] for row in rows]
    time_ns = np.array([s.time_ns for s in steps], dtype=np.int64)
    image_log_ns = np.array([s.image_log_ns for s in steps], dtype=np.int64)
    arrays = as_arrays(streams)
    if options.reference == 'action' and k:
        t0 = int(time_ns[0])
        next_ns = np.array([step_time(t0, s.index + 1, options.rate) for s in steps], np.int64)
        reference = references.recorded_actions(image_log_ns, next_ns, *arrays['action'])
    elif options.reference == 'ee_pose' and k:
        reference = references.relabel_ee_pose(time_ns, *arrays['ee_pose'], *arrays['gripper'])
    else:
        reference = np.full((k, ACTION_DIM), np.nan)
    return BagResult(
        name=name, path=str(path), storage=storage, time_ns=time_ns, image_log_ns=image_log_ns,
        image_stamp_ns=np.array([s.image_stamp_ns for s in steps], dtype=np.int64),
        status=[s.status for s in steps], instruction=[s.instruction for s in steps],
        predicted=predicted, valid=valid, token_ids=token_ids, latency_s=latency,
        reference=reference, bad_instructions=streams.bad_instructions)


class _Failure:
    def __init__(self, exc):
        self.exc = exc


_END = object()


def prefetch(iterable, depth=2):
    """
    Yield the items of ``iterable`` while a background thread produces up to ``depth`` ahead.

    An exception in the producer is raised here; leaving early stops the producer.
    """
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as exc:  # noqa: B902 - handed to the consumer, which re-raises it
            put(_Failure(exc))
            return
        finally:
            close = getattr(iterable, 'close', None)
            if close is not None:
                close()  # on this thread: a sqlite3 connection lives on the thread that opened it
        put(_END)

    thread = threading.Thread(target=run, name='vla_eval_reader', daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
