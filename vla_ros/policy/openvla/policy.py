"""
``OpenVLAPolicy``: one image and one instruction in, one action out; no ROS.

    policy = OpenVLAPolicy.from_pretrained('/models/openvla-7b', device='auto', dtype='auto')
    action = policy.predict(image, 'put the carrot on the plate', unnorm_key='bridge_orig')

Loading checks everything that can be checked before the first prediction (files, tensor names
and shapes, dtype/device arguments), so a bad checkpoint fails at start-up with one clear error.
"""

import gc
import warnings

import numpy as np
import torch

from vla_ros.policy.actions import action_from_generation, ActionStats
from vla_ros.policy.backbone.loading import BackbonePolicy, load_backbone
from vla_ros.policy.backbone.processing import build_prompt
from vla_ros.policy.backbone.timing import PhaseClock
from vla_ros.policy.errors import ConfigError, InputError, PolicyError
from vla_ros.policy.openvla.fast import FAST_MAX_SEQ, FastPath


class OpenVLAPolicy(BackbonePolicy):
    """An OpenVLA checkpoint ready to predict actions (batch size 1, greedy, as the reference)."""

    def __init__(self, model, config, image_processor, tokenizer, device, dtype,
                 eos_token_id=2, quantization=None, weight_bytes=0, fast=False):
        self.model = model.eval()
        self.config = config
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.eos_token_id = int(eos_token_id)
        self.quantization = quantization
        self.weight_bytes = int(weight_bytes)
        self.last_timing = {}
        self._stats = {key: ActionStats.from_norm_stats(config.action_stats(key))
                       for key in config.norm_stats}
        self.fast = None  # a FastPath, or None for the plain path
        if fast:
            self.enable_fast()

    @classmethod
    def from_pretrained(cls, path, device='auto', dtype='auto', quantization=None,
                        center_crop=False, fast='auto'):
        """
        Load a local HF-format OpenVLA checkpoint directory.

        ``device``: 'auto' (first CUDA device, else CPU), 'cpu', 'cuda', 'cuda:N'.
        ``dtype``: 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16', 'float16'.
        ``quantization``: None, '8bit' or '4bit' (bitsandbytes, CUDA only).
        ``center_crop``: the 0.9-area center crop of fine-tunes trained with image augmentation.
        ``fast``: 'auto' (on for CUDA, off on CPU), True or False: the static-cache, CUDA-graph
        path of ``fast.py``, warmed up (graphs captured) here, before the first prediction.
        Raises ``CheckpointError`` for bad files and ``ConfigError`` for bad arguments.
        """
        if fast not in ('auto', True, False):
            raise ConfigError(f"fast={fast!r} is not supported; use 'auto', True or False.")
        backbone = load_backbone(path, device, dtype, quantization, center_crop)
        return cls(backbone.model, backbone.config, backbone.image_processor,
                   backbone.tokenizer, backbone.device, backbone.dtype,
                   eos_token_id=backbone.eos_token_id, quantization=backbone.quantization,
                   weight_bytes=backbone.weight_bytes,
                   fast=backbone.device.type == 'cuda' if fast == 'auto' else fast)

    def enable_fast(self, max_seq=FAST_MAX_SEQ, cuda_graphs=None):
        """
        Switch ``predict`` to the fast path (static KV cache; CUDA graphs on CUDA) and warm it up.

        Same actions as the plain path; prompts longer than ``max_seq`` minus the 256 patches
        and the generated tokens fall back to the plain path with a warning. ``self.fast = None``
        switches back. Returns the ``FastPath``.
        """
        max_new = max(stats.dim for stats in self._stats.values())
        self.fast = FastPath(self.model, self.image_processor, max_new, max_seq=max_seq,
                             cuda_graphs=cuda_graphs)
        self.fast.warmup(self.tokenizer)
        return self.fast

    # ---- dataset statistics ---------------------------------------------------------------------
    def action_dim_for(self, unnorm_key=None):
        """Return the number of action dimensions (tokens generated) for ``unnorm_key``."""
        return self._stats[self.resolve_unnorm_key(unnorm_key)].dim

    @property
    def action_dim(self):
        """Return the action dimension shared by every key (7 for OpenVLA)."""
        dims = {stats.dim for stats in self._stats.values()}
        if len(dims) != 1:
            raise ConfigError(f'the dataset statistics have different action dims {sorted(dims)}; '
                              'use action_dim_for(unnorm_key).')
        return dims.pop()

    # ---- prediction ---------------------------------------------------------------------------
    def predict(self, images, instruction, proprio=None, unnorm_key=None, *, timing=False):
        """
        Predict one action for the image and the task ``instruction``.

        ``images``: the image, or a list of that one image: a ``PIL.Image`` of any mode, or a
        uint8 numpy array (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grayscale. OpenVLA takes no
        state: ``proprio`` must be None (pass ``unnorm_key`` by keyword). Returns an ``Action``;
        ``Action.values`` (7,) equal OpenVLA's ``predict_action``, ``Action.rows`` is its one-row
        chunk. ``policy.last_timing`` gets seconds per phase (preprocess, vision, prefill,
        decode, total); on CUDA the phases are synchronised only when ``timing`` is True.
        """
        if proprio is not None:
            raise InputError(f'OpenVLA takes no state, got proprio={proprio!r}; pass the '
                             'unnorm key by keyword: predict(image, instruction, '
                             'unnorm_key=...).')
        if isinstance(images, (list, tuple)):
            if len(images) != 1:
                raise InputError(f'OpenVLA takes one image (or a list of one), got a list of '
                                 f'{len(images)}.')
            images = images[0]
        return self.predict_prompt(images, build_prompt(instruction), unnorm_key, timing=timing)

    def predict_prompt(self, image, prompt, unnorm_key=None, *, timing=False):
        """Like ``predict`` with a ready prompt string (the 29871 rule still applies)."""
        if self.model is None:
            raise PolicyError('this policy was closed; load it again with '
                              'OpenVLAPolicy.from_pretrained(...).')
        if not isinstance(prompt, str) or not prompt:
            raise InputError('prompt must be a non-empty str.')
        key = self.resolve_unnorm_key(unnorm_key)
        stats = self._stats[key]
        clock = PhaseClock(self.device, exact=timing or self.device.type != 'cuda')
        fast = self.fast
        with torch.inference_mode():
            input_ids = self.tokenizer.model_input_ids(prompt)
            if fast is not None and not fast.fits(len(input_ids), stats.dim):
                warnings.warn(f'prompt of {len(input_ids)} tokens does not fit the static KV '
                              f'cache of the fast path ({fast.max_seq} positions with the image '
                              'patches and generated tokens); using the plain path.',
                              RuntimeWarning, stacklevel=2)
                fast = None
            if fast is not None:
                pixel_values, ids = fast.inputs(image, input_ids)  # on the device
                clock.mark('preprocess')
                generated, hit_eos = fast.generate(pixel_values, ids, stats.dim,
                                                   self.eos_token_id, clock)
            else:
                generated, hit_eos = self._generate_plain(image, input_ids, stats.dim, clock)
        action = action_from_generation(
            input_ids, generated, hit_eos, stats, unnorm_key=key,
            vocab_for_decoding=self.config.vocab_for_decoding,
            n_bins=self.config.n_action_bins, eos_token_id=self.eos_token_id)
        self.last_timing = clock.result()
        action.timing.update(self.last_timing)
        return action

    def _generate_plain(self, image, input_ids, num_new, clock):
        """Run the plain path: ``ImageProcessor``, towers, ``DynamicCache``, greedy decode."""
        pixel_values = self.image_processor(image)  # (1, 6, 224, 224)
        clock.mark('preprocess')
        patches = self.model.embed_image(pixel_values.to(self.device))  # (1, N, C)
        clock.mark('vision')
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)  # (1, T)
        cache = self.model.new_cache()
        logits = self.model.prefill(self.model.embed_prompt(ids, patches), cache)  # (1, V)
        clock.mark('prefill')
        generated, hit_eos = self.model.greedy_decode(logits, cache, num_new,
                                                      self.eos_token_id)
        clock.mark('decode')
        return generated, hit_eos

    def intermediates(self, image, prompt):
        """
        Every stage of one forward pass as numpy arrays (for conformance checks and debugging).

        Keys: input_ids, pixel_values, featurizer_patches, fused_featurizer_patches,
        projector_out, llm_inputs_embeds, first_step_logits.
        """
        with torch.inference_mode():
            input_ids = self.tokenizer.model_input_ids(prompt)
            pixel_values = self.image_processor(image)
            dtype = self.model.projector.fc1.weight.dtype
            x = pixel_values.to(self.device, dtype)
            dino, siglip = self.model.vision_backbone.towers(x)
            projected = self.model.projector(torch.cat([dino, siglip], dim=2))
            ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
            embeds = self.model.embed_prompt(ids, projected)
            logits = self.model.prefill(embeds, self.model.new_cache())
        arrays = {'pixel_values': pixel_values, 'featurizer_patches': dino,
                  'fused_featurizer_patches': siglip, 'projector_out': projected,
                  'llm_inputs_embeds': embeds, 'first_step_logits': logits[0]}
        result = {k: v.float().cpu().numpy() for k, v in arrays.items()}
        result['input_ids'] = np.asarray(input_ids, dtype=np.int64)
        return result

    def close(self):
        """Free the weights (and the GPU cache); the policy cannot predict afterwards."""
        self.model = None
        self.fast = None  # the static cache and the CUDA graphs
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def __repr__(self):
        return (f'OpenVLAPolicy(device={self.device}, dtype={self.dtype}, '
                f'quantization={self.quantization}, unnorm_keys={self.unnorm_keys})')
