"""
Loading the backbone both families share, from a checkpoint folder: ``load_backbone``.

    backbone = load_backbone('/models/openvla-7b', device='auto', dtype='auto')

``Backbone`` holds what ``OpenVLAPolicy``, ``OpenVLAOFTPolicy`` and fine-tuning build on: the
network, its config, the image processor, the prompt tokenizer, where it lives and the EOS id;
``BackbonePolicy`` is what both policies read of it alike (the dataset statistics' keys).
"""

import dataclasses
from pathlib import Path

import torch

from vla_ros.policy.backbone import weights
from vla_ros.policy.backbone.configuration import (OpenVLAConfig, read_json, resolve_device,
                                                   resolve_dtype, resolve_quantization)
from vla_ros.policy.backbone.modeling import OpenVLAModel
from vla_ros.policy.backbone.processing import ImageProcessor, PromptTokenizer
from vla_ros.policy.backbone.quantization import (import_bitsandbytes, is_quantized_weight,
                                                  quantize_language_model)
from vla_ros.policy.base import Policy

GENERATION_CONFIG_FILE = 'generation_config.json'


class BackbonePolicy(Policy):
    """A policy on this backbone: dataset statistics by unnorm key (``_stats``) from its config."""

    @property
    def unnorm_keys(self):
        """Return the keys of the dataset statistics to un-normalise with, sorted."""
        return sorted(self._stats)

    @property
    def stats_source(self):
        """Return the file the dataset statistics were read from."""
        return self.config.norm_stats_source


@dataclasses.dataclass
class Backbone:
    """What every OpenVLA-family policy loads: the network, config, processor and tokenizer."""

    model: OpenVLAModel
    config: OpenVLAConfig
    image_processor: ImageProcessor
    tokenizer: PromptTokenizer
    device: torch.device
    dtype: torch.dtype
    quantization: object
    weight_bytes: int
    eos_token_id: int


def load_backbone(path, device='auto', dtype='auto', quantization=None, center_crop=False):
    """
    Load the OpenVLA backbone of a checkpoint folder (safetensors only); return a ``Backbone``.

    Checks everything that can be checked before the first prediction (files, tensor names and
    shapes, the dtype/device arguments); raises ``CheckpointError`` or ``ConfigError``.
    """
    path = Path(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    quantization = resolve_quantization(quantization, device)
    if quantization:
        import_bitsandbytes(quantization)  # fail before reading gigabytes
    config = OpenVLAConfig.from_pretrained(path)
    image_processor = ImageProcessor.from_pretrained(path, center_crop=center_crop)
    tokenizer = PromptTokenizer.from_pretrained(path)
    found = weights.read_headers(weights.find_weight_files(path))
    with torch.device('meta'):
        model = OpenVLAModel(config)
    weights.check_tensors(model, found)
    keep_on_cpu = is_quantized_weight if quantization else None
    weight_bytes = weights.load_into(model, found, device, dtype, keep_on_cpu=keep_on_cpu)
    weights.materialize_buffers(model, device)
    if quantization:
        quantize_language_model(model, quantization, dtype, device)
    return Backbone(model.eval(), config, image_processor, tokenizer, device, dtype,
                    quantization, weight_bytes, _eos_token_id(path))


def _eos_token_id(path):
    file = Path(path) / GENERATION_CONFIG_FILE
    eos = read_json(file).get('eos_token_id', 2) if file.is_file() else 2
    if isinstance(eos, list):
        eos = eos[0] if eos else 2
    return int(eos)
