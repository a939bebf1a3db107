"""
The network being fine-tuned: OFT's forward pass on a batch, LoRA through ``peft``, merged weights.

``TrainModel`` holds the backbone (``OpenVLAModel``), the L1 regression head and the proprio
projector, and runs the policy's own forward pass (``oft.OFTForward``: patches, sequence with
the proprio token and zeroed action slots, head) on a right-padded batch. The sequence is
bidirectional as at inference; padding is only ever a key that no position attends to, and each
sample's positions start at 0, so a sample's output does not depend on the batch it is in.

Modes (``TrainConfig.mode``), OFT's recipe:

- ``lora``: LoRA adapters (``peft``, ``init_lora_weights='gaussian'``) on the backbone's linear
  layers (``lora_target`` 'all', OFT's ``all-linear``: towers, projector and LLM, not
  ``lm_head``; or 'llm': the LLM only), plus the head and projector, all trained;
- ``lora_only``: the adapters only; the base's head and projector stay as they are;
- ``full``: every backbone weight (but the unused ``lm_head``), the head and the projector.

``aux_object`` (``--aux-object``) adds the auxiliary head: a linear map from the action slots'
mean hidden state to the named object's (standardised) position, trained beside the L1 loss so
that the backbone learns where the instruction's object is (the simulator knows; a real VLA
brings that grounding from pretraining). It is training's only: the checkpoint has no place for
it and the policy never runs it.

``merged_state_dict`` returns the backbone's weights with each adapter folded in
(``W + B A * scaling``, peft's ``get_delta_weight``) under the checkpoint's own tensor names,
so the output folder loads with ``load_backbone`` like any checkpoint; the model keeps training
with its adapters unmerged.
"""

import torch
from torch import nn

from vla_ros.policy.backbone.loading import load_backbone
from vla_ros.policy.oft.modeling import (L1RegressionHead, load_component, load_into,
                                         ProprioProjector)
from vla_ros.policy.oft.policy import OFTForward

LORA_MARK = 'lora_'


class TrainModel(nn.Module):
    """Backbone, L1 head and proprio projector; ``forward(**batch)`` -> normalised chunks."""

    def __init__(self, vla, constants, action_head, proprio_projector=None, object_head=None):
        super().__init__()
        self.vla = vla
        self.action_head = action_head
        self.proprio_projector = proprio_projector
        self.object_head = object_head
        self.constants = constants

    def forward(self, pixel_values, ids, keep, prompt_len, seq_len, proprio=None, actions=None,
                object_position=None):
        """
        Return normalised chunks (B, chunk, A) float32 for a ``dataset.collate`` batch.

        With an ``object_head``, return (chunks, the named object's position (B, 3)). The
        targets (``actions``, ``object_position``) are accepted and ignored, so a whole batch
        can be passed.
        """
        forward = OFTForward(self.vla, self.constants, self.action_head, self.proprio_projector)
        patches = forward.patches(pixel_values)  # (B, 256 N, D)
        if proprio is not None and self.proprio_projector is None:
            proprio = None
        embeds = forward.sequence(ids, keep, patches, proprio)  # (B, T, D)
        batch, length, width = embeds.shape
        prefix = forward.num_patches  # image patches (+ the proprio token) after BOS
        valid = torch.arange(length, device=embeds.device)[None] < (prefix + seq_len)[:, None]
        mask = valid[:, None, None, :].expand(batch, 1, length, length)  # keys, bidirectional
        hidden = self.vla.language_model.model(inputs_embeds=embeds,
                                               attention_mask=mask).last_hidden_state
        slots = self.constants.num_action_slots
        start = prefix + prompt_len - 1  # (B,): from the prompt's last token (OFT's off-by-one)
        index = start[:, None] + torch.arange(slots, device=embeds.device)[None]  # (B, K)
        hidden = hidden.gather(1, index[..., None].expand(batch, slots, width))  # (B, K, D)
        chunks = forward.head(hidden)  # (B, chunk, A)
        if self.object_head is None:
            return chunks
        return chunks, self.object_head(hidden.float().mean(dim=1))  # (B, 3)


def load_heads(width, constants, head_file, projector_file, with_projector):
    """Return (L1 head, proprio projector or None): the base's where it has them, else new."""
    head = L1RegressionHead(width, constants.action_dim, constants.chunk_len)
    if head_file is not None:
        load_into(head, load_component(head_file), head_file, constants, width)
    projector = None
    if with_projector:
        projector = ProprioProjector(width, constants.proprio_dim)
        if projector_file is not None:
            load_into(projector, load_component(projector_file), projector_file, constants,
                      width)
    return head, projector


def lora_targets(vla, target):
    """Return the names of the linear layers LoRA adapts (OFT's all-linear, or the LLM's)."""
    return [name for name, module in vla.named_modules()
            if isinstance(module, nn.Linear) and name != 'language_model.lm_head'
            and (target == 'all' or name.startswith('language_model.'))]


def build_model(config, constants, device, dtype, head_file, projector_file, with_projector):
    """
    Load the base and set it up for ``config.mode``; return (``TrainModel``, its backbone).

    Trainable parameters are float32 whatever ``dtype`` the frozen weights have.
    """
    backbone = load_backbone(config.base, device, dtype)
    vla = backbone.model
    width = vla.llama_config.hidden_size
    head, projector = load_heads(width, constants, head_file, projector_file, with_projector)
    for name, param in vla.named_parameters():
        param.requires_grad_(config.mode == 'full' and name != 'language_model.lm_head.weight')
    if config.mode != 'full':
        from peft import inject_adapter_in_model, LoraConfig

        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                          lora_dropout=config.lora_dropout,
                          target_modules=lora_targets(vla, config.lora_target),
                          init_lora_weights='gaussian')
        inject_adapter_in_model(lora, vla)
        for name, param in vla.named_parameters():
            param.requires_grad_(LORA_MARK in name)
            if LORA_MARK in name:
                param.data = param.data.float()
    heads_train = config.mode != 'lora_only'
    for module in (head, projector):
        if module is not None:
            module.to(device=backbone.device, dtype=torch.float32)
            module.requires_grad_(heads_train)
    objects = None
    if config.aux_object:
        objects = nn.Linear(width, 3).to(device=backbone.device, dtype=torch.float32)
    return TrainModel(vla, constants, head, projector, objects), backbone


def trainable_parameters(model):
    """Return ``{name: parameter}`` of every parameter that is trained."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def merged_state_dict(vla, names):
    """
    Return the backbone's tensors under the checkpoint's ``names``, LoRA folded in (CPU).

    A LoRA layer (peft's) is any module with ``get_base_layer`` and ``get_delta_weight``, so
    ``--full`` needs no peft. Raises ``RuntimeError`` if a name is missing (it would not load).
    """
    state = {}
    for key, value in vla.state_dict().items():
        if LORA_MARK not in key:
            state[key.replace('.base_layer.', '.')] = value
    with torch.no_grad():
        for name, module in vla.named_modules():
            if hasattr(module, 'get_delta_weight') and hasattr(module, 'get_base_layer'):
                base = module.get_base_layer().weight
                delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
                state[f'{name}.weight'] = base + delta.to(base.dtype)
    missing = sorted(set(names) - set(state))
    if missing:
        raise RuntimeError(f'internal error: merged weights lack {missing[:4]}')
    return {name: state[name].detach().cpu().contiguous() for name in names}


def head_state(module):
    """Return ``module``'s state dict as OFT saves it through DDP: keys prefixed ``module.``."""
    return {f'module.{k}': v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
