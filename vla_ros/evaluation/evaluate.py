"""
Evaluate one bag: every control step decided by the node's ``ControlCore``, predicted by ``infer``.

``evaluate_bag(path, policy, unnorm_key, options)`` feeds the bag's instructions and steps (see
``steps``) to a ``ControlCore`` on bag log time, exactly as ``vla_node`` feeds its own: the core
says what each step does (idle, stale, future, predict, or emit the next queued action of a
chunk), ``vla_ros.control.core.infer`` predicts, and ``commit`` emits. Offline results therefore
equal live ones by construction, including what the live node would skip; the one difference
is that offline the model is never ``busy`` (every step it would act on is predicted).

It returns a ``BagResult``: per step its time, image, instruction, status, predicted action,
validity, latency and reference action. Reading, deserialising and decoding frames runs on a
background thread one step ahead of ``predict`` (``prefetch``), so the model never waits on the
bag. ``check_bag`` validates a bag's topics and size without reading its messages; the command
line calls it for every bag before loading a model.
"""

import dataclasses
import json
from pathlib import Path
import queue
import threading

import numpy as np
from tqdm import tqdm

from vla_ros.control.core import ControlCore, Frame, infer
from vla_ros.control.formats import ACTION_DIM
from vla_ros.evaluation import reference as references
from vla_ros.evaluation.bags import (Bag, COMPRESSED_IMAGE, EvalError, FLOAT64,
                                     FLOAT64_MULTI_ARRAY, IMAGE, POSE_STAMPED, STRING, topic_name)
from vla_ros.evaluation.steps import as_arrays, Instruction, MAX_STEPS, step_time, StepReader

REFERENCES = ('action', 'ee_pose', 'none')
# What a step did: predicted ('ready', valid or not), emitted a queued chunk action ('queued'),
# or why not. 'bad_image': the frame was refused by the node's decoder.
STATUSES = ('ready', 'queued', 'idle', 'stale', 'future', 'bad_image')


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


def step_count(bag, rate):
    """Return the most steps a bag can have at ``rate``: its log-time span x rate, plus one."""
    return int((bag.end_ns - bag.start_ns) * rate / 1e9) + 1


def check_bag(bag, options):
    """Raise ``EvalError`` unless an opened ``bag`` has every topic ``options`` need."""
    steps = step_count(bag, options.rate)
    if steps > MAX_STEPS:
        raise EvalError(f'bag {str(bag.path)!r} spans {(bag.end_ns - bag.start_ns) * 1e-9:.3f} s '
                        f'of log time: at --rate {options.rate:g} Hz that is {steps:.3g} steps, '
                        f'more than the {MAX_STEPS} vla_eval evaluates per bag; pass the control '
                        'rate of the node (e.g. --rate 5), or split the bag')
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
    status: list  # (K,) one of STATUSES
    instruction: list  # (K,) str
    predicted: np.ndarray  # float64 (K, 7); NaN rows where nothing was predicted
    valid: np.ndarray  # bool (K,)
    token_ids: np.ndarray  # int64 (K, 7); -1 where nothing was predicted
    latency_s: np.ndarray  # float64 (K,); NaN where nothing was predicted
    reference: np.ndarray  # float64 (K, 7); NaN rows where there is no reference
    bad_instructions: int = 0
    bad_image_reason: str = ''  # why the first refused frame was refused
    reference_messages: int = 0  # messages on the reference topic(s)

    @property
    def predicted_mask(self):
        """Return the steps with an action: predicted, or the next action of a queued chunk."""
        return np.array([s in ('ready', 'queued') for s in self.status], dtype=bool)

    def counts(self):
        """Return the step counts by status, plus invalid actions and missing references."""
        mask = self.predicted_mask
        ok = mask & self.valid
        counts = {'steps': len(self.status), 'predicted': int(mask.sum()),
                  'invalid': int(mask.sum() - ok.sum()),
                  'no_reference': int((ok & ~np.all(np.isfinite(self.reference), axis=1)).sum()),
                  'bad_instructions': int(self.bad_instructions)}
        for status in STATUSES[1:]:
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
    Run ``policy`` on the control steps of the bag at ``path``; return a ``BagResult``.

    ``policy`` is an ``OpenVLAPolicy`` (or anything with the same ``predict``); ``unnorm_key``
    must be resolved already. ``background``: read the bag on a thread ahead of ``predict``.
    Raises ``EvalError`` for bad input.
    """
    path = Path(path)
    with Bag(path) as bag:
        check_bag(bag, options)
        storage = bag.storage
        estimate = step_count(bag, options.rate)
    topics = options.topics()
    state = {}

    def produce():
        with Bag(path) as bag:
            reader = StepReader(bag, topics, options.rate, compressed=options.compressed)
            yield from reader
            state['streams'] = reader.streams

    emitted = []
    core = ControlCore(emitted.append, max_image_age=options.max_image_age or None)
    bad_instructions = 0
    if options.instruction:
        core.set_instruction(options.instruction)
    rows = []
    bar = tqdm(total=estimate, desc=desc or name or path.name, unit='step', disable=None,
               leave=False) if progress else None
    try:
        for event in prefetch(produce()) if background else produce():
            if isinstance(event, Instruction):
                if not options.instruction:
                    update = (core.refuse_instruction(event.refused) if event.refused
                              else core.set_instruction(event.text))
                    bad_instructions += bool(update.refused)
                continue
            rows.append(_step(core, emitted, event, policy, unnorm_key))
            event.rgb = None  # keep one frame in memory, not one per step
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return _result(name or path.name, path, storage, rows, state['streams'], options,
                   bad_instructions)


def _step(core, emitted, step, policy, unnorm_key):
    """One tick of the core at the step's time; return the step's record."""
    emitted.clear()
    frame = Frame(step, step.image_stamp_ns * 1e-9)
    tick = core.tick(step.time_ns * 1e-9, frame)
    row = {'step': step, 'status': tick.verdict, 'instruction': core.instruction}
    if tick.verdict == 'queued':
        row['values'] = tick.emitted.values
    elif tick.verdict == 'ready':
        prediction = infer(policy, tick.ticket, step.decode, unnorm_key)
        if prediction.status == 'bad_image':
            row['status'], row['detail'] = 'bad_image', prediction.detail
            return row
        row['result'], row['latency'] = prediction.result, prediction.latency_s
        row['values'] = np.asarray(prediction.result.values, dtype=np.float64)
        row['valid'] = prediction.status == 'ok'
        if row['valid'] and core.commit(tick.ticket, prediction.rows):
            row['values'] = emitted[-1].values
    return row


def _result(name, path, storage, rows, streams, options, bad_instructions):
    k = len(rows)
    predicted = np.full((k, ACTION_DIM), np.nan)
    token_ids = np.full((k, ACTION_DIM), -1, dtype=np.int64)
    valid = np.zeros(k, dtype=bool)
    latency = np.full(k, np.nan)
    for i, row in enumerate(rows):
        if 'values' not in row:
            continue
        predicted[i] = np.asarray(row['values'], dtype=np.float64).reshape(-1)[:ACTION_DIM]
        valid[i] = row.get('valid', True)
        if 'result' in row:
            ids = np.asarray(row['result'].token_ids, dtype=np.int64).reshape(-1)[:ACTION_DIM]
            token_ids[i, :ids.size] = ids
            latency[i] = row['latency']
    steps = [row['step'] for row in rows]
    time_ns = np.array([s.time_ns for s in steps], dtype=np.int64)
    image_log_ns = np.array([s.image_log_ns for s in steps], dtype=np.int64)
    arrays = as_arrays(streams)
    messages = {'action': len(streams.action_times), 'none': 0,
                'ee_pose': len(streams.pose_times) + len(streams.gripper_times)}
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
        status=[row['status'] for row in rows], instruction=[row['instruction'] for row in rows],
        predicted=predicted, valid=valid, token_ids=token_ids, latency_s=latency,
        reference=reference, bad_instructions=bad_instructions,
        reference_messages=messages[options.reference],
        bad_image_reason=next((row['detail'] for row in rows if 'detail' in row), ''))


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
