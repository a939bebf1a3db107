"""
The fused Llama decoder of the fast path: batch 1, a static KV cache, 14 kernels per layer.

``FusedLlama`` runs the layers of a loaded transformers ``LlamaForCausalLM`` with the same
weights, in three modes: ``prefill`` (causal, fills the cache from position 0), ``decode_step``
(one token against the whole cache under a mask of the valid positions: static shapes, for CUDA
graphs) and ``encode`` (bidirectional over the whole sequence, no cache: OpenVLA-OFT's one
forward pass). Every policy that runs the Llama backbone goes through it.

One decode layer launches 14 kernels (``python -m vla_ros.bench.kernels``; transformers' own
layer, as the fast path first called it, launched 40):

====================  ==============================================================
kernels               what
====================  ==============================================================
1 + 1                 ``F.rms_norm`` before attention and before the MLP (transformers'
                      RMSNorm is 5 to 8 kernels: casts, pow, mean, rsqrt, two muls)
1                     q, k and v in one matmul over one fused weight
3                     RoPE on q and k together: ``x * cos + roll(x) * sin'`` (mul, roll,
                      addcmul), ``sin'`` the sine with its first half negated, so
                      ``roll(x) * sin' == rotate_half(x) * sin``
2                     the new k and v into the cache
1                     attention (the additive mask is built once per step, not per layer)
1                     o_proj with the residual folded in (``addmm_`` into the residual)
1 + 2                 gate and up in one matmul; SiLU, multiply
1                     down_proj with the residual folded in (``addmm_``)
====================  ==============================================================

The residual additions are in place: an out-of-place ``addmm`` with a 2-D input copies that
input into its result before the GEMM on CUDA (two kernels, 16 per layer); ``addmm_`` writes
the GEMM with beta 1 into the residual itself. The caller's ``embeds`` are never overwritten.

Fused weights without a second copy: q/k/v (and gate/up) are concatenated once into a new
tensor and the modules' own parameters are re-pointed at views of it, so the memory stays that
of the checkpoint and the plain path keeps working on the same values. Weights that cannot be
fused (bitsandbytes, biases) are called through their modules instead, at a few more kernels.

Attention backends are pinned per phase on CUDA: flash (or memory-efficient) attention for the
causal prefill and the bidirectional encode, memory-efficient attention for the masked decode
step (flash takes no mask). On the CPU torch picks its fused CPU kernel.
"""

import contextlib

import torch
from torch import nn
from torch.nn import functional as F


def fuse_linears(linears):
    """
    Concatenate the weights of ``linears`` (same input) into one tensor, with no second copy.

    Each module's ``weight`` becomes a view of the fused (sum of outputs, input) tensor. Returns
    it, or None when a weight cannot be fused (a bias, a quantized or non-float weight).
    """
    weights = [linear.weight for linear in linears]
    plain = all(type(w) in (torch.Tensor, nn.Parameter) and w.is_floating_point()
                and getattr(linear, 'bias', None) is None
                for linear, w in zip(linears, weights))
    if not plain or len({(w.dtype, w.device, w.shape[1]) for w in weights}) != 1:
        return None
    already = _fused_view(weights)
    if already is not None:
        return already  # fused by an earlier fast path over the same model
    with torch.no_grad():
        fused = torch.cat([w.detach() for w in weights], dim=0)  # (sum N, C)
        offset = 0
        for linear, weight in zip(linears, weights):
            rows = weight.shape[0]
            linear.weight = nn.Parameter(fused[offset:offset + rows], requires_grad=False)
            offset += rows
    return fused


def _fused_view(weights):
    """Return the fused tensor ``weights`` are consecutive row blocks of, or None."""
    storage = weights[0].untyped_storage().data_ptr()
    width = weights[0].shape[1]
    start, rows = weights[0].storage_offset(), 0
    for weight in weights:
        if (weight.untyped_storage().data_ptr() != storage or not weight.is_contiguous()
                or weight.storage_offset() != start + rows * width):
            return None
        rows += weight.shape[0]
    return torch.as_strided(weights[0].detach(), (rows, width), (width, 1), start)


def attention_backends(device, masked):
    """Return a context pinning the SDPA backends of a phase on CUDA (nothing on the CPU)."""
    if device.type != 'cuda':
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel, SDPBackend
    if masked:
        return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH])


class FusedBlock:
    """One Llama decoder layer with fused weights; see the module docstring."""

    def __init__(self, layer, config):
        attn, mlp = layer.self_attn, layer.mlp
        self.layer = layer
        self.head_dim = attn.head_dim
        self.scale = attn.scaling
        self.n_q = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.gqa = {'enable_gqa': True} if self.n_kv != self.n_q else {}
        self.eps = layer.input_layernorm.variance_epsilon
        self.qkv = fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])  # (Hq+2Hkv)D x C
        self.gate_up = fuse_linears([mlp.gate_proj, mlp.up_proj])  # 2F x C

    def norm(self, x, which):
        weight = getattr(self.layer, which).weight
        return F.rms_norm(x, weight.shape, weight, self.eps)

    def attention_inputs(self, x, cos, sin):
        """Return q (1, Hq, T, D), k and v (1, Hkv, T, D) of ``x`` (1, T, C), RoPE applied."""
        h = self.norm(x, 'input_layernorm')
        attn = self.layer.self_attn
        if self.qkv is not None:
            qkv = F.linear(h, self.qkv)  # (1, T, (Hq + 2Hkv) D)
        else:
            qkv = torch.cat([attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)], dim=-1)
        qkv = qkv.view(1, x.shape[1], self.n_q + 2 * self.n_kv, self.head_dim)
        qk = qkv[:, :, :self.n_q + self.n_kv]  # (1, T, Hq + Hkv, D)
        qk = torch.addcmul(qk * cos, torch.roll(qk, self.head_dim // 2, -1), sin)
        q = qk[:, :, :self.n_q].transpose(1, 2)  # (1, Hq, T, D)
        k = qk[:, :, self.n_q:].transpose(1, 2)  # (1, Hkv, T, D)
        v = qkv[:, :, self.n_q + self.n_kv:].transpose(1, 2)  # (1, Hkv, T, D)
        return q, k, v

    def attend(self, q, k, v, mask=None, causal=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=self.scale, **self.gqa)  # (1, Hq, T, D)

    def finish(self, x, y, owned=True):
        """
        Return the layer output: x + o_proj(y), then + MLP; ``y`` is (1, Hq, T, D).

        ``owned``: ``x`` is this decoder's own tensor, which the residual matmuls may overwrite
        (``addmm_``: on CUDA an out-of-place ``addmm`` with a 2-D input first copies it into
        the result, one more kernel); False for the caller's ``embeds``, which stay unchanged.
        """
        tokens, width = x.shape[1], x.shape[2]
        attn, mlp = self.layer.self_attn, self.layer.mlp
        y = y.transpose(1, 2).reshape(tokens, -1)  # (T, C)
        if self.qkv is not None:
            residual = x.view(tokens, width)  # (T, C)
            weight = attn.o_proj.weight.t()
            if owned:
                x = residual.addmm_(y, weight).view(1, tokens, width)
            else:
                x = torch.addmm(residual, y, weight).view(1, tokens, width)
        else:
            x = x + attn.o_proj(y).view(1, tokens, width)
        h = self.norm(x, 'post_attention_layernorm')
        if self.gate_up is None:
            return x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
        gate, up = F.linear(h, self.gate_up).chunk(2, dim=-1)  # (1, T, F) each
        hidden = (mlp.act_fn(gate) * up).view(tokens, -1)  # (T, F)
        # x is owned here: an unowned input was left behind by the o_proj step.
        x.view(tokens, width).addmm_(hidden, mlp.down_proj.weight.t())
        return x


class FusedLlama:
    """
    Batch-1 Llama over a static KV cache of ``max_seq`` positions; shares every weight.

    ``cache=False`` allocates no KV cache (``encode`` only: OpenVLA-OFT's single pass).
    """

    def __init__(self, llama, max_seq, cache=True):
        config = llama.config
        self.layers = [FusedBlock(layer, config) for layer in llama.model.layers]
        self.embed = llama.model.embed_tokens
        self.final_norm = llama.model.norm
        self.lm_head = llama.lm_head
        self.max_seq = int(max_seq)
        weight = self.embed.weight
        self.device, dtype = weight.device, weight.dtype  # hidden states have this dtype
        head_dim = self.layers[0].head_dim
        with torch.no_grad():
            self.positions = torch.arange(self.max_seq, device=self.device)  # (S,)
            probe = torch.empty(0, device=self.device, dtype=dtype)
            cos, sin = llama.model.rotary_emb(probe, position_ids=self.positions[None])
            sign = torch.ones(head_dim, device=self.device, dtype=sin.dtype)
            sign[:head_dim // 2] = -1
            self.cos = cos[0][:, None]  # (S, 1, D), as transformers computes it
            self.sin = (sin[0] * sign)[:, None]  # (S, 1, D): rotate_half folded in
            self.masks, self.cache = None, []
            if cache:
                # Row p: 0 where a key position may be attended from position p, -inf after it.
                allowed = self.positions[None, :] <= self.positions[:, None]  # (S, S)
                self.masks = torch.zeros((self.max_seq, self.max_seq), device=self.device,
                                         dtype=dtype).masked_fill_(~allowed, float('-inf'))
                shape = (1, config.num_key_value_heads, self.max_seq, head_dim)
                self.cache = [(torch.zeros(shape, device=self.device, dtype=dtype),
                               torch.zeros(shape, device=self.device, dtype=dtype))
                              for _ in self.layers]

    def _norm(self, x):
        weight = self.final_norm.weight
        return F.rms_norm(x, weight.shape, weight, self.final_norm.variance_epsilon)

    def _logits(self, x):  # (1, 1, C)
        return self.lm_head(self._norm(x))[:, 0]  # (1, V)

    def prefill(self, embeds, last):
        """
        Run ``embeds`` (1, T, C) at positions 0..T-1 into the cache, causally.

        Returns the logits (1, V) at position ``last`` (a (1,) long device tensor); rows after it
        may be padding, which causal attention keeps out of every row up to ``last``.
        """
        length = embeds.shape[1]
        if length > self.max_seq:
            raise ValueError(f'prefill of {length} positions exceeds max_seq {self.max_seq}')
        cos, sin = self.cos[:length], self.sin[:length]  # (T, 1, D)
        x = embeds
        with attention_backends(self.device, masked=False):
            for block, (k_cache, v_cache) in zip(self.layers, self.cache):
                q, k, v = block.attention_inputs(x, cos, sin)
                k_cache[:, :, :length].copy_(k)
                v_cache[:, :, :length].copy_(v)
                x = block.finish(x, block.attend(q, k, v, causal=True), x is not embeds)
        return self._logits(x.index_select(1, last))  # (1, V)

    def decode_step(self, token, pos, length=None):
        """
        Run one token (1, 1) at position ``pos`` ((1,) long device tensor); return logits (1, V).

        With ``length`` = pos + 1 (a host int) attention reads only the valid cache prefix, as
        eager code can; without it, the whole cache under the mask of the valid positions
        (static shapes, for CUDA graphs).
        """
        x = self.embed(token)  # (1, 1, C)
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)  # (1, 1, D)
        mask = None
        if length is None:
            length = self.max_seq
            mask = self.masks.index_select(0, pos).view(1, 1, 1, self.max_seq)
        with attention_backends(self.device, masked=mask is not None):
            for block, (k_cache, v_cache) in zip(self.layers, self.cache):
                q, k, v = block.attention_inputs(x, cos, sin)  # (1, H, 1, D)
                k_cache.index_copy_(2, pos, k)
                v_cache.index_copy_(2, pos, v)
                y = block.attend(q, k_cache[:, :, :length], v_cache[:, :, :length], mask)
                x = block.finish(x, y)
        return self._logits(x)  # (1, V)

    def encode(self, embeds, key_mask=None):
        """
        Run ``embeds`` (1, T, C) at positions 0..T-1 with bidirectional attention, no cache.

        ``key_mask``: None, or an additive (1, 1, 1, T) mask (0 for real positions, -inf for
        padding). Returns the final hidden states after the last norm, (1, T, C).
        """
        length = embeds.shape[1]
        cos, sin = self.cos[:length], self.sin[:length]
        x = embeds
        with attention_backends(self.device, masked=key_mask is not None):
            for block in self.layers:
                q, k, v = block.attention_inputs(x, cos, sin)
                x = block.finish(x, block.attend(q, k, v, key_mask), x is not embeds)
        return self._norm(x)
