"""
The OpenVLA network, with submodule names equal to the released checkpoint keys.

Fused DINOv2 + SigLIP towers (timm), a 3-layer GELU projector and Llama-2 (transformers
``LlamaForCausalLM``):

    vision_backbone.featurizer.*        timm vit_large_patch14_reg4_dinov2.lvd142m
    vision_backbone.fused_featurizer.*  timm vit_so400m_patch14_siglip_224
    projector.fc1 / fc2 / fc3
    language_model.model.*              LlamaModel
    language_model.lm_head              untied, 32064 rows

The forward pass is split at the seams a fast path needs: ``embed_image`` (towers + projector),
``embed_prompt`` (patches inserted right after BOS), ``prefill`` and ``decode_step`` on a KV cache,
and ``greedy_decode`` around them.
"""

import inspect

import timm
from timm.layers import LayerScale as TimmLayerScale
import torch
from torch import nn

from vla_ros.policy.backbone.configuration import OpenVLAConfig


class LayerScale(nn.Module):
    """
    timm's LayerScale (``x * gamma``) with its parameter named ``scale_factor``.

    The reference renames timm's ``gamma`` to ``scale_factor`` because Hugging Face loading
    rewrites "gamma" in key names; the released keys are ``blocks.N.ls1.scale_factor``. Using this
    module in the towers keeps ``state_dict()`` keys equal to the checkpoint with no renaming.
    """

    def __init__(self, dim):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.empty(dim))

    def forward(self, x):  # (B, N, D)
        return x * self.scale_factor


def create_tower(timm_id, image_size=224, **override_kwargs):
    """
    Build one vision tower as the reference does.

    ``timm.create_model(id, pretrained=False, num_classes=0, img_size=224, act_layer=None,
    **timm_override_kwargs)``; ``act_layer=None`` gives exact (erf) GELU.
    """
    kwargs = {'act_layer': None}
    kwargs.update(override_kwargs)
    vit = timm.create_model(timm_id, pretrained=False, num_classes=0, img_size=image_size,
                            **kwargs)
    for block in vit.blocks:
        for name in ('ls1', 'ls2'):
            old = getattr(block, name, None)
            if isinstance(old, TimmLayerScale):
                new = LayerScale(old.gamma.shape[0])
                setattr(block, name, new.to(old.gamma.device))
    return vit


def tower_patches(vit, pixel_values):
    """
    Patch features of the second-to-last block, prefix tokens dropped, no final norm.

    Same as the reference's ``get_intermediate_layers(x, n={depth - 2})``, but it stops there
    instead of running (and discarding) the last block.
    """
    (x,) = vit.forward_intermediates(pixel_values, indices=[len(vit.blocks) - 2], norm=False,
                                     stop_early=True, output_fmt='NLC', intermediates_only=True)
    return x  # (B, N, D): N = 256 patches, row-major 16x16


class FusedVisionBackbone(nn.Module):
    """DINOv2 ViT-L/14-reg4 and SigLIP So400m/14 side by side; features concatenated."""

    def __init__(self, config):
        super().__init__()
        image_size = config.image_sizes[0]
        self.featurizer = create_tower(config.timm_model_ids[0], image_size,
                                       **config.tower_kwargs(0))
        self.fused_featurizer = create_tower(config.timm_model_ids[1], image_size,
                                             **config.tower_kwargs(1))
        self.embed_dim = self.featurizer.embed_dim + self.fused_featurizer.embed_dim

    def towers(self, pixel_values):  # (B, 6, H, W)
        """Return (DINOv2 patches (B, N, D1), SigLIP patches (B, N, D2))."""
        dino = tower_patches(self.featurizer, pixel_values[:, :3])  # (B, N, D1)
        siglip = tower_patches(self.fused_featurizer, pixel_values[:, 3:])  # (B, N, D2)
        return dino, siglip

    def forward(self, pixel_values):  # (B, 6, H, W)
        dino, siglip = self.towers(pixel_values)
        return torch.cat([dino, siglip], dim=2)  # (B, N, D1 + D2)


class FusedMLPProjector(nn.Module):
    """fc1 (D -> 4D) -> GELU -> fc2 (4D -> C) -> GELU -> fc3 (C -> C); exact GELU."""

    def __init__(self, vision_dim, llm_dim):
        super().__init__()
        hidden = 4 * vision_dim
        self.fc1 = nn.Linear(vision_dim, hidden, bias=True)
        self.fc2 = nn.Linear(hidden, llm_dim, bias=True)
        self.fc3 = nn.Linear(llm_dim, llm_dim, bias=True)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU()

    def forward(self, features):  # (B, N, D)
        x = self.act_fn1(self.fc1(features))  # (B, N, 4D)
        x = self.act_fn2(self.fc2(x))  # (B, N, C)
        return self.fc3(x)  # (B, N, C)


def _cache_keyword(module):
    """
    Return the name under which ``module.forward`` takes a KV cache.

    transformers 5.x renamed ``past_key_values`` to ``cache`` and deprecated the old name
    (removed in 5.40); older releases only know ``past_key_values``.
    """
    return 'cache' if 'cache' in inspect.signature(module.forward).parameters \
        else 'past_key_values'


class OpenVLAModel(nn.Module):
    """The whole network; ``state_dict()`` keys are the released checkpoint's keys."""

    def __init__(self, config: OpenVLAConfig, attn_implementation='sdpa'):
        from transformers import LlamaForCausalLM

        super().__init__()
        self.config = config
        self.llama_config = config.llama_config(attn_implementation)
        self.vision_backbone = FusedVisionBackbone(config)
        self.projector = FusedMLPProjector(self.vision_backbone.embed_dim,
                                           self.llama_config.hidden_size)
        self.language_model = LlamaForCausalLM(self.llama_config)
        self._cache_keyword = _cache_keyword(self.language_model.model)

    # ---- vision ---------------------------------------------------------------------------------
    def embed_image(self, pixel_values):  # (B, 6, H, W)
        """Projected patch embeddings of the image: (B, N, C)."""
        dtype = self.projector.fc1.weight.dtype
        features = self.vision_backbone(pixel_values.to(dtype))  # (B, N, D)
        return self.projector(features)  # (B, N, C)

    def embed_prompt(self, input_ids, patches):
        """[embed(BOS), patches, embed(ids[1:])]: (B, 1 + N + T - 1, C)."""
        tokens = self.language_model.get_input_embeddings()(input_ids)  # (B, T, C)
        patches = patches.to(tokens.dtype)
        return torch.cat([tokens[:, :1], patches, tokens[:, 1:]], dim=1)  # (B, N + T, C)

    # ---- language model -------------------------------------------------------------------------
    def new_cache(self):
        """Return an empty KV cache for one generation."""
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.llama_config)
        except TypeError:  # transformers < 4.56 takes no config
            return DynamicCache()

    def _logits(self, hidden):  # (B, T, C)
        return self.language_model.lm_head(hidden[:, -1])  # (B, V), last position only

    def prefill(self, inputs_embeds, cache):  # (B, T, C)
        """Run the prompt through the LLM (positions 0..T-1); return the last logits (B, V)."""
        out = self.language_model.model(inputs_embeds=inputs_embeds, use_cache=True,
                                        **{self._cache_keyword: cache})
        return self._logits(out.last_hidden_state)

    def decode_step(self, token_ids, cache):  # (B, 1)
        """One cached step; the position is the cache length. Returns logits (B, V)."""
        out = self.language_model.model(input_ids=token_ids, use_cache=True,
                                        **{self._cache_keyword: cache})
        return self._logits(out.last_hidden_state)

    def greedy_decode(self, logits, cache, max_new_tokens, eos_token_id):
        """
        Greedy tokens from the prefill ``logits`` (1, V), stopping after EOS or ``max_new_tokens``.

        Returns ``(ids, hit_eos)``; ids is a list of ints, EOS included when it was produced. The
        only host sync per step is the EOS check.
        """
        tokens, hit_eos = [], False
        for step in range(max_new_tokens):
            token = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
            tokens.append(token)
            if token.item() == eos_token_id:
                hit_eos = True
                break
            if step + 1 < max_new_tokens:
                logits = self.decode_step(token, cache)  # (1, V)
        return torch.cat(tokens, dim=1)[0].tolist(), hit_eos  # one copy of all ids
