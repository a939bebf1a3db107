"""
Training samples from rosbag2 recordings, with vla_eval's step semantics and the policy's inputs.

A bag is read once (``read_episode``) through ``vla_ros.recordings``' ``Bag`` and
``StepReader``: steps at ``rate`` on bag log time from the primary camera's first frame, each
with the newest frame of every camera and the newest ``ee_pose`` / ``joint_states`` logged at or
before it (the state read by vla_node's ``StateLayout.read``), and the newest instruction. Each
step's action is the recorded ``vla/action`` vla_eval pairs with it: the first one logged in [its
primary image's log time, the next step's time) that is not an earlier step's or logged with a
newer image (``recordings.actions``), so each recorded action is the target of at most one step.

A step is a training sample when it has an instruction, a frame of every camera (decoded), a
state (when a layout is given) and an action. Its target chunk is the action of that step and of
the next ``chunk_len - 1`` steps; past the bag's last step, or at a step without an action, the
row before it is repeated (OFT pads the end of a trajectory by repeating its last action).

Inputs are what ``OpenVLAOFTPolicy.inputs`` makes of the same frames, instruction and state,
computed on the CPU by the same processor (``oft.processing.OFTProcessor``: frame crops, pixel
values, prompt ids, the token layout) and ``Bounds.normalize``, so training sees what inference
sees.
``prepare_image`` (OFT's JPEG round trip and TensorFlow resize, ~8 ms a frame) runs once per frame:
each frame's crops (uint8 (K, 224, 224, 3)) are kept, and a sample only looks them up. With
``--image-aug`` the training bags keep each frame as OFT prepares it before the center crop
(uint8 (224, 224, 3): the same 150 528 bytes as one crop), and every draw of a sample augments
its frames anew (``augment``) before the processor's crops and normalisation; validation bags
keep their crops, so their inputs stay the policy's.

With ``--aux-object`` each training step also carries where the named object is: the
``object_position`` of the newest ``sim/task`` (sim_arm's episode status, which
``vla_record_demos`` records) logged at or before it, the target of the auxiliary head
(``model.TrainModel``); a step before the first status has none (NaN, left out of that loss).
"""

import collections
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from vla_ros.control.action_layout import ACTION_LABEL
from vla_ros.control.core import MAX_INSTRUCTION_CHARS
from vla_ros.policy.oft.configuration import Bounds
from vla_ros.policy.oft.processing import OFTProcessor, token_layout
from vla_ros.recordings.actions import recorded_actions
from vla_ros.recordings.bags import Bag, STRING, topic_name
from vla_ros.recordings.options import check_bag
from vla_ros.recordings.steps import Instruction, step_time, StepReader
from vla_ros.training import augment
from vla_ros.training.options import FinetuneError

# A step whose recorded action or state holds NaN or inf is no sample, counted under its reason
# (``Episode.skipped``) so that vla_finetune reports how many it dropped.
NON_FINITE_ACTION = 'NaN or inf in the recorded action'
NON_FINITE_STATE = 'NaN or inf in the state'
SIM_TASK = topic_name('sim/task')  # sim_arm's episode status: the named object's position


def check_bags(paths, options, action_dim, object_paths=()):
    """
    Raise ``RecordingError`` / ``FinetuneError`` unless every bag has what training reads.

    The data's ``check_bag`` (cameras, instruction, recorded actions, state topics and joints),
    the size of the first recorded action against ``action_dim``, and ``sim/task`` in the bags
    of ``object_paths`` (``--aux-object``'s training bags).
    Reads at most a message or two per bag; no model is needed. Returns notes (one line each)
    on bags whose actions were recorded at a rate far from ``options.rate``.
    """
    topic = options.topics()['action']
    notes = []
    object_paths = set(object_paths)
    for path in paths:
        with Bag(Path(path)) as bag:
            check_bag(bag, options)
            if path in object_paths:
                check_object_topic(bag, path)
            messages = bag.messages([topic])
            try:
                _, _, msg = next(messages)
            finally:
                messages.close()
            dims = list(msg.layout.dim)
            label = dims[0].label if dims else ''
            size = len(msg.data) - int(msg.layout.data_offset)
            if label and label != ACTION_LABEL and len(label.split()) != size:
                raise FinetuneError(f'bag {str(path)!r}: {topic} has layout label {label!r}, '
                                    f'not the vla/action label {ACTION_LABEL!r} nor one joint '
                                    f'entry per value ({size}); pass the --action-topic of the '
                                    'recorded vla/action')
            if size != action_dim:
                raise FinetuneError(
                    f'bag {str(path)!r} records {size}-D actions on {topic} (label '
                    f'{label!r}), but the platform predicts {action_dim}-D actions; pass the '
                    '--platform the bags were recorded for (libero, bridge: 7-D end-effector '
                    'deltas; aloha: 14 joint positions), or record vla/action as vla_node '
                    'publishes it')
            span = (bag.end_ns - bag.start_ns) * 1e-9
            recorded = bag.topics[topic][1] / span if span > 0 else options.rate
            if not 0.67 < recorded / options.rate < 1.5:
                notes.append(f'bag {str(path)!r} has about {recorded:.3g} actions per second on '
                             f'{topic}, but --rate is {options.rate:g} Hz: each step takes one '
                             'recorded action, so pass the rate they were recorded at')
    return notes


def check_object_topic(bag, path):
    """Raise ``FinetuneError`` unless ``bag`` (at ``path``) records ``sim/task``."""
    msgtype, count = bag.topics.get(SIM_TASK, (None, 0))
    if msgtype != STRING or not count:
        raise FinetuneError(
            f'--aux-object: bag {str(path)!r} has no {SIM_TASK} ({STRING}: '
            "sim_arm's episode status, which holds the named object's position); use "
            "--aux-object only on the simulator's recordings (vla_record_demos), or "
            'leave it out')


def object_positions(bag, times_ns):
    """
    Return (S, 3) float64: the newest ``sim/task`` ``object_position`` at or before each time.

    NaN before the first status, and where that status has no usable position.
    """
    logged, values = [], []
    for _, log_ns, msg in bag.messages([SIM_TASK]):
        try:
            value = np.asarray(json.loads(msg.data)['object_position'], dtype=np.float64)
        except (ValueError, KeyError, TypeError):
            value = np.full(3, np.nan)
        logged.append(log_ns)
        values.append(value if value.shape == (3,) else np.full(3, np.nan))
    out = np.full((len(times_ns), 3), np.nan)
    if logged:
        index = np.searchsorted(np.asarray(logged, dtype=np.int64),
                                np.asarray(times_ns, dtype=np.int64), side='right') - 1
        found = index >= 0
        out[found] = np.asarray(values)[index[found]]
    return out


# The policy's input pipeline on the CPU, split where a frame's cost can be cached.
Preprocessor = OFTProcessor


@dataclasses.dataclass
class Episode:
    """One bag read for training: per step its action, state, instruction and frames."""

    path: str
    actions: np.ndarray  # (S, 7) float64, NaN where the step has no recorded action
    proprio: np.ndarray  # (S, P) float64, NaN where there is no state
    instructions: list  # (S,) str, '' without one
    frame_keys: list  # (S,) tuple of (camera, frame index) per camera, or None
    usable: np.ndarray  # (S,) bool: the step is a sample
    frames: dict  # (camera, frame index) -> uint8 crops (K, 224, 224, 3), or (224, 224, 3)
    skipped: dict  # reason -> number of steps
    objects: np.ndarray = None  # (S, 3) float64: the named object's position (``--aux-object``)

    @property
    def samples(self):
        """Return the indices of the steps that are samples."""
        return np.flatnonzero(self.usable)

    def chunk(self, step, length):
        """Return the target chunk of ``step`` (length, D): its action and the next ones."""
        rows = [self.actions[step]]
        for k in range(step + 1, step + length):
            ok = k < len(self.actions) and np.all(np.isfinite(self.actions[k]))
            rows.append(self.actions[k] if ok else rows[-1])
        return np.stack(rows)


def read_episode(path, options, preprocessor=None, uncropped=False, objects=False):
    """
    Read one bag into an ``Episode`` (see the module docstring).

    Without a ``preprocessor`` no frame is preprocessed (the statistics need none). With
    ``uncropped`` each frame is kept as OFT prepares it before any crop (``--image-aug``); with
    ``objects`` each step's named-object position is read too (``--aux-object``).
    """
    cameras, topics, layout = options.cameras(), options.topics(), options.layout()
    instruction = ''
    steps, frames = [], {}
    skipped = collections.Counter()
    with Bag(Path(path)) as bag:
        reader = StepReader(bag, cameras, topics, options.rate, compressed=options.compressed,
                            layout=layout, max_skew=options.max_camera_skew,
                            pose_frame=options.action_frame)
        for event in reader:
            if isinstance(event, Instruction):  # as the control core takes it
                refused = event.refused or len(event.text) > MAX_INSTRUCTION_CHARS
                instruction = '' if refused else event.text.strip()
                continue
            keys, problem = [], ''
            for camera, frame in enumerate(event.frames):
                if frame is None:
                    problem = f'no frame on {cameras[camera]} yet'
                elif frame.error is not None:
                    problem = f'refused frame on {cameras[camera]}'
                else:
                    key = (camera, frame.index)
                    if preprocessor is not None and key not in frames:
                        frames[key] = preprocessor.prepared_frame(frame.rgb, camera) \
                            if uncropped else preprocessor.frame_crops(frame.rgb, camera)
                    keys.append(key)
            state = np.full(layout.dim, np.nan)
            if layout and not problem:
                if event.state is None or event.state.problem:
                    assembled = event.state is not None and event.state.values is not None
                    problem = NON_FINITE_STATE if assembled else 'no usable state'

                else:
                    state = np.asarray(event.state.values, dtype=np.float64)
            if not instruction and not problem:
                problem = 'no instruction'
            steps.append((event.index, event.time_ns, event.image_log_ns, instruction,
                          None if problem else tuple(keys), state, problem))
        streams = reader.streams
        positions = object_positions(bag, [s[1] for s in steps]) if objects else None
    actions = np.full((len(steps), len(streams.actions[0]) if streams.actions else 7), np.nan)
    if steps:
        t0 = steps[0][1]
        next_ns = [step_time(t0, s[0] + 1, options.rate) for s in steps]
        actions = recorded_actions([s[2] for s in steps], next_ns, streams.action_times,
                                   streams.actions)
    usable = np.zeros(len(steps), dtype=bool)
    for k, step in enumerate(steps):
        problem = step[6] or ('' if np.all(np.isfinite(actions[k])) else 'no recorded action'
                              if np.all(np.isnan(actions[k])) else NON_FINITE_ACTION)
        usable[k] = not problem
        if problem:
            skipped[problem] += 1
    keys = [s[4] for s in steps]
    used = {key for k in np.flatnonzero(usable) for key in keys[k]}
    frames = {key: crops for key, crops in frames.items() if key in used}  # samples' only
    proprio = np.array([s[5] for s in steps], dtype=np.float64).reshape(len(steps), layout.dim)
    return Episode(str(path), actions, proprio, [s[3] for s in steps], keys, usable, frames,
                   dict(skipped), positions)


def object_standardisation(episodes):
    """Return (mean, std) (3,) of the named object's known positions over the samples."""
    positions = np.concatenate([e.objects[e.usable] for e in episodes])
    positions = positions[np.all(np.isfinite(positions), axis=1)]
    if not len(positions):
        raise FinetuneError("--aux-object: no training sample has the named object's position "
                            '(sim/task object_position); leave --aux-object out')
    return positions.mean(axis=0), np.maximum(positions.std(axis=0), 1e-3)


def sample_arrays(episodes):
    """Return (actions (N, D), proprio (N, P)) of every sample of ``episodes``, in order."""
    actions = np.concatenate([e.actions[e.usable] for e in episodes])
    proprio = np.concatenate([e.proprio[e.usable] for e in episodes])
    return actions, proprio


class ChunkDataset(torch.utils.data.Dataset):
    """
    The samples of ``episodes`` as the policy's inputs and normalised target chunks.

    ``stats``: the new ``dataset_statistics.json`` entry; ``normalize`` turns raw actions into
    the head's targets (``stats.normalize_actions``). ``aug_seed``: augment every draw
    (``augment``, from the seed, the epoch (``set_epoch``) and the sample); the episodes are then
    read ``uncropped``. ``objects``: (mean, std) of the named object's position: each sample
    carries it standardised (``object_position``, NaN where unknown; episodes read with
    ``objects``).
    """

    def __init__(self, episodes, preprocessor, stats, normalize, aug_seed=None, objects=None):
        self.episodes = episodes
        self.objects = objects
        self.aug_seed, self.epoch = aug_seed, 0
        self.preprocessor = preprocessor
        constants = preprocessor.constants
        self.chunk_len = constants.chunk_len
        self.index = [(e, int(k)) for e, episode in enumerate(episodes) for k in episode.samples]
        self.proprio_bounds = None
        if constants.proprio_dim and 'proprio' in stats:
            self.proprio_bounds = Bounds.from_stats(stats['proprio'], constants.normalization,
                                                    'the new statistics')
        self.stats = stats
        self.normalize = normalize

    def __len__(self):
        return len(self.index)

    def set_epoch(self, epoch):
        """Draw the augmentation of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __getitem__(self, i):
        e, k = self.index[i]
        episode = self.episodes[e]
        crops = [episode.frames[key] for key in episode.frame_keys[k]]
        if self.aug_seed is not None:
            frames = augment.augment(torch.from_numpy(np.stack(crops)),  # (N, 224, 224, 3)
                                     augment.rng(self.aug_seed, self.epoch, i)).numpy()
            crops = [self.preprocessor.image_processor.crops(frame) for frame in frames]
        sample = {'pixel_values': self.preprocessor.pixel_values(crops)[0],  # (6N, 224, 224)
                  'prompt_ids': self.preprocessor.prompt_ids(episode.instructions[k]),
                  'actions': torch.tensor(self.normalize(episode.chunk(k, self.chunk_len),
                                                         self.stats), dtype=torch.float32)}
        if self.proprio_bounds is not None:
            sample['proprio'] = torch.tensor(self.proprio_bounds.normalize(episode.proprio[k]),
                                             dtype=torch.float32)  # (P,)
        if self.objects is not None:
            mean, std = self.objects
            sample['object_position'] = torch.tensor((episode.objects[k] - mean) / std,
                                                     dtype=torch.float32)  # (3,)
        return sample


def collate(samples, num_slots):
    """
    Batch samples: ids right-padded, each sample's length kept for the attention mask.

    Returns {'pixel_values' (B, 6N, 224, 224), 'ids' (B, T) long, 'keep' (B, T, 1) (0 at the
    action slots), 'prompt_len' (B,), 'seq_len' (B,), 'actions' (B, chunk, A), 'proprio'
    (B, P) and 'object_position' (B, 3) when given}.
    """
    ids, keep, seq_len = token_layout([s['prompt_ids'] for s in samples], num_slots)
    batch = {'pixel_values': torch.stack([s['pixel_values'] for s in samples]),
             'ids': ids, 'keep': keep,
             'prompt_len': torch.tensor([len(s['prompt_ids']) for s in samples]),
             'seq_len': seq_len,
             'actions': torch.stack([s['actions'] for s in samples])}
    for key in ('proprio', 'object_position'):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the samples per epoch, from ``seed`` and the epoch (``set_epoch``)."""

    def __init__(self, size, seed):
        self.size, self.seed, self.epoch = int(size), int(seed), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self):
        return self.size
