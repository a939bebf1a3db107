"""
One fine-tuning run: checks, data, statistics, OFT's training loop under ``accelerate``, saves.

``finetune(config, options)`` does, in this order:

1. every check that needs no model (``options``, ``dataset.check_bags``): bad input fails here,
   before anything is read or trained;
2. reads the bags (each frame preprocessed once; in ``read_workers`` processes, by default one
   per core) and computes the new statistics from the
   training bags (``stats``); with ``stats_only`` it writes ``dataset_statistics.json`` and stops;
3. loads the base and sets it up for the mode (``model``): a base that does not load fails here,
   before anything is written; then copies the base's files and writes the statistics into the
   output, and trains with AdamW on the L1 loss between the head's chunks and the normalised
   target chunks (OFT's loss; the batch size is OFT's 8 by default), plus, with ``aux_object``,
   that weight times the L1 of the named object's standardised position (``model``). The
   learning rate is OFT's: constant, optionally warmed up from 10 % over ``warmup_steps`` and
   divided by 10 from ``decay_after``; a pure function of the step, so a resumed run continues
   it exactly;
4. every ``val_every`` steps the mean L1 on the validation bags, every ``save_every`` steps (and
   at the end) the checkpoint and the training state (``checkpoint``).

``accelerate`` runs it data-parallel: ``accelerate launch -m vla_ros.training.cli ...`` starts one
process per GPU (or, with ``--multi_gpu`` on a CPU machine, several CPU processes); each reads
the bags, the model is wrapped in DDP, the batches are split between the processes (the batch
size is per process), and rank 0 writes the files. A plain run is one process.
"""

from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import contextlib
import functools
import math
import multiprocessing
import os
from pathlib import Path
import sys
import time

import torch
from tqdm import tqdm

from vla_ros.policy.backbone.configuration import resolve_dtype
from vla_ros.policy.backbone.processing import ImageProcessor, PromptTokenizer
from vla_ros.policy.oft.configuration import OFTConstants
from vla_ros.training import checkpoint, memory, stats as statistics
from vla_ros.training.dataset import (check_bags, ChunkDataset, collate, EpochSampler,
                                      object_standardisation, Preprocessor,
                                      read_episode, sample_arrays)
from vla_ros.training.model import build_model, head_state, merged_state_dict, trainable_parameters
from vla_ros.training.options import (check_base, check_inputs, check_out_dir, FinetuneError,
                                      read_run, write_run)

PROG = 'vla_finetune'
# Fewer bags are read in this process unless --read-workers says otherwise: a reading process's
# start (it imports torch, about 3 s) costs more than it saves on them (about 1 s a bag).
FEW_BAGS = 16


def lr_at(config, step):
    """Return the learning rate of optimizer step ``step`` (0-based)."""
    factor = 1.0
    if config.warmup_steps > 0:
        factor = 0.1 + 0.9 * min((step + 1) / config.warmup_steps, 1.0)
    if config.decay_after > 0 and step >= config.decay_after:
        factor *= 0.1
    return config.lr * factor


def check(config, options, resume=False):
    """Run every check that needs no model; return (constants, head file, projector file)."""
    constants = OFTConstants.for_platform(config.platform)
    check_out_dir(config.out, resume)
    head_file, projector_file = check_base(config)
    check_inputs(options, constants, config.mode, projector_file is not None)
    overlap = sorted(set(config.bags) & set(config.val_bags))
    if overlap:
        raise FinetuneError(f'{", ".join(overlap)} is both a training and a validation bag; '
                            'pass each bag once, as BAG or in --val-bags')
    notes = check_bags(list(config.bags) + list(config.val_bags), options, constants.action_dim,
                       config.bags if config.aux_object else ())
    for note in notes if os.environ.get('RANK', '0') == '0' else ():  # once, not per process
        print(f'{PROG}: note: {note}', file=sys.stderr)
    return constants, head_file, projector_file


def core_share(processes):
    """Return how many of this process's CPU cores each of ``processes`` processes gets (>= 1)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))


def reading_processes(config, bags):
    """
    Return how many processes read ``bags`` bags: ``read_workers``, or this process's cores.

    By default fewer than ``FEW_BAGS`` bags are read in this process, and under ``accelerate
    launch`` (each process reads every bag) the cores are shared out.
    """
    workers = config.read_workers
    if not workers:
        if bags < FEW_BAGS:
            return 1
        workers = core_share(int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
    return max(1, min(workers, bags))


def start_reading(threads):
    """Set up a reading process: ``threads`` torch threads, ``compact_reading``'s malloc."""
    torch.set_num_threads(threads)
    memory.mallopt(memory.M_MMAP_THRESHOLD, memory.READING_THRESHOLD)


@contextlib.contextmanager
def bag_readers(workers):
    """
    Yield a pool of ``workers`` reading processes (spawned: no torch state is forked), or None.

    The cores are shared out (two processes of two torch threads on 2 cores read 40 bags in
    32 s, of one thread in 10 s, one process in 13 s), and each one reads with
    ``memory.compact_reading``'s malloc threshold, for the same reason as this process.
    """
    if workers <= 1:
        yield None
        return
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'),
                                 initializer=start_reading,
                                 initargs=(core_share(workers),)) as pool:
            yield pool
    except BrokenProcessPool as exc:
        raise FinetuneError(f'a process reading the bags died ({exc}); out of memory? Pass '
                            '--read-workers 1 to read them in this process') from exc


def read_episodes(paths, options, preprocessor, show, desc, uncropped=False, objects=False,
                  pool=None):
    """
    Read the bags, in ``pool``'s processes if one is given; fail naming why they give no sample.

    A bag's episode is the same whichever process reads it, and the episodes keep the order of
    ``paths``. The steps that are no sample (no action, NaN or inf in the action or state, ...)
    are counted by reason (``skipped``): the summary and run.json report them.
    """
    read = functools.partial(read_episode, options=options, preprocessor=preprocessor,
                             uncropped=uncropped, objects=objects)
    if pool is not None:  # the preprocessor travels once per chunk of bags (0.6 MB pickled)
        episodes = pool.map(read, paths, chunksize=max(1, min(8, len(paths) // 16)))
    else:
        episodes = map(read, paths)
    bar = tqdm(episodes, total=len(paths), desc=desc, unit='bag',
               disable=None if show else True, leave=False)
    episodes = list(bar)
    if paths and not sum(len(e.samples) for e in episodes):
        why = ', '.join(f'{count} steps: {reason}' for reason, count in skipped(episodes).items())
        raise FinetuneError(f'the {desc.split()[-1]} bags give no sample ({why or "no steps"}) '
                            f'at --rate {options.rate:g} Hz; check the topics, the '
                            'instruction and --rate')
    return episodes


def read_data(config, options, preprocessor, show=False):
    """
    Return (training, validation) episodes.

    With --image-aug the training frames are kept uncropped, with --aux-object the training
    steps have the named object's position.
    """
    workers = reading_processes(config, len(config.bags) + len(config.val_bags))
    with bag_readers(workers) as pool:
        return (read_episodes(config.bags, options, preprocessor, show, 'reading training',
                              uncropped=config.image_aug, objects=bool(config.aux_object),
                              pool=pool),
                read_episodes(config.val_bags, options, preprocessor, show,
                              'reading validation', pool=pool))


def datasets(config, train_eps, val_eps, preprocessor, entry, normalize):
    """Return (training set, validation set or None): only training draws are augmented."""
    train = ChunkDataset(train_eps, preprocessor, entry, normalize,
                         config.seed if config.image_aug else None,
                         object_standardisation(train_eps) if config.aux_object else None)
    val = ChunkDataset(val_eps, preprocessor, entry, normalize) if val_eps else None
    return train, val


def skipped(episodes):
    """Return {reason: steps} of the steps of ``episodes`` that are no sample, most first."""
    reasons = {}
    for episode in episodes:
        for reason, count in episode.skipped.items():
            reasons[reason] = reasons.get(reason, 0) + count
    return dict(sorted(reasons.items(), key=lambda item: -item[1]))


def statistics_of(episodes):
    """Return the new ``dataset_statistics.json`` entry of the training episodes."""
    actions, proprio = sample_arrays(episodes)
    return statistics.dataset_statistics(actions, proprio if proprio.shape[1] else None,
                                         num_trajectories=len(episodes))


def make_accelerator(device):
    """Return the ``Accelerator`` (DDP with unused parameters allowed, as OFT) for ``device``."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if device not in ('auto', 'cpu', 'cuda'):
        raise FinetuneError(f'--device {device}: use auto, cpu or cuda (accelerate picks each '
                            "process's GPU)")
    cpu = device == 'cpu' or (device == 'auto' and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=cpu, mixed_precision='no' if cpu else 'bf16',
                              kwargs_handlers=[DistributedDataParallelKwargs(
                                  find_unused_parameters=True)])
    if accelerator.num_processes > 1 and cpu and 'OMP_NUM_THREADS' not in os.environ:
        local = int(os.environ.get('LOCAL_WORLD_SIZE', accelerator.num_processes))
        torch.set_num_threads(core_share(local))
    return accelerator


def training_dtype(config, device):
    """Return the dtype of the frozen weights: float32 on CPU and for --full, else bf16."""
    if config.dtype != 'auto':
        return resolve_dtype(config.dtype, device)
    return torch.float32 if device.type == 'cpu' or config.mode == 'full' else torch.bfloat16


def finetune(config, options, resume=False, stats_only=False, progress=True):
    """Run (or resume) one fine-tuning; return a summary dict (see the module docstring)."""
    constants, head_file, projector_file = check(config, options, resume)
    run = read_run(config.out, config, options) if resume else None
    out = Path(config.out)
    accelerator = make_accelerator(config.device)
    main = accelerator.is_main_process
    if stats_only:
        with memory.compact_reading(), \
                bag_readers(reading_processes(config, len(config.bags))) as pool:
            episodes = read_episodes(config.bags, options, None, progress and main,
                                     'reading training', pool=pool)
        entry = statistics_of(episodes)
        path = out / statistics.DATASET_STATISTICS_FILE
        if main:
            out.mkdir(parents=True, exist_ok=True)
            statistics.write_statistics(out, config.unnorm_key, entry)
        return {'main': main, 'statistics': str(path), 'samples': entry['num_transitions'],
                'skipped': skipped(episodes)}
    show = progress and main
    preprocessor = Preprocessor(ImageProcessor.from_pretrained(config.base),
                                PromptTokenizer.from_pretrained(config.base), constants,
                                config.center_crop)
    with memory.compact_reading():
        train_eps, val_eps = read_data(config, options, preprocessor, show)
    entry = statistics.read_statistics(out, config.unnorm_key) if resume else None
    entry = entry or statistics_of(train_eps)
    dtypes = checkpoint.weight_layout(config.base)

    def normalize(chunk, entry):
        return statistics.normalize_actions(chunk, entry, constants.normalization)

    train_set, val_set = datasets(config, train_eps, val_eps, preprocessor, entry, normalize)
    sampler = EpochSampler(len(train_set), config.seed)
    slots = constants.num_action_slots

    def batches(dataset, **kwargs):
        return torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size,
            collate_fn=lambda samples: collate(samples, slots), **kwargs)

    torch.manual_seed(config.seed)
    model, _ = build_model(config, constants, accelerator.device,
                           training_dtype(config, accelerator.device), head_file,
                           projector_file, bool(options.layout()))
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr,
                                  weight_decay=config.weight_decay)
    step = 0
    if run is not None:
        step = int(run['step'])
        saved, optimizer_state = checkpoint.load_training_state(out, step)
        missing = sorted(set(params) - set(saved))
        if missing:
            raise FinetuneError(f'--resume: {out} lacks the trained parameters {missing[:3]}; '
                                'start a new run')
        model.load_state_dict(saved, strict=False)
        optimizer.load_state_dict(optimizer_state)
        if main:
            checkpoint.truncate_log(out, step)
    if main and not resume:  # only now: a base that does not load leaves no files behind
        checkpoint.copy_base_files(config.base, out)
        statistics.write_statistics(out, config.unnorm_key, entry)
    loaders = [batches(train_set, sampler=sampler)]
    if val_set is not None:
        loaders.append(batches(val_set))
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    train_loader, val_loader = loaders[0], (loaders[1] if len(loaders) > 1 else None)
    if main:
        count = sum(p.numel() for p in params.values())
        dropped = sum(skipped(train_eps).values())
        print(f'{PROG}: {len(train_set)} training samples from {len(train_eps)} bag(s)'
              f'{f" ({dropped} steps are no sample)" if dropped else ""}, '
              f'{sum(len(e.samples) for e in val_eps)} validation samples; mode {config.mode}, '
              f'{count} trained parameters; {accelerator.num_processes} process(es) on '
              f'{accelerator.device}, batch {config.batch_size} per process', file=sys.stderr)
    loop = Loop(config, options, accelerator, model, optimizer, out, dtypes, show)
    data = {'samples': len(train_set), 'skipped': skipped(train_eps),
            'val_skipped': skipped(val_eps)}  # run.json and the summary
    return loop.run(train_loader, sampler, val_loader, step, data)


class Loop:
    """The training loop proper: steps, validation, saves, progress and the log."""

    def __init__(self, config, options, accelerator, model, optimizer, out, dtypes, show):
        self.config, self.options, self.accelerator = config, options, accelerator
        self.model, self.optimizer = model, optimizer
        self.out, self.dtypes, self.show = out, dtypes, show
        self.losses, self.val_l1 = [], None
        self.object_l1 = None  # the auxiliary head's last L1 (--aux-object)

    def run(self, loader, sampler, val_loader, step, data):
        config, accelerator = self.config, self.accelerator
        per_epoch = max(1, len(loader))
        epoch, skip = divmod(step, per_epoch)
        bar = tqdm(total=config.steps, initial=step, desc=PROG, unit='step',
                   disable=None if self.show else True)
        start, start_step = time.perf_counter(), step
        saved = step
        try:
            while step < config.steps:
                sampler.set_epoch(epoch)
                loader.set_epoch(epoch)
                loader.dataset.set_epoch(epoch)  # the augmentation's draws
                batches = accelerator.skip_first_batches(loader, skip) if skip else loader
                skip = 0
                for batch in batches:
                    loss = self.train_step(batch, step)
                    step += 1
                    self.losses.append(loss)
                    self.log({'step': step, 'loss': loss, 'lr': lr_at(config, step - 1),
                              'epoch': epoch, 'time_s': time.perf_counter() - start,
                              **({} if self.object_l1 is None
                                 else {'object_l1': self.object_l1})})
                    if val_loader is not None and config.val_every and \
                            step % config.val_every == 0:
                        self.validate(val_loader, step)
                    if config.save_every and step % config.save_every == 0:
                        self.save(step, data)
                        saved = step
                    bar.update(1)
                    bar.set_postfix(loss=f'{loss:.4f}', val_l1='-' if self.val_l1 is None
                                    else f'{self.val_l1:.4f}')
                    if step >= config.steps:
                        break
                epoch += 1
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if val_loader is not None and (not config.val_every or step % config.val_every):
            self.validate(val_loader, step)
        if saved != step:
            self.save(step, data)
        if accelerator.num_processes > 1:
            accelerator.wait_for_everyone()
        trained = step - start_step
        return {'main': accelerator.is_main_process, 'step': step, 'steps_trained': trained,
                'seconds': seconds,
                's_per_step': seconds / trained if trained else math.nan,
                'first_loss': self.losses[0] if self.losses else math.nan,
                'last_loss': self.losses[-1] if self.losses else math.nan,
                'val_l1': self.val_l1, 'out': str(self.out), **data}

    def train_step(self, batch, step):
        for group in self.optimizer.param_groups:
            group['lr'] = lr_at(self.config, step)
        self.model.train()
        predicted = self.model(**batch)  # (B, chunk, A), or with the object head a pair
        if isinstance(predicted, tuple):
            predicted, objects = predicted
        loss = torch.nn.functional.l1_loss(predicted, batch['actions'])
        total = loss
        if self.config.aux_object:  # masked mean: a step before the first sim/task has none
            target = batch['object_position']
            known = torch.isfinite(target)
            error = (objects - target.nan_to_num()).abs() * known
            object_l1 = error.sum() / known.sum().clamp(min=1)
            total = loss + self.config.aux_object * object_l1
            self.object_l1 = float(object_l1.detach())
        self.accelerator.backward(total)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss.detach()
        if self.accelerator.num_processes > 1:
            loss = self.accelerator.reduce(loss, 'mean')
        return float(loss)

    def validate(self, loader, step):
        """Compute the mean L1 (normalised actions) over the validation samples."""
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                predicted = self.model(**batch)
                if isinstance(predicted, tuple):  # the object head's output: not the policy's
                    predicted = predicted[0]
                error = (predicted - batch['actions']).abs().mean(dim=(1, 2))  # (B,)
                error = self.accelerator.gather_for_metrics(error)
                total += float(error.sum())
                count += error.numel()
        self.val_l1 = total / max(count, 1)
        self.log({'step': step, 'val_l1': self.val_l1})
        return self.val_l1

    def save(self, step, data):
        accelerator = self.accelerator
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(self.model)
            weights = merged_state_dict(model.vla, list(self.dtypes))
            checkpoint.save_checkpoint(
                self.out, step, weights, self.dtypes, head_state(model.action_head),
                head_state(model.proprio_projector) if model.proprio_projector else None)
            checkpoint.save_training_state(self.out, step, trainable_parameters(model),
                                           self.optimizer.state_dict())
            write_run(self.out, self.config, self.options, step, data)
        if accelerator.num_processes > 1:
            accelerator.wait_for_everyone()

    def log(self, record):
        if self.accelerator.is_main_process:
            checkpoint.append_log(self.out, record)
