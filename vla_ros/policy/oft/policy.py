"""
``OpenVLAOFTPolicy``: camera images, an instruction and the robot's state in, a chunk out.

    policy = OpenVLAOFTPolicy.from_pretrained(path, platform='libero', action_head='auto')
    chunk = policy.predict([primary, wrist], 'put the bowl on the plate', proprio=state)
    chunk.values       # float64 (chunk_len, action_dim), exactly as OFT's get_vla_action

The same backbone as ``OpenVLAPolicy`` (``load_backbone``: towers, projector, Llama, tokenizer,
prompt), two heads: OFT's L1-regression MLP, or its discrete tokens decoded in parallel. One
forward pass per chunk, with bidirectional attention over the whole sequence (OFT's fork of
transformers makes SDPA non-causal; here a 4-D all-true mask does the same through current
transformers, or the fused decoder's ``encode``):

    [embed(BOS), patches of image 0 .. N-1 (256 each), proprio token (L1 with a projector),
     embed(prompt ids[1:]), K zero vectors (the action slots), embed(2)]

The hidden states of positions ``NUM_PATCHES + L - 1`` .. ``+ K`` (from the prompt's last token,
OFT's off-by-one) feed the head. See ``../shared/conformance/openvla_oft_tiny/README.md``.
"""

import gc
from pathlib import Path

import numpy as np
import torch

from vla_ros.policy.actions import Action, action_token_range, normalized_from_tokens
from vla_ros.policy.backbone.loading import BackbonePolicy, load_backbone
from vla_ros.policy.backbone.timing import PhaseClock
from vla_ros.policy.errors import CheckpointError, ConfigError, InputError, PolicyError
from vla_ros.policy.oft.configuration import check_proprio, dataset_bounds, OFTConstants
from vla_ros.policy.oft.modeling import (ACTION_HEAD, find_component, L1RegressionHead,
                                         load_component, load_into, PROPRIO_PROJECTOR,
                                         ProprioProjector, refuse_unsupported)
from vla_ros.policy.oft.processing import OFTProcessor

HEADS = ('auto', 'l1', 'discrete')


class OFTForward:
    """The pieces of one OFT forward pass that the plain and the fast path share."""

    def __init__(self, model, constants, action_head, proprio_projector):
        self.model = model
        self.constants = constants
        self.action_head = action_head
        self.proprio_projector = proprio_projector
        self.embed = model.language_model.get_input_embeddings()

    @property
    def num_patches(self):
        """Image patches plus the proprio token: the positions before the prompt's 2nd id."""
        patches = self.model.vision_backbone.featurizer.patch_embed.num_patches
        return patches * self.constants.num_images + (self.proprio_projector is not None)

    def patches(self, pixel_values):  # (B, 6N, 224, 224): B 1, or a training batch
        """
        Projected patches of every image, image after image: (B, 256 N, D).

        The N images go through the towers and the projector as one batch (the reference loops
        over them: N times the kernels); on the CPU in float32 the patches are bit-identical to
        the loop's on the conformance checkpoints, on CUDA a GEMM of twice the rows may pick
        another kernel (rounding within bf16 noise).
        """
        images = pixel_values.reshape(-1, 6, *pixel_values.shape[2:])  # (B N, 6, 224, 224)
        patches = self.model.embed_image(images)  # (B N, 256, D)
        return patches.reshape(pixel_values.shape[0], -1, patches.shape[-1])  # (B, 256 N, D)

    def sequence(self, ids, keep, patches, proprio):
        """
        Return the LLM input (1, T, D).

        ``ids`` (1, L + K + 1 [+ padding]) long; ``keep`` (1, same, 1): 0 at the action slots
        (their embeddings become exact zeros), 1 elsewhere; ``proprio`` (1, P) or None.
        """
        tokens = self.embed(ids) * keep.to(self.embed.weight.dtype)  # (1, L', D)
        parts = [tokens[:, :1], patches.to(tokens.dtype)]
        if self.proprio_projector is not None:
            parts.append(self.proprio_projector(proprio.to(tokens.dtype))[:, None])  # (1, 1, D)
        parts.append(tokens[:, 1:])
        return torch.cat(parts, dim=1)  # (1, T, D)

    def head(self, hidden):  # (1, K, D), after the final norm
        """L1: normalised actions (1, chunk, A) float32; discrete: token ids (1, K)."""
        if self.action_head is not None:
            return self.action_head(hidden).float()
        return self.model.language_model.lm_head(hidden).argmax(dim=-1)


class OpenVLAOFTPolicy(BackbonePolicy):
    """An OpenVLA-OFT checkpoint ready to predict chunks (batch 1); see the module docstring."""

    def __init__(self, backbone, constants, action_head=None, proprio_projector=None,
                 center_crop=True, fast=False):
        self.model = backbone.model
        self.config = backbone.config
        self.image_processor = backbone.image_processor
        self.tokenizer = backbone.tokenizer
        self.device, self.dtype = backbone.device, backbone.dtype
        self.quantization, self.weight_bytes = backbone.quantization, backbone.weight_bytes
        self.constants = constants
        self.processor = OFTProcessor(self.image_processor, self.tokenizer, constants,
                                      center_crop)
        self.head_kind = 'l1' if action_head is not None else 'discrete'
        self.forward = OFTForward(self.model, constants, action_head, proprio_projector)
        source = self.config.norm_stats_source
        self._stats = {key: dataset_bounds(self.config.norm_stats, key, constants, source)
                       for key in self.config.norm_stats}
        if proprio_projector is not None:
            missing = [key for key, (_, proprio) in self._stats.items() if proprio is None]
            if missing:
                raise CheckpointError(f'{source}: {missing} have no proprio statistics, which '
                                      'the proprio projector needs; use the '
                                      'dataset_statistics.json written by OFT fine-tuning.')
        self.last_timing = {}
        self.fast = None
        if fast:
            self.enable_fast()

    @classmethod
    def from_pretrained(cls, path, platform='libero', action_head='auto', center_crop=True,
                        device='auto', dtype='auto', quantization=None, fast='auto',
                        use_film=False, **overrides):
        """
        Load an OpenVLA-OFT checkpoint folder, as OFT's fine-tuning writes it.

        ``platform`` ('libero', 'aloha', 'bridge') presets the constants; keyword overrides:
        ``chunk_len``, ``action_dim``, ``proprio_dim``, ``normalization`` ('q99' or 'minmax'),
        ``num_images``. ``action_head``: 'auto' (the L1 head when the folder has an
        ``action_head--*checkpoint.pt``, else discrete), 'l1' or 'discrete'. ``fast``: 'auto'
        (on for CUDA) or a bool: the fused decoder and CUDA graphs of ``oft_fast``.
        """
        if use_film:
            raise ConfigError('use_film=True: FiLM (language-conditioned vision) is not '
                              'supported; use an OFT checkpoint trained without FiLM.')
        if action_head not in HEADS:
            what = ('the diffusion head is not supported' if action_head == 'diffusion'
                    else 'not an action head')
            raise ConfigError(f'action_head={action_head!r}: {what}; use one of '
                              f'{", ".join(HEADS)}.')
        if fast not in ('auto', True, False):
            raise ConfigError(f"fast={fast!r} is not supported; use 'auto', True or False.")
        constants = OFTConstants.for_platform(platform, **overrides)
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f'checkpoint directory {path} does not exist or is not a '
                                  'directory: pass the folder OFT fine-tuning wrote.')
        refuse_unsupported(path)
        head_file = find_component(path, ACTION_HEAD)
        kind = ('l1' if head_file else 'discrete') if action_head == 'auto' else action_head
        if kind == 'l1' and head_file is None:
            raise CheckpointError(f"action_head='l1' but {path} has no action_head--<step>_"
                                  'checkpoint.pt; copy it from the fine-tuning run, or use '
                                  "action_head='discrete' for a checkpoint without one.")
        backbone = load_backbone(path, device, dtype, quantization)
        width = backbone.model.llama_config.hidden_size
        head = projector = None
        if kind == 'l1':
            head = load_into(L1RegressionHead(width, constants.action_dim, constants.chunk_len),
                             load_component(head_file), head_file, constants, width)
            projector_file = find_component(path, PROPRIO_PROJECTOR)
            if projector_file is not None and constants.proprio_dim:
                projector = load_into(ProprioProjector(width, constants.proprio_dim),
                                      load_component(projector_file), projector_file,
                                      constants, width)
        for module in (head, projector):
            if module is not None:
                module.to(device=backbone.device, dtype=backbone.dtype).eval()
        return cls(backbone, constants, head, projector, center_crop,
                   fast=backbone.device.type == 'cuda' if fast == 'auto' else fast)

    def enable_fast(self, cuda_graphs=None):
        """Switch ``predict`` to the fused decoder (CUDA graphs on CUDA); return the path."""
        from vla_ros.policy.oft.fast import OFTFastPath
        self.fast = OFTFastPath(self, cuda_graphs=cuda_graphs)
        self.fast.warmup()
        return self.fast

    # ---- the API of DESIGN.md -------------------------------------------------------------------
    @property
    def chunk_len(self):
        """Return the number of actions of each chunk."""
        return self.constants.chunk_len

    @property
    def action_dim(self):
        """Return the length of one action."""
        return self.constants.action_dim

    @property
    def center_crop(self):
        """Return whether frames get the 0.9-area center crop (the processor's setting)."""
        return self.processor.center_crop

    @center_crop.setter
    def center_crop(self, value):
        self.processor.center_crop = bool(value)

    @property
    def description(self):
        """Return 'OpenVLA-OFT, platform <platform>'."""
        return f'OpenVLA-OFT, platform {self.constants.platform}'

    @property
    def proprio_dim(self):
        """Return the state length ``predict`` needs, 0 when there is no proprio projector."""
        return self.constants.proprio_dim if self.forward.proprio_projector is not None else 0

    @property
    def num_images(self):
        """Return the number of camera images ``predict`` takes, primary first."""
        return self.constants.num_images

    def predict(self, images, instruction, proprio=None, unnorm_key=None, *, timing=False):
        """
        Predict one chunk from ``images`` (primary first), the task and the state.

        ``images``: a list of ``num_images`` PIL images or uint8 (H, W, 3) arrays; ``proprio``:
        ``proprio_dim`` numbers in the dataset's raw units (None without a projector; a
        discrete-head checkpoint ignores it, as OFT does). Returns an ``Action`` whose ``values``
        are float64 (chunk_len, action_dim).
        """
        if self.model is None:
            raise PolicyError('this policy was closed; load it again with '
                              'OpenVLAOFTPolicy.from_pretrained(...).')
        key = self.resolve_unnorm_key(unnorm_key)
        clock = PhaseClock(self.device, exact=timing or self.device.type != 'cuda')
        with torch.inference_mode():
            inputs = self.inputs(images, instruction, proprio, key)
            clock.mark('preprocess')
            run = self.fast.run if self.fast is not None else self._run_plain
            out = run(*inputs, clock)
            result = out.cpu().numpy()[0]  # the one device-to-host copy
        clock.mark('head')
        action = self._action(result, key)
        self.last_timing = clock.result()
        action.timing.update(self.last_timing)
        return action

    def inputs(self, images, instruction, proprio, key):
        """Return (pixel values (1, 6N, 224, 224), ids (1, L + K + 1), keep, proprio or None)."""
        images = list(images) if isinstance(images, (list, tuple)) else None
        if images is None or len(images) != self.num_images:
            got = f'{len(images)} image(s)' if images is not None else 'no list'
            raise InputError(f'images must be a list of {self.num_images} images (primary '
                             f'camera first, then the wrist cameras), got {got}.')
        state = None
        if self.forward.proprio_projector is not None:
            if proprio is None:
                raise InputError(f'this checkpoint has a proprio projector: pass proprio, '
                                 f'{self.proprio_dim} numbers in the raw units of the dataset.')
            bounds = self._stats[key][1]
            normalized = bounds.normalize(check_proprio(proprio, self.proprio_dim))
            state = torch.tensor(normalized[None], dtype=torch.float32, device=self.device)
        prompt_ids = self.processor.prompt_ids(instruction)
        slots = self.constants.num_action_slots
        positions = self.model.llama_config.max_position_embeddings
        limit = positions - self.forward.num_patches - slots - 1  # the sequence fills them all
        if len(prompt_ids) > limit:
            raise InputError(f'the instruction gives a prompt of {len(prompt_ids)} token ids; '
                             f'this model takes at most {limit} (its {positions} positions less '
                             'the image patches and action slots): shorten the instruction.')
        ids, keep, _ = self.processor.layout([prompt_ids], self.device)  # (1, L + K + 1)
        resize_on = self.device if self.device.type == 'cuda' else None  # the same bits
        pixel_values = self.processor.pixel_values(
            [self.processor.frame_crops(image, i, resize_on) for i, image in enumerate(images)],
            self.device)  # (1, 6N, 224, 224)
        return pixel_values, ids, keep, state

    def _run_plain(self, pixel_values, ids, keep, proprio, clock):
        """Run transformers' LlamaModel with a 4-D all-true mask: bidirectional, as OFT's fork."""
        patches = self.forward.patches(pixel_values)
        clock.mark('vision')
        hidden = self._hidden_states(self.forward.sequence(ids, keep, patches, proprio))
        clock.mark('llm')
        start = self._slot_start(ids)
        return self.forward.head(hidden[:, start:start + self.constants.num_action_slots])

    def _hidden_states(self, embeds):  # (1, T, D) -> (1, T, D) after the final norm
        length = embeds.shape[1]
        everywhere = torch.ones((1, 1, length, length), dtype=torch.bool, device=self.device)
        return self.model.language_model.model(inputs_embeds=embeds,
                                               attention_mask=everywhere).last_hidden_state

    def _slot_start(self, ids):
        prompt = ids.shape[1] - self.constants.num_action_slots - 1  # L
        return self.forward.num_patches + prompt - 1

    def _action(self, result, key):
        """Build the ``Action`` from the head's output (normalised float32, or token ids)."""
        bounds = self._stats[key][0]
        shape = (self.constants.chunk_len, self.constants.action_dim)
        if self.head_kind == 'l1':
            normalized = result.reshape(shape)  # float32, as the reference's numpy
            return Action(values=bounds.unnormalize(normalized), valid=True,
                          token_ids=np.zeros(0, np.int64),
                          normalized=normalized.astype(np.float64), unnorm_key=key)
        ids = result.astype(np.int64).reshape(-1)  # (K,)
        normalized, valid = normalized_from_tokens(ids, self.config.vocab_for_decoding,
                                                   self.config.n_action_bins)
        normalized = normalized.reshape(shape)
        low, high = action_token_range(self.config.vocab_for_decoding, self.config.n_action_bins)
        reason = '' if valid else (f'{int(np.sum((ids < low) | (ids > high)))} of {ids.size} '
                                   f'decoded ids are not action tokens ({low}..{high})')
        return Action(values=bounds.unnormalize(normalized), valid=valid, token_ids=ids,
                      normalized=normalized, reason=reason, unnorm_key=key)

    def intermediates(self, images, instruction, proprio=None, unnorm_key=None):
        """Every stage of one plain forward pass as numpy arrays (conformance, debugging)."""
        key = self.resolve_unnorm_key(unnorm_key)
        with torch.inference_mode():
            pixel_values, ids, keep, state = self.inputs(images, instruction, proprio, key)
            patches = self.forward.patches(pixel_values)
            embeds = self.forward.sequence(ids, keep, patches, state)
            hidden = self._hidden_states(embeds)
            start = self._slot_start(ids)
            slots = hidden[:, start:start + self.constants.num_action_slots]
            arrays = {'pixel_values': pixel_values, 'projected_patch_embeddings': patches,
                      'llm_inputs_embeds': embeds, 'llm_last_hidden_state': hidden,
                      'actions_hidden_states': slots, 'head_output': self.forward.head(slots)}
            if state is not None:
                arrays['proprio_projection'] = self.forward.proprio_projector(
                    state.to(self.dtype))
        result = {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                  for k, v in arrays.items()}
        result['llm_input_ids_full'] = ids[0].cpu().numpy()
        result['action_hidden_slice'] = (start, start + self.constants.num_action_slots)
        return result

    def close(self):
        """Free the weights (and the GPU cache); the policy cannot predict afterwards."""
        self.model = self.forward = self.fast = None
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

    def __repr__(self):
        return (f'OpenVLAOFTPolicy(platform={self.constants.platform!r}, head={self.head_kind}, '
                f'chunk={self.chunk_len}x{self.action_dim}, images={self.num_images}, '
                f'proprio_dim={self.proprio_dim}, device={self.device}, dtype={self.dtype})')
