"""
Loading safetensors weights into an ``OpenVLAModel`` built on the meta device.

1. ``find_weight_files``: ``model.safetensors``, or ``model.safetensors.index.json`` and its
   shards. Pickle weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) are refused: loading them
   can run arbitrary code.
2. ``read_headers``: names, dtypes and shapes of every stored tensor, from the headers only.
3. ``check_tensors``: missing / unexpected names and shape mismatches fail before anything is
   allocated, naming the tensors.
4. ``load_into``: one tensor at a time: read, cast to the target dtype, move to the target
   device, assign in place of the meta parameter. Tensors are read with ``pread`` into memory the
   model owns (safetensors >= 0.8; its default would leave CPU weights backed by a private memory
   map of the file, paged in lazily at the first forward pass and exposed to the file changing
   underneath). Files are re-opened every ~256 MB so that, with older safetensors, pages of the
   memory map do not pile up in RSS. Peak RSS stays near one copy of the weights.
5. ``materialize_buffers``: non-persistent buffers (Llama's rotary ``inv_freq``) are rebuilt on
   the target device; then no meta tensor may remain.
"""

from pathlib import Path

from safetensors import SafetensorError
import torch
from torch import nn

from vla_ros.policy.errors import CheckpointError, format_names

WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl')
_CHUNK_BYTES = 256 * 2 ** 20
_READ_ERRORS = (SafetensorError, OSError, ValueError)
_FLOAT_DTYPES = {'F64', 'F32', 'F16', 'BF16'}
_ELEMENT_BYTES = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2}


def convert_hint(path):
    """Return the one-liner that turns a trusted pickle checkpoint into safetensors."""
    return ('python -c "import torch; from safetensors.torch import save_file; '
            f"sd = torch.load('{path}', map_location='cpu', weights_only=True); "
            'save_file({k: v.contiguous() for k, v in sd.items()}, '
            f"'{Path(path).parent / WEIGHTS_FILE}', metadata={{'format': 'pt'}})\"")


def find_weight_files(path):
    """Return the safetensors files of the checkpoint directory ``path``, in load order."""
    path = Path(path)
    single, index = path / WEIGHTS_FILE, path / INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        return _shards_of(index)
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f'{path / pickles[0]}: pickle weights ({", ".join(pickles)}) are refused for safety '
            '(unpickling can run arbitrary code). In a trusted environment, convert once to '
            f'safetensors: {convert_hint(path / pickles[0])}')
    others = sorted(p.name for p in path.glob('*.safetensors'))
    extra = (f' Found {", ".join(others)} but no {INDEX_FILE} naming them; add the index '
             'written with the shards.' if others else '')
    raise CheckpointError(f'{single} is missing (and there is no {INDEX_FILE}): the checkpoint '
                          f'has no weights. Download the model files into {path}.{extra}')


def _shards_of(index):
    from vla_ros.policy.backbone.configuration import read_json

    weight_map = read_json(index).get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f'{index} has no weight_map; re-download it with the shards.')
    files = []
    for name in dict.fromkeys(weight_map.values()):
        shard = index.parent / name
        if not shard.is_file():
            raise CheckpointError(f'{shard} is missing but {index.name} lists it; download every '
                                  'shard of the checkpoint.')
        files.append(shard)
    return files


def read_headers(files):
    """Return ``{name: (file, dtype, shape)}`` from the safetensors headers of ``files``."""
    found = {}
    for file in files:
        with _open(file) as f:
            for name in f.keys():
                view = f.get_slice(name)
                if name in found:
                    raise CheckpointError(f'{file}: tensor {name} is also in '
                                          f'{found[name][0].name}; the shards overlap.')
                found[name] = (file, view.get_dtype(), tuple(view.get_shape()))
    return found


def check_tensors(model, found):
    """Fail, naming the tensors, unless ``found`` matches ``model``'s state dict exactly."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    if missing or unexpected:
        files = sorted({str(file) for file, _, _ in found.values()})
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing: {format_names(missing)}')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected: {format_names(unexpected)}')
        raise CheckpointError(
            f'{", ".join(files)}: the tensor names do not match OpenVLA ({"; ".join(parts)}). '
            'Keys must be the released ones (vision_backbone.featurizer.*, '
            'vision_backbone.fused_featurizer.*, projector.fc1/fc2/fc3, language_model.model.*, '
            'language_model.lm_head.weight), and the config.json sizes must fit the weights.')
    for name, (file, dtype, shape) in found.items():
        if shape != expected[name]:
            raise CheckpointError(
                f'{file}: tensor {name} has shape {list(shape)} but the model built from '
                f'config.json expects {list(expected[name])}; the weights and config.json do not '
                'belong together (check text_config and timm_override_kwargs).')
        if dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f'{file}: tensor {name} has dtype {dtype}; only float weights '
                                  '(F32, BF16, F16) can be loaded. Pre-quantized checkpoints are '
                                  'not supported: load the bf16 one with quantization= instead.')


def load_into(model, found, device, dtype, keep_on_cpu=None):
    """
    Replace every meta parameter of ``model`` with the stored tensor, cast and moved.

    Tensors whose name satisfies the predicate ``keep_on_cpu`` stay on the CPU (they are
    quantized later). Returns the number of bytes of the loaded parameters.
    """
    by_file = {}
    for name, (file, stored_dtype, shape) in found.items():
        by_file.setdefault(file, []).append((name, stored_dtype, shape))
    total = 0
    for file, entries in by_file.items():
        for chunk in _chunks(entries):
            with _open(file) as f:
                for name in chunk:
                    target = device
                    if keep_on_cpu is not None and keep_on_cpu(name):
                        target = torch.device('cpu')
                    tensor = _read(f, file, name).to(device=target, dtype=dtype)
                    _assign(model, name, tensor)
                    total += tensor.numel() * tensor.element_size()
    return total


def _open(file):
    from safetensors import safe_open

    try:
        try:
            return safe_open(str(file), framework='pt', device='cpu', backend='pread')
        except TypeError:  # safetensors < 0.8 has no backend and copies out of its mmap
            return safe_open(str(file), framework='pt', device='cpu')
    except _READ_ERRORS as err:
        raise CheckpointError(f'{file} is not a valid safetensors file ({err}); it is truncated '
                              'or corrupt: re-download or re-convert it.') from None


def _read(handle, file, name):
    try:
        return handle.get_tensor(name)
    except _READ_ERRORS as err:
        raise CheckpointError(f'{file}: tensor {name} cannot be read ({err}); the file is '
                              'truncated or corrupt: re-download or re-convert it.') from None


def _chunks(entries):
    chunk, size = [], 0
    for name, stored_dtype, shape in entries:
        numel = 1
        for dim in shape:
            numel *= dim
        chunk.append(name)
        size += numel * _ELEMENT_BYTES[stored_dtype]
        if size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _assign(model, name, tensor):
    module_name, _, leaf = name.rpartition('.')
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        setattr(module, leaf, nn.Parameter(tensor, requires_grad=False))
    else:
        setattr(module, leaf, tensor)


def materialize_buffers(model, device):
    """
    Rebuild the non-persistent buffers on ``device``; then check that nothing is left on meta.

    The only ones are Llama's rotary ``inv_freq`` (float32, computed from the config); the timm
    towers have none.
    """
    llama = model.language_model.model
    with torch.device(device):
        llama.rotary_emb = type(llama.rotary_emb)(config=model.llama_config)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    left = [name for name, tensor in tensors if tensor.is_meta]
    if left:
        raise RuntimeError(f'internal error: tensors left on the meta device: '
                           f'{format_names(left)}')
