"""
Evaluate one bag: every control step decided by the node's ``ControlCore``, predicted by ``infer``.

``evaluate_bag(path, policy, unnorm_key, options)`` feeds the bag's instructions and steps (see
``steps``) to a ``ControlCore`` on bag log time, configured as ``vla_node`` configures its own
(control period, chunk mode, executed steps, ensemble decay, image age, camera skew, state age):
the core says what each step does (idle, stale, skewed, bad state, predict, or publish the next
row of a chunk), ``vla_ros.control.core.infer`` predicts from the step's observation (every
camera's newest frame and the state), and ``commit`` emits the chunk and the action. Offline
results therefore equal live ones by construction, including what the live node would skip.

The one difference, by design: offline the model takes no time. It is never ``busy``, and each
prediction is committed at the time of the step that asked for it (latency 0), so a chunk's row
0 is for that step, or for the next one when that step already published a row of an older
chunk (``chunks.py``). A live node whose model needs longer than a control period skips ticks
and trims the rows whose step passed while it worked; replaying a bag live reproduces vla_eval
only when every prediction is committed before the next tick (``test_eval_chunks``).

It returns a ``BagResult`` (``results``). Reading, deserialising and decoding frames and
assembling the state runs on a background thread one step ahead of ``predict``
(``prefetch``), so the model never waits on the bag. ``check_bag`` validates a bag's topics and
size without reading its messages (``options``); the command line calls it for every bag before
loading a model, and ``check_policy`` once the model is loaded, and hands each bag it opened to
``evaluate_bag``, so every bag is opened once.
"""

from pathlib import Path
import queue
import threading

import numpy as np
from tqdm import tqdm

from vla_ros.control.core import ControlCore, infer
from vla_ros.evaluation import reference as references
from vla_ros.evaluation.options import (check_bag, check_policy, EvalError, EvalOptions,
                                        REFERENCES, step_count)
from vla_ros.evaluation.results import BagResult, STATUSES
from vla_ros.recordings.actions import recorded_actions
from vla_ros.recordings.bags import Bag
from vla_ros.recordings.steps import as_arrays, decode_frame, Instruction, step_time, StepReader

__all__ = ['BagResult', 'check_bag', 'check_policy', 'EvalError', 'EvalOptions', 'evaluate_bag',
           'prefetch', 'REFERENCES', 'STATUSES', 'step_count']


def make_core(options, emit):
    """Return the ``ControlCore`` vla_node would run with these options, emitting to ``emit``."""
    return ControlCore(emit, max_image_age=options.max_image_age or None,
                       period=1.0 / options.rate, chunk_mode=options.chunk_mode,
                       execute_steps=options.execute_steps,
                       ensemble_decay=options.ensemble_decay,
                       max_camera_skew=options.max_camera_skew,
                       max_proprio_age=options.max_proprio_age or None)


def evaluate_bag(bag, policy, unnorm_key, options, name=None, progress=True, desc=None,
                 background=True):
    """
    Run ``policy`` on the control steps of ``bag``; return a ``BagResult``.

    ``bag``: an opened ``recordings.bags.Bag`` (left open), or its path (opened here, once).
    ``policy`` is an ``OpenVLAPolicy`` or ``OpenVLAOFTPolicy`` (or anything with the same
    ``predict``); ``unnorm_key`` must be resolved already. ``background``: read the bag on a
    thread ahead of ``predict``. Raises ``EvalError`` or ``RecordingError`` for bad input.
    """
    check_policy(policy, options)
    if not isinstance(bag, Bag):
        with Bag(Path(bag)) as opened:
            return evaluate_bag(opened, policy, unnorm_key, options, name, progress, desc,
                                background)
    check_bag(bag, options)
    path = Path(bag.path)
    cameras, topics, layout = options.cameras(), options.topics(), options.layout()
    state = {}

    def produce():
        reader = StepReader(bag, cameras, topics, options.rate, compressed=options.compressed,
                            layout=layout, max_skew=options.max_camera_skew,
                            pose_frame=options.action_frame)
        yield from reader
        state['streams'] = reader.streams

    emitted = []
    core = make_core(options, emitted.append)
    bad_instructions = 0
    if options.instruction:
        core.set_instruction(options.instruction)
    rows = []
    bar = tqdm(total=step_count(bag, options.rate), desc=desc or name or path.name, unit='step',
               disable=None, leave=False) if progress else None
    events = prefetch(produce()) if background else produce()
    try:
        for event in events:
            if isinstance(event, Instruction):
                if not options.instruction:
                    update = (core.refuse_instruction(event.refused) if event.refused
                              else core.set_instruction(event.text))
                    bad_instructions += bool(update.refused)
                continue
            rows.append(_step(core, emitted, event, policy, unnorm_key, bool(layout),
                              options.rate))
            if bar is not None:
                bar.update(1)
    finally:
        events.close()  # the reader stops before the bag may close
        if bar is not None:
            bar.close()
    return _result(name or path.name, path, bag.storage, rows, state['streams'], options,
                   bad_instructions, policy.chunk_len, policy.action_dim)


def _step(core, emitted, step, policy, unnorm_key, needs_state, rate):
    """One tick of the core at the step's time (and the commit, latency 0); return its record."""
    emitted.clear()
    now = step.time_ns * 1e-9
    tick = core.tick(now, step.observation(needs_state))
    row = {'step': (step.index, step.time_ns, step.image_log_ns, step.image_stamp_ns),
           'status': tick.verdict, 'instruction': core.instruction, 'detail': tick.detail}
    if tick.verdict == 'ready':
        prediction = infer(policy, tick.ticket, decode_frame, unnorm_key)
        if prediction.status == 'bad_image':
            row['status'], row['detail'] = 'bad_image', prediction.detail
        else:
            row['result'], row['latency'] = prediction.result, prediction.latency_s
            row['invalid'] = prediction.status != 'ok'
            values = np.asarray(prediction.result.values, dtype=np.float64)
            row['prediction'] = values.reshape(-1)[:policy.action_dim]
            if not row['invalid'] and core.commit(tick.ticket, prediction.rows, now):
                offset = int(round((tick.ticket.start_s - tick.ticket.time_s) * rate))
                chunk = next(e for e in emitted if e.kind == 'chunk')
                row['chunk'] = (np.asarray(chunk.values, dtype=np.float64), offset)
    actions = [e for e in emitted if e.kind == 'action']
    if actions:
        row['action'] = np.asarray(actions[-1].values, dtype=np.float64)
        row['action_stamp_ns'] = actions[-1].source.frames[0].msg.stamp_ns
    return row


def _result(name, path, storage, rows, streams, options, bad_instructions, chunk_len, dim):
    k = len(rows)
    predicted = np.full((k, dim), np.nan)
    token_ids = np.full((k, dim), -1, dtype=np.int64)
    valid = np.zeros(k, dtype=bool)
    action_stamp_ns = np.full(k, -1, dtype=np.int64)
    latency = np.full(k, np.nan)
    chunks, chunk_step, chunk_start = [], [], []
    reasons = {}
    for i, row in enumerate(rows):
        if row['detail'] and row['status'] not in reasons:
            reasons[row['status']] = row['detail']
        if 'result' in row:
            ids = np.asarray(row['result'].token_ids, dtype=np.int64).reshape(-1)[:dim]
            token_ids[i, :ids.size] = ids
            latency[i] = row['latency']
            predicted[i] = row['prediction']
        if 'action' in row:
            predicted[i] = row['action'][:dim]
            valid[i] = True
            action_stamp_ns[i] = row['action_stamp_ns']
        if 'chunk' in row:
            values, offset = row['chunk']
            chunks.append(values)
            chunk_step.append(i)
            chunk_start.append(i + offset)
    if chunks:
        chunk_len = chunks[0].shape[0]
    steps = [row['step'] for row in rows]
    time_ns = np.array([s[1] for s in steps], dtype=np.int64)
    image_log_ns = np.array([s[2] for s in steps], dtype=np.int64)
    arrays = as_arrays(streams, dim)
    messages = {'action': len(streams.action_times), 'none': 0,
                'ee_pose': len(streams.pose_times) + len(streams.gripper_times)}
    if options.reference == 'action' and k:
        t0 = int(time_ns[0])
        next_ns = np.array([step_time(t0, s[0] + 1, options.rate) for s in steps], np.int64)
        if arrays['action'][1].shape[1] != dim:
            raise EvalError(f"bag {str(path)!r} records {arrays['action'][1].shape[1]}-D actions "
                            f"on {options.topics()['action']}, the policy predicts {dim}-D "
                            'ones: pass a policy of that action space, or --reference none')
        reference = recorded_actions(image_log_ns, next_ns, *arrays['action'], dim=dim)
    elif options.reference == 'ee_pose' and k:
        reference = references.relabel_ee_pose(time_ns, *arrays['ee_pose'], *arrays['gripper'])
    else:
        reference = np.full((k, dim), np.nan)
    return BagResult(
        name=name, path=str(path), storage=storage, time_ns=time_ns, image_log_ns=image_log_ns,
        image_stamp_ns=np.array([s[3] for s in steps], dtype=np.int64),
        action_stamp_ns=action_stamp_ns,
        status=[row['status'] for row in rows], instruction=[row['instruction'] for row in rows],
        predicted=predicted, valid=valid, token_ids=token_ids, latency_s=latency,
        reference=reference,
        chunks=np.asarray(chunks, dtype=np.float64).reshape(len(chunks), chunk_len, dim),
        chunk_step=np.asarray(chunk_step, dtype=np.int64),
        chunk_start=np.asarray(chunk_start, dtype=np.int64), chunk_len=int(chunk_len),
        invalid_predictions=sum(bool(row.get('invalid')) for row in rows),
        bad_instructions=bad_instructions, reference_messages=messages[options.reference],
        bad_image_reason=reasons.get('bad_image', ''), reasons=reasons)


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
                close()  # on this thread, the one that runs the iterable
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
