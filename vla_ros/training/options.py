"""
What one fine-tuning run does (``TrainConfig``), and the checks that run before any training.

Every check here needs at most the base checkpoint's small files and a message or two of each
bag, so bad input fails in a second, before a model is loaded: an output directory that is not
empty (unless ``--resume``), an unnorm key the base already has, ``--lora-only`` on a base
without an OFT L1 head, cameras or a state layout that do not fit the platform, and (in
``dataset.check_bags``) bags without the needed topics or with actions of another size. Each is
a ``FinetuneError`` (a bag or a data flag: ``RecordingError``) with one line naming the problem
and the fix (exit status 2).
"""

import dataclasses
import json
from pathlib import Path
import tempfile

from vla_ros.policy.backbone.configuration import CONFIG_FILE, DATASET_STATISTICS_FILE, read_json
from vla_ros.policy.errors import PolicyError
from vla_ros.policy.oft.modeling import ACTION_HEAD, find_component, PROPRIO_PROJECTOR

MODES = ('lora', 'lora_only', 'full')
LORA_TARGETS = ('all', 'llm')
STATE_DIR = 'training_state'
RUN_FILE = 'run.json'
DATA_PREFIX = 'data.'  # a run record's data options, beside the TrainConfig fields
# Options that may differ when a run is resumed; any other difference is refused.
RESUMABLE = ('steps', 'val_every', 'save_every', 'device', 'read_workers')


class FinetuneError(Exception):
    """Bad input to vla_finetune; the text names the problem and the fix (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The settings of one run (the command line's, see ``cli``)."""

    base: str
    out: str
    unnorm_key: str
    bags: tuple
    val_bags: tuple = ()
    platform: str = 'libero'
    center_crop: bool = False
    image_aug: bool = False  # OFT's random crop and colour jitter per draw (``augment``)
    aux_object: float = 0.0  # weight of the named object's position loss (0: no such head)
    mode: str = 'lora'  # 'lora' (LoRA + heads), 'lora_only' (LoRA, the base's heads), 'full'
    lora_rank: int = 32
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target: str = 'all'  # 'all': every linear layer of the backbone (OFT), 'llm'
    steps: int = 1000
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    decay_after: int = 0  # 0: never; else lr x 0.1 from this step on (OFT's MultiStepLR)
    val_every: int = 100
    save_every: int = 500
    seed: int = 0
    device: str = 'auto'
    dtype: str = 'auto'
    read_workers: int = 0  # processes that read the bags; 0: one per core of this process

    def fingerprint(self, data_options):
        """
        Return the settings a resumed run must share with the run it continues (JSON).

        ``data_options``: the run's ``recordings.options.DataOptions``, saved as ``data.*``.
        """
        data = dataclasses.asdict(self)
        data.update({DATA_PREFIX + k: v for k, v in dataclasses.asdict(data_options).items()})
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()
                if k not in RESUMABLE}


def split_settings(saved):
    """Return ``(train, data)``: a run record's ``TrainConfig`` and ``DataOptions`` fields."""
    train = {k: v for k, v in saved.items() if not k.startswith(DATA_PREFIX)}
    data = {k.removeprefix(DATA_PREFIX): v for k, v in saved.items() if k.startswith(DATA_PREFIX)}
    return train, data


def check_out_dir(out, resume):
    """
    Raise unless ``out`` is new or empty (or, with ``resume``, holds a training state).

    It must also be writable: a file is created and removed in it, or in its nearest existing
    parent when it does not exist yet (nothing is left behind; the directory is made later).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FinetuneError(f'--out {out} exists and is not a directory; pass a new directory')
    check_writable(out)
    state = out / STATE_DIR / RUN_FILE
    if resume:
        if not state.is_file():
            raise FinetuneError(f'--resume: {out} holds no training state ({state} is missing); '
                                'pass the --out of an earlier vla_finetune run, or drop --resume '
                                'to start a new one')
        return
    if out.is_dir() and any(out.iterdir()):
        names = ', '.join(sorted(p.name for p in out.iterdir())[:6])
        raise FinetuneError(f'--out {out} is not empty (it holds {names}); pass a new or empty '
                            'directory, or --resume to continue the run written there')


def check_writable(out):
    """Raise unless ``out`` can be created (its parents too) and written, before any work."""
    folder = Path(out).absolute()
    while not folder.exists():  # the nearest existing folder: the one a mkdir writes into
        folder = folder.parent
    if not folder.is_dir():
        raise FinetuneError(f'--out {out}: {folder} is a file, so no directory can be made '
                            'under it; pass --out with a directory you can write to')
    try:
        with tempfile.TemporaryFile(dir=folder, prefix='.vla_finetune_write_test'):
            pass
    except OSError as exc:
        raise FinetuneError(f'--out {out}: cannot write to {folder} ({exc.strerror or exc}); '
                            'pass --out with a directory you can write to') from None


def base_keys(base):
    """Return the dataset-statistics keys of the base (config.json and dataset_statistics.json)."""
    base = Path(base)
    keys = set()
    for name, field in ((CONFIG_FILE, 'norm_stats'), (DATASET_STATISTICS_FILE, None)):
        file = base / name
        if file.is_file():
            try:
                data = read_json(file)
            except PolicyError as exc:
                raise FinetuneError(f'--base {base}: {exc}') from None
            if field:
                data = data.get(field) or {}
            keys.update(k for k, v in data.items() if isinstance(v, dict))
    return keys


def check_base(config):
    """Raise unless the base is a checkpoint folder that this run can start from."""
    base = Path(config.base)
    if not (base / CONFIG_FILE).is_file():
        raise FinetuneError(f'--base {base} is not a checkpoint folder (no {CONFIG_FILE}); pass '
                            'the OpenVLA or OpenVLA-OFT checkpoint directory to start from')
    keys = base_keys(base)
    if config.unnorm_key in keys:
        raise FinetuneError(f'--unnorm-key {config.unnorm_key!r} already exists in the base '
                            f'checkpoint {base} (its keys: {", ".join(sorted(keys))}); pass a new '
                            'key naming your dataset, e.g. --unnorm-key my_robot_reach')
    try:
        head = find_component(base, ACTION_HEAD)
        projector = find_component(base, PROPRIO_PROJECTOR)
    except PolicyError as exc:
        raise FinetuneError(f'--base {base}: {exc}') from None
    if config.mode == 'lora_only' and head is None:
        raise FinetuneError(f"--lora-only trains only LoRA on the backbone and keeps the base's "
                            f'OFT heads, but {base} has no action_head--<step>_checkpoint.pt (no '
                            'L1 regression head); drop --lora-only to train a new head and '
                            'proprio projector with LoRA, or start from an OpenVLA-OFT checkpoint')
    return head, projector


def check_inputs(options, constants, mode, has_projector):
    """Raise unless the cameras and the state layout fit the platform's constants."""
    cameras = options.cameras()
    if len(cameras) != constants.num_images:
        raise FinetuneError(f'{len(cameras)} camera topic(s) {", ".join(cameras)}, but platform '
                            f'{constants.platform!r} takes {constants.num_images} image(s); pass '
                            '--camera-topics with one topic per image, the primary camera first')
    layout = options.layout()
    if layout.dim != constants.proprio_dim:
        given = f'--proprio {" ".join(layout.entries)}' if layout else 'no --proprio'
        raise FinetuneError(f'{given} gives {layout.dim} state values, but platform '
                            f'{constants.platform!r} takes {constants.proprio_dim}; '
                            f'pass --proprio with {constants.proprio_dim} values, e.g. '
                            '--proprio ee_position ee_axis_angle joint:LEFT joint:RIGHT')
    if mode == 'lora_only' and layout and not has_projector:
        raise FinetuneError("--lora-only keeps the base's heads, but the base has no "
                            'proprio_projector--<step>_checkpoint.pt for the --proprio state; '
                            'drop --lora-only to train a new proprio projector')


def write_run(out, config, data_options, step, extra):
    """Write ``out/training_state/run.json``: the settings, the step reached and ``extra``."""
    path = Path(out) / STATE_DIR / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(extra, step=int(step), config=config.fingerprint(data_options),
                resumable={k: getattr(config, k) for k in RESUMABLE})
    partial = path.with_name(path.name + '.partial')
    partial.write_text(json.dumps(data, indent=2) + '\n')
    partial.replace(path)


def read_run(out, config, data_options):
    """Return the saved run of ``out``; raise when the command changes a fixed setting."""
    data = json.loads((Path(out) / STATE_DIR / RUN_FILE).read_text())
    saved, now = data.get('config', {}), config.fingerprint(data_options)
    # A saved setting this version no longer has (a run saved with vla_eval's options, say) is
    # one no command can change.
    # A setting added since the run was saved has its default there (e.g. image_aug: False).
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    changed = [k for k in sorted(now) if saved.get(k, defaults.get(k)) != now.get(k)]
    if changed:
        what = '; '.join(f'{k}: was {saved.get(k, defaults.get(k))!r}, now {now.get(k)!r}'
                         for k in changed[:4])
        raise FinetuneError(f'--resume: the command differs from the run in {out} ({what}); '
                            'resume with the same bags and options (only '
                            f'{", ".join("--" + k.replace("_", "-") for k in RESUMABLE)} may '
                            'change)')
    if int(data.get('step', 0)) >= config.steps:
        raise FinetuneError(f'--resume: the run in {out} has already reached step '
                            f'{data["step"]} of --steps {config.steps}; pass a larger --steps '
                            'to train on')
    return data
