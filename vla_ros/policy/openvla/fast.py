"""
The fast inference path of ``OpenVLAPolicy``, in the manner of gpt-fast.

Same weights, same greedy actions as the plain path (``modeling.OpenVLAModel.greedy_decode`` over
a transformers ``DynamicCache``), less work around them:

- ``decoder.FusedLlama``: prefill and one-token decode over the weights of the loaded
  ``LlamaForCausalLM``, 14 kernels per decode layer (fused RMSNorm, q/k/v and gate/up matmuls
  over fused weights that the modules' parameters are views of, RoPE on q and k in three ops,
  residuals folded into the output matmuls). A static KV cache of ``max_seq`` positions is
  allocated once; RoPE cos/sin are precomputed by the model's own rotary module. Prefill starts
  at position 0, so it attends causally over its own keys (``is_causal``: flash attention on
  CUDA); a decode step attends over the whole cache with an additive mask of the valid
  positions, built once per step, so its shapes never change and ``input_pos`` is a device
  tensor.
- ``FastPath``: the whole predict. Preprocessing resizes once per distinct tower transform with
  PIL (bit-exact bicubic), uploads uint8 once and normalises on the device. Decoding runs all
  ``n`` steps with no host sync, keeps the tokens in a device buffer and copies them to the host
  once; EOS is applied afterwards, which is exact for greedy decoding (a token never depends on
  later ones).
- On CUDA, the vision towers + projector, one prefill per length bucket (the prompt is padded at
  the end, invisible to causal attention) and one decode step are captured as CUDA graphs at
  ``warmup()``, called at load time, never by the first ``predict``. A graph whose replay does
  not match an eager run, or that cannot be captured, is dropped with a warning (eager instead).
- ``generate_baseline``: transformers ``generate()`` over the same modules, for the benchmark.

Why fuse when CUDA graphs already remove the CPU cost of launches: a graph does not remove the
GPU time of each kernel (about 2-5 us of launch latency and ramp each, times 40 per layer and 32
layers per decode step), nor the memory traffic of the unfused elementwise chains.
"""

import warnings

import numpy as np
import torch

from vla_ros.policy.backbone.decoder import FusedLlama
from vla_ros.policy.backbone.graphs import capture_report, GraphCapture


FAST_MAX_SEQ = 512  # static cache positions: 256 patches + prompt + generated tokens
PREFILL_BUCKET = 32  # CUDA graph prefill lengths are multiples of this
WARMUP_PROMPT = 'In: What action should the robot take to pick up the red cup?\nOut:'


class FastPath:
    """
    Everything ``OpenVLAPolicy.predict`` runs on its fast path, with buffers allocated once.

    ``model``: the loaded ``OpenVLAModel``; ``image_processor``: its ``ImageProcessor``;
    ``max_new_tokens``: the largest action dim; ``cuda_graphs``: None = on for CUDA;
    ``static_shapes`` (default: as ``cuda_graphs``): bucket-padded prefill and masked whole-cache
    decode, the shapes the graphs are captured with, also when running eagerly (tests use it on
    the CPU to check the graphs' arithmetic).
    """

    def __init__(self, model, image_processor, max_new_tokens, max_seq=FAST_MAX_SEQ,
                 cuda_graphs=None, static_shapes=None):
        self.model = model
        self.processor = image_processor
        self.llm = FusedLlama(model.language_model, max_seq)
        self.max_seq = self.llm.max_seq
        self.max_new_tokens = int(max_new_tokens)
        weight = self.llm.embed.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.num_patches = model.vision_backbone.featurizer.patch_embed.num_patches
        if self.max_seq < self.num_patches + PREFILL_BUCKET:
            raise ValueError(f'max_seq {self.max_seq} leaves no room for a prompt after the '
                             f'{self.num_patches} image patches; use {FAST_MAX_SEQ}.')
        self.cuda_graphs = (self.device.type == 'cuda') if cuda_graphs is None else cuda_graphs
        # bitsandbytes int8 (threshold 6.0) splits outliers by the data and syncs: no graphs.
        self.llm_graphs = not any(type(m).__name__ == 'Linear8bitLt'
                                  for m in model.language_model.modules())
        self.static_shapes = self.cuda_graphs if static_shapes is None else static_shapes
        hidden = self.llm.embed.embedding_dim
        with torch.no_grad():
            new = torch.zeros
            self.tokens = new(1, self.max_new_tokens, dtype=torch.long, device=self.device)
            self.token = new(1, 1, dtype=torch.long, device=self.device)  # decode input
            self.pos = new(1, dtype=torch.long, device=self.device)  # its position
            self.last = new(1, dtype=torch.long, device=self.device)  # last prompt position
            self.embeds = new(1, self.max_seq, hidden, dtype=self.dtype, device=self.device)
            crop = self.processor.towers[0].crop  # (224, 224), checked at load
            self.pixels = new((1, 3 * len(self.processor.towers), *crop), device=self.device)
        self._vision_graph = self._decode_graph = None
        self._prefill_graphs = {}
        self._capture = None  # warmup's GraphCapture: what it captured, what failed

    # ---- preprocessing --------------------------------------------------------------------------
    def inputs(self, image, input_ids):
        """
        Return (pixel values (1, 6, 224, 224) float32, ids (1, T) long), both on the device.

        ``ImageProcessor``'s own two steps: its host crops (PIL, uint8) uploaded once, its
        ``normalize`` run on the device. Both uploads happen here, before any device work is
        queued, so they never wait on it.
        """
        pixels = torch.from_numpy(self.processor.crops(image)).to(self.device)  # (K, H, W, 3)
        ids = torch.tensor([input_ids], dtype=torch.long).to(self.device)  # (1, T)
        return self.processor.normalize(pixels), ids

    # ---- the forward pass -----------------------------------------------------------------------
    def fits(self, num_ids, num_new):
        """Return True if a prompt of ``num_ids`` ids and ``num_new`` tokens fit the cache."""
        return (num_new <= self.max_new_tokens
                and num_ids + self.num_patches + num_new - 1 <= self.max_seq)

    def embed_image(self, pixel_values):  # (1, 6, 224, 224)
        """Projected patches (1, N, C); a graph replay when one was captured."""
        if self._vision_graph is None:
            return self.model.embed_image(pixel_values)
        self.pixels.copy_(pixel_values)
        return self._vision_graph.replay()

    def prefill(self, embeds):  # (1, T, C)
        """Fill the cache with the prompt ``embeds``; return the last position's logits (1, V)."""
        length = embeds.shape[1]
        self.last.fill_(length - 1)
        if not self.static_shapes:
            return self.llm.prefill(embeds, self.last)
        bucket = min(self.max_seq, -(-length // PREFILL_BUCKET) * PREFILL_BUCKET)
        self.embeds[:, :length].copy_(embeds)
        self.embeds[:, length:bucket].zero_()  # padding: finite, after every real position
        graph = self._prefill_graphs.get(bucket)
        if graph is None:
            return self.llm.prefill(self.embeds[:, :bucket], self.last)
        return graph.replay()

    def _step(self, length=None):
        logits = self.llm.decode_step(self.token, self.pos, length)  # (1, V)
        return logits, logits.argmax(dim=-1, keepdim=True)  # (1, V), (1, 1)

    def decode(self, logits, start, num_new):
        """
        Greedy ids from the prefill ``logits`` (1, V) of a prompt of ``start`` positions.

        All ``num_new`` steps run with no host sync; the ids are copied to the host once.
        """
        self.token.copy_(logits.argmax(dim=-1, keepdim=True))
        self.tokens[:, :1].copy_(self.token)
        for i in range(1, num_new):
            self.pos.fill_(start + i - 1)  # position of the token fed in
            if self._decode_graph is not None:
                _, token = self._decode_graph.replay()  # (1, 1)
            else:
                _, token = self._step(None if self.static_shapes else start + i)
            self.token.copy_(token)
            self.tokens[:, i:i + 1].copy_(token)
        return self.tokens[0, :num_new].tolist()  # the one device-to-host copy

    def generate(self, pixel_values, ids, num_new, eos_token_id, clock=None):
        """
        Return ``(generated ids, hit_eos)`` exactly as ``OpenVLAModel.greedy_decode`` would.

        ``pixel_values`` and ``ids`` come from ``inputs``; ``clock.mark`` (optional) is called
        after vision, prefill and decode.
        """
        mark = clock.mark if clock is not None else (lambda phase: None)
        patches = self.embed_image(pixel_values)  # (1, N, C)
        mark('vision')
        embeds = self.model.embed_prompt(ids, patches)  # (1, T, C)
        logits = self.prefill(embeds)  # (1, V)
        mark('prefill')
        generated = self.decode(logits, embeds.shape[1], num_new)
        mark('decode')
        if eos_token_id in generated:  # stop at the first EOS, as generation would have
            return generated[:generated.index(eos_token_id) + 1], True
        return generated, False

    # ---- CUDA graphs ----------------------------------------------------------------------------
    def warmup(self, tokenizer, image=None, prompt=WARMUP_PROMPT):
        """
        Run every piece once and capture the CUDA graphs (when enabled); call at load time.

        Captures the vision towers + projector, one prefill per length bucket from the shortest
        possible prompt up to ``max_seq``, and one decode step. Returns the number of graphs.
        """
        if not self.cuda_graphs:
            return 0  # nothing to capture; the first eager call costs no more than later ones
        if image is None:
            image = np.full((224, 224, 3), 128, np.uint8)
        ids_list = tokenizer.model_input_ids(prompt)
        graphs = self._capture = GraphCapture(self.device)
        with torch.inference_mode(), graphs.on_device():
            pixel_values, _ = self.inputs(image, ids_list)
            patches = self.model.embed_image(pixel_values)
            self.pixels.copy_(pixel_values)
            self._vision_graph = graphs.capture('vision towers',
                                                lambda: self.model.embed_image(self.pixels))
            if not self.llm_graphs:
                warnings.warn('fast path: bitsandbytes 8-bit layers synchronise and take '
                              'data-dependent shapes, so the language model runs eagerly (the '
                              'vision towers still replay a CUDA graph).', RuntimeWarning)
                graphs.synchronize()
                return int(self._vision_graph is not None)
            shortest = self.num_patches + 3  # BOS, one token, 29871
            first = -(-shortest // PREFILL_BUCKET) * PREFILL_BUCKET
            for bucket in range(first, self.max_seq + PREFILL_BUCKET, PREFILL_BUCKET):
                bucket = min(bucket, self.max_seq)
                if bucket in self._prefill_graphs:
                    continue
                length = bucket - 1  # a prompt that just fits the bucket
                text = (ids_list[1:] * length)[:length - self.num_patches - 1]
                ids = torch.tensor([ids_list[:1] + text], dtype=torch.long, device=self.device)
                embeds = self.model.embed_prompt(ids, patches)  # (1, length, C)
                self.embeds[:, :length].copy_(embeds)
                self.embeds[:, length:bucket].zero_()
                self.last.fill_(length - 1)
                view = self.embeds[:, :bucket]
                self._prefill_graphs[bucket] = graphs.capture(
                    f'prefill of {bucket}', lambda view=view: self.llm.prefill(view, self.last))
            self._prefill_graphs = {k: g for k, g in self._prefill_graphs.items() if g}
            self.token.copy_(self.prefill(embeds).argmax(dim=-1, keepdim=True))
            self.pos.fill_(embeds.shape[1])
            self._decode_graph = graphs.capture('decode step', self._step)
            graphs.synchronize()
        return (len(self._prefill_graphs) + (self._vision_graph is not None)
                + (self._decode_graph is not None))

    def graph_report(self):
        """Return the graphs captured and the failures: ``graphs.capture_report``."""
        return capture_report(self._capture)


class PhaseStreamer:
    """A transformers streamer that times the first generated token (the end of the prefill)."""

    def __init__(self, clock):
        self.clock = clock
        self.calls = 0

    def put(self, value):
        """Mark 'prefill' when the first generated token arrives (call 0 is the prompt)."""
        self.calls += 1
        if self.calls == 2:
            self.clock.mark('prefill')

    def end(self):
        """Mark 'decode' at the end of generation."""
        self.clock.mark('decode')


def generate_baseline(model, embeds, num_new, eos_token_id=2, pad_token_id=32000, clock=None):
    """
    Greedy ids from transformers' ``generate()`` on ``embeds`` (1, T, C): the benchmark baseline.

    The same modules and weights as both paths of the policy. Returns ``(ids, hit_eos)``;
    ``clock.mark`` (optional) gets 'prefill' and 'decode'.
    """
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)  # (1, T)
    out = model.language_model.generate(
        inputs_embeds=embeds, attention_mask=mask, max_new_tokens=num_new, do_sample=False,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=True,
        streamer=PhaseStreamer(clock) if clock is not None else None)  # (1, new) ids only
    ids = out[0].tolist()
    return ids, bool(ids) and ids[-1] == eos_token_id
