"""
OpenVLA configuration: what ``config.json`` (and ``dataset_statistics.json``) of a checkpoint say.

Only the fields the reference model reads are kept. The text config is expanded into a
transformers ``LlamaConfig``: the released openvla-7b stores only ``vocab_size`` 32064 and
``pad_token_id`` 32000, everything else is a LlamaConfig default (4096 wide, 32 layers,
``rms_norm_eps`` 1e-6, which is not Llama-2's 1e-5).

Also here: ``resolve_device`` / ``resolve_dtype`` / ``resolve_quantization`` for the user-facing
``device``, ``dtype`` and ``quantization`` arguments, and ``openvla_7b_config()``, the real
architecture used by the structure test and the benchmark.
"""

import copy
import dataclasses
import json
from pathlib import Path

import torch

from vla_ros.policy.errors import CheckpointError, ConfigError

CONFIG_FILE = 'config.json'
DATASET_STATISTICS_FILE = 'dataset_statistics.json'
DINOV2_TIMM_ID = 'vit_large_patch14_reg4_dinov2.lvd142m'
SIGLIP_TIMM_ID = 'vit_so400m_patch14_siglip_224'
SUPPORTED_VISION_BACKBONE = 'dinosiglip-vit-so-224px'

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
QUANTIZATIONS = ('8bit', '4bit')

# text_config keys that describe the file, not the architecture.
_TEXT_CONFIG_DROP = ('model_type', 'torch_dtype', 'dtype', 'architectures', '_name_or_path',
                     'transformers_version')


@dataclasses.dataclass
class OpenVLAConfig:
    """The architecture and dataset statistics of one OpenVLA checkpoint."""

    text_config: dict
    norm_stats: dict = dataclasses.field(default_factory=dict)
    timm_model_ids: tuple = (DINOV2_TIMM_ID, SIGLIP_TIMM_ID)
    timm_override_kwargs: dict = dataclasses.field(default_factory=dict)
    timm_override_act_layers: tuple = (None, None)
    vision_backbone_id: str = SUPPORTED_VISION_BACKBONE
    use_fused_vision_backbone: bool = True
    image_resize_strategy: str = 'resize-naive'
    image_sizes: tuple = (224, 224)
    n_action_bins: int = 256
    pad_to_multiple_of: int = 64
    pad_token_id: int = 32000
    source: str = '<in memory>'
    norm_stats_source: str = '<in memory>'

    def __post_init__(self):
        """Check the fields the model depends on; name the file and the fix on failure."""
        where = self.source
        backbone = self.vision_backbone_id
        if backbone != SUPPORTED_VISION_BACKBONE or not self.use_fused_vision_backbone:
            raise CheckpointError(
                f'{where}: vision_backbone_id {backbone!r} '
                f'(use_fused_vision_backbone={self.use_fused_vision_backbone}) is not supported; '
                f"only OpenVLA's fused {SUPPORTED_VISION_BACKBONE!r} is; use an OpenVLA "
                'checkpoint.')
        if tuple(self.timm_model_ids) != (DINOV2_TIMM_ID, SIGLIP_TIMM_ID):
            raise CheckpointError(
                f'{where}: timm_model_ids {list(self.timm_model_ids)} are not supported; expected '
                f'[{DINOV2_TIMM_ID!r}, {SIGLIP_TIMM_ID!r}] as in openvla-7b.')
        if self.image_resize_strategy != 'resize-naive':
            raise CheckpointError(
                f'{where}: image_resize_strategy {self.image_resize_strategy!r} is not supported; '
                "OpenVLA checkpoints use 'resize-naive'.")
        if list(self.image_sizes) != [224, 224]:
            raise CheckpointError(f'{where}: image_sizes {list(self.image_sizes)} is not '
                                  'supported; the towers are built at 224x224 as in openvla-7b.')
        unknown = set(self.timm_override_kwargs) - set(self.timm_model_ids)
        if unknown:
            raise CheckpointError(f'{where}: timm_override_kwargs names unknown towers '
                                  f'{sorted(unknown)}; valid: {list(self.timm_model_ids)}.')
        if self.vocab_for_decoding <= self.n_action_bins:
            raise CheckpointError(f'{where}: text_config.vocab_size {self.vocab_size} minus '
                                  f'pad_to_multiple_of {self.pad_to_multiple_of} leaves no room '
                                  f'for {self.n_action_bins} action bins.')
        if self.llama_config().tie_word_embeddings:
            raise CheckpointError(f'{where}: text_config.tie_word_embeddings is true; the '
                                  'lm_head of OpenVLA is untied. Set it to false.')
        for key in self.norm_stats:
            self.action_stats(key)  # validates every key's q01/q99/mask up front

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw, source='<in memory>'):
        """Build from the parsed ``config.json`` dict; unknown keys are ignored."""
        if 'text_config' in raw and not isinstance(raw['text_config'], dict):
            raise CheckpointError(f'{source}: text_config must be an object.')
        fields = {f.name for f in dataclasses.fields(cls)} - {'source', 'norm_stats_source'}
        kwargs = {k: copy.deepcopy(v) for k, v in raw.items() if k in fields}
        kwargs.setdefault('text_config', {})
        kwargs['norm_stats'] = kwargs.get('norm_stats') or {}
        kwargs['timm_override_kwargs'] = kwargs.get('timm_override_kwargs') or {}
        for name in ('timm_model_ids', 'timm_override_act_layers', 'image_sizes'):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(source=source, norm_stats_source=source, **kwargs)

    @classmethod
    def from_pretrained(cls, path):
        """
        Read ``config.json`` of the checkpoint directory ``path``.

        ``dataset_statistics.json`` beside it, written by OpenVLA fine-tuning, replaces the
        ``norm_stats`` of ``config.json`` entirely, as the reference eval code does
        (``vla.norm_stats = json.load(...)``).
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f'checkpoint directory {path} does not exist or is not a '
                                  'directory: pass the folder with config.json and the weights.')
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise CheckpointError(
                f'{config_path} is missing: an OpenVLA checkpoint folder needs its config.json '
                '(download the whole model folder, e.g. `huggingface-cli download '
                'openvla/openvla-7b --local-dir DIR`, or write one with `vla_tiny_model DIR`).')
        raw = read_json(config_path)
        config = cls.from_dict(raw, source=str(config_path))
        stats_path = path / DATASET_STATISTICS_FILE
        if stats_path.is_file():
            stats = read_json(stats_path)
            config.norm_stats = stats
            config.norm_stats_source = str(stats_path)
            for key in stats:
                config.action_stats(key)
        if not config.norm_stats:
            raise CheckpointError(
                f'{config_path} has no norm_stats and there is no {DATASET_STATISTICS_FILE} '
                'beside it: without dataset statistics actions cannot be un-normalised. Copy the '
                f'{DATASET_STATISTICS_FILE} written by fine-tuning into {path}.')
        return config

    # ---- derived values -----------------------------------------------------------------------
    def llama_config(self, attn_implementation='sdpa'):
        """Return the transformers ``LlamaConfig`` of the language model."""
        from transformers import LlamaConfig

        kwargs = {k: v for k, v in self.text_config.items() if k not in _TEXT_CONFIG_DROP}
        kwargs.setdefault('vocab_size', 32064)
        kwargs.setdefault('pad_token_id', self.pad_token_id)
        kwargs.setdefault('rms_norm_eps', 1e-6)
        kwargs.setdefault('tie_word_embeddings', False)
        try:
            config = LlamaConfig(**kwargs)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f'{self.source}: text_config is not a valid LlamaConfig: {err}')
        config._attn_implementation = attn_implementation
        return config

    @property
    def vocab_size(self):
        """Rows of the embedding table and lm_head (32064 for openvla-7b)."""
        return int(self.text_config.get('vocab_size', 32064))

    @property
    def vocab_for_decoding(self):
        """Return the tokenizer's base vocabulary (32000); action bins count down from it."""
        return self.vocab_size - int(self.pad_to_multiple_of)

    def tower_kwargs(self, index):
        """Extra ``timm.create_model`` kwargs of tower ``index`` (0 DINOv2, 1 SigLIP)."""
        timm_id = self.timm_model_ids[index]
        kwargs = dict(self.timm_override_kwargs.get(timm_id) or {})
        kwargs['act_layer'] = self.timm_override_act_layers[index]
        return kwargs

    def action_stats(self, key):
        """Return ``norm_stats[key]['action']`` checked: q01, q99 (and mask) of one length."""
        where = self.norm_stats_source
        entry = self.norm_stats.get(key)
        action = entry.get('action') if isinstance(entry, dict) else None
        if not isinstance(action, dict) or 'q01' not in action or 'q99' not in action:
            raise CheckpointError(f'{where}: norm_stats[{key!r}] has no action.q01/action.q99; '
                                  'dataset statistics must be as written by OpenVLA training.')
        dim = len(action['q01'])
        lengths = {name: len(action[name]) for name in ('q01', 'q99', 'mask') if name in action}
        if dim == 0 or len(set(lengths.values())) != 1:
            raise CheckpointError(f'{where}: norm_stats[{key!r}].action has inconsistent lengths '
                                  f'{lengths}; q01, q99 and mask need one entry per action dim.')
        return action


def read_json(path):
    """Parse a JSON file; a broken one raises ``CheckpointError`` naming it."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f'{path} cannot be read as JSON ({err}); re-download or fix it.')


def openvla_7b_config():
    """Return the config of the released openvla-7b (no timm overrides, default LlamaConfig)."""
    return OpenVLAConfig(text_config={'vocab_size': 32064, 'pad_token_id': 32000},
                         source='openvla-7b (built in)')


def resolve_device(device='auto'):
    """
    Turn the ``device`` argument into a ``torch.device``.

    ``'auto'``: the first CUDA device if there is one, else the CPU. Also ``'cpu'``, ``'cuda'``,
    ``'cuda:N'`` or a ``torch.device``.
    """
    allowed = "'auto', 'cpu', 'cuda' or 'cuda:N'"
    if device is None or device == 'auto':
        return torch.device('cuda', 0) if torch.cuda.is_available() else torch.device('cpu')
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f'device={device!r} is not supported; use {allowed}.') from None
    if resolved.type == 'cpu':
        return torch.device('cpu')
    if resolved.type != 'cuda':
        raise ConfigError(f'device={device!r} is not supported; use {allowed}.')
    if not torch.cuda.is_available():
        raise ConfigError(f'device={device!r} but CUDA is not available here (no GPU, or a '
                          "CPU-only torch); use device='cpu' or 'auto'.")
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ConfigError(f'device={device!r} but only {torch.cuda.device_count()} CUDA '
                          "device(s) exist; use cuda:0 .. cuda:N-1 or 'auto'.")
    return torch.device('cuda', index)


def resolve_dtype(dtype, device):
    """
    Turn the ``dtype`` argument into a ``torch.dtype`` for ``device``.

    ``'auto'``: bfloat16 on CUDA, float32 on CPU. Also ``'float32'``, ``'bfloat16'``,
    ``'float16'`` or the matching ``torch.dtype``.
    """
    device = torch.device(device)
    if dtype is None or dtype == 'auto':
        return torch.bfloat16 if device.type == 'cuda' else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f'dtype={dtype!r} is not supported; use one of '
                      f"'auto', {', '.join(repr(k) for k in DTYPES)}.")


def resolve_quantization(quantization, device):
    """Check ``quantization`` (None, '8bit' or '4bit'); it needs bitsandbytes and CUDA."""
    if quantization in (None, '', 'none'):
        return None
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f'quantization={quantization!r} is not supported; use None, '
                          "'8bit' or '4bit'.")
    if torch.device(device).type != 'cuda':
        raise ConfigError(f'quantization={quantization!r} needs a CUDA device (bitsandbytes); '
                          f'got device {device}. Use quantization=None on CPU.')
    return quantization
