"""
The output folder: a checkpoint as OFT's fine-tuning writes it, plus the state to resume from.

    OUT/config.json, tokenizer and processor files ...  copied from the base
    OUT/model.safetensors                                the backbone, LoRA merged in
    OUT/action_head--<step>_checkpoint.pt                state dicts, keys ``module.*`` (DDP's)
    OUT/proprio_projector--<step>_checkpoint.pt
    OUT/dataset_statistics.json                          only the new unnorm key
    OUT/training_state/                                  run.json, trainable.safetensors,
                                                         optimizer.pt, log.jsonl

``OpenVLAOFTPolicy.from_pretrained(OUT)`` and vla_node load it as it is. Each save replaces the
previous step's files (the folder always holds one checkpoint, the newest); every file is
written beside its final name and renamed into place. ``training_state/`` holds what a resumed
run needs and the policy never reads: the trained parameters before merging (the LoRA adapters,
or everything with ``--full``), the optimizer's state (read back with
``torch.load(weights_only=True)``: tensors and numbers only), the step and the settings.
"""

import json
from pathlib import Path
import shutil

import torch

from vla_ros.policy.backbone.configuration import DATASET_STATISTICS_FILE
from vla_ros.policy.backbone.weights import (find_weight_files, INDEX_FILE, PICKLE_SUFFIXES,
                                             read_headers)
from vla_ros.policy.backbone.weights import WEIGHTS_FILE
from vla_ros.policy.oft.modeling import ACTION_HEAD, PROPRIO_PROJECTOR
from vla_ros.training.options import STATE_DIR

TRAINABLE_FILE = 'trainable.safetensors'
OPTIMIZER_FILE = 'optimizer.pt'
LOG_FILE = 'log.jsonl'
_DTYPES = {'F32': torch.float32, 'BF16': torch.bfloat16, 'F16': torch.float16,
           'F64': torch.float64}


def copy_base_files(base, out):
    """
    Copy the base's own files (config, tokenizer, processor ...) into ``out``.

    Not the weights, the heads or the statistics: those are written from the training.
    """
    base, out = Path(base), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(base.iterdir()):
        skip = (not path.is_file() or path.suffix == '.safetensors' or path.name == INDEX_FILE
                or path.name == DATASET_STATISTICS_FILE or path.suffix in PICKLE_SUFFIXES
                or path.name.endswith('.partial'))
        if not skip:
            shutil.copyfile(path, out / path.name)


def weight_layout(base):
    """Return ``{tensor name: torch dtype}`` of the base's weights, in file order."""
    return {name: _DTYPES.get(dtype, torch.float32)
            for name, (_, dtype, _) in read_headers(find_weight_files(base)).items()}


def _replace(path, write):
    partial = path.with_name(path.name + '.partial')
    write(partial)
    partial.replace(path)


def save_checkpoint(out, step, weights, dtypes, head, projector):
    """
    Write the policy files of ``step`` into ``out``; remove the heads of earlier steps.

    ``weights``: the merged backbone state dict; ``dtypes``: the base's dtype per tensor;
    ``head``, ``projector``: state dicts with ``module.`` keys (``projector`` may be None).
    """
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {name: weights[name].to(dtypes[name]).contiguous() for name in dtypes}
    _replace(out / WEIGHTS_FILE,
             lambda p: save_file(tensors, str(p), metadata={'format': 'pt', 'step': str(step)}))
    written = []
    for component, state in ((ACTION_HEAD, head), (PROPRIO_PROJECTOR, projector)):
        if state is None:
            continue
        path = out / f'{component}--{step}_checkpoint.pt'
        _replace(path, lambda p, state=state: torch.save(state, p))
        written.append(path)
    for component in (ACTION_HEAD, PROPRIO_PROJECTOR):
        for old in out.glob(f'{component}--*_checkpoint.pt'):
            if old not in written:
                old.unlink()
    return written


def save_training_state(out, step, trainable, optimizer_state):
    """Write the trained parameters (unmerged) and the optimizer's state of ``step``."""
    from safetensors.torch import save_file

    folder = Path(out) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().cpu().contiguous() for name, p in trainable.items()}
    _replace(folder / TRAINABLE_FILE,
             lambda p: save_file(tensors, str(p), metadata={'step': str(step)}))
    _replace(folder / OPTIMIZER_FILE,
             lambda p: torch.save({'step': int(step), 'optimizer': optimizer_state}, p))


def load_training_state(out, step):
    """Return (trained parameters, optimizer state) saved at ``step``; raise if they differ."""
    from safetensors import safe_open

    folder = Path(out) / STATE_DIR
    with safe_open(str(folder / TRAINABLE_FILE), framework='pt', device='cpu') as f:
        saved_step = int((f.metadata() or {}).get('step', -1))
        trainable = {name: f.get_tensor(name) for name in f.keys()}
    state = torch.load(folder / OPTIMIZER_FILE, map_location='cpu', weights_only=True)
    if saved_step != step or int(state.get('step', -1)) != step:
        raise RuntimeError(f'{folder}: the saved parameters (step {saved_step}) and optimizer '
                           f'(step {state.get("step")}) are not of step {step}; the last save '
                           'was interrupted: start a new run')
    return trainable, state['optimizer']


def append_log(out, record):
    """Append one JSON line (a step's loss, a validation) to ``training_state/log.jsonl``."""
    folder = Path(out) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG_FILE, 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')


def read_log(out):
    """Return the records of ``training_state/log.jsonl`` (empty when there is none)."""
    path = Path(out) / STATE_DIR / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(out, step):
    """Drop the log records after ``step`` (a resumed run continues from its last save)."""
    records = [r for r in read_log(out) if r.get('step', 0) <= step]
    path = Path(out) / STATE_DIR / LOG_FILE
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
