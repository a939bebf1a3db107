"""
The fast path of ``OpenVLAOFTPolicy``: one chunk per forward pass, captured as a CUDA graph.

The whole forward (towers, projector, proprio projector, the fused decoder's bidirectional
``encode`` over the sequence, the head) runs over static buffers. The sequence is padded at the
end to a bucket of ``BUCKET`` positions; an additive key mask keeps the padding out of every
real position's attention, and the action slots are gathered by an index buffer, so one graph
serves every prompt length in its bucket. On CUDA one graph per bucket is captured at load
(``GraphCapture``: on the policy's device, checked against an eager run, eager on failure); on
the CPU the same code runs eagerly, in exact shapes unless ``static_shapes``. A prompt past the
buckets (``MAX_PROMPT`` ids) runs eagerly in exact shapes, up to the model's last position.

The only host sync is the copy of the result (a chunk of normalised actions, or K token ids).
"""

import torch

from vla_ros.policy.backbone.decoder import FusedLlama
from vla_ros.policy.backbone.graphs import capture_report, GraphCapture

BUCKET = 32  # sequence lengths are padded to a multiple of this
MAX_PROMPT = 96  # prompt ids (after the 29871 rule) the buckets cover; longer run eagerly


class OFTFastPath:
    """Everything ``OpenVLAOFTPolicy.predict`` runs on its fast path; buffers allocated once."""

    def __init__(self, policy, cuda_graphs=None, static_shapes=None):
        self.forward = policy.forward
        model = policy.model
        self.device, self.dtype = policy.device, policy.dtype
        constants = policy.constants
        self.slots = constants.num_action_slots
        self.prefix = self.forward.num_patches  # image patches (+ the proprio token)
        self.max_seq = self._bucket(1 + self.prefix + MAX_PROMPT + self.slots)
        # RoPE rows for every position the model has: prompts past the buckets run eagerly.
        positions = model.language_model.config.max_position_embeddings
        self.llm = FusedLlama(model.language_model, max(self.max_seq, positions), cache=False)
        self.cuda_graphs = self.device.type == 'cuda' if cuda_graphs is None else cuda_graphs
        self.static_shapes = self.cuda_graphs if static_shapes is None else static_shapes
        self.prompt_limit = MAX_PROMPT
        images = constants.num_images
        tokens = self.max_seq - self.prefix  # ids of the longest bucket
        with torch.no_grad():
            zeros = torch.zeros
            self.pixels = zeros((1, 6 * images, 224, 224), device=self.device)
            self.proprio = zeros((1, max(constants.proprio_dim, 1)), device=self.device)
            self.ids = zeros((1, tokens), dtype=torch.long, device=self.device)
            self.keep = zeros((1, tokens, 1), device=self.device)
            self.key_mask = zeros((1, 1, 1, self.max_seq), device=self.device, dtype=self.dtype)
            self.slot_index = zeros(self.slots, dtype=torch.long, device=self.device)
        self._graphs = {}
        self._capture = None  # warmup's GraphCapture: what it captured, what failed

    def _bucket(self, length):
        return -(-length // BUCKET) * BUCKET

    def _body(self, pixels, proprio, ids, keep, key_mask, slot_index):
        """One forward pass over (static) tensors: the head's output."""
        patches = self.forward.patches(pixels)
        embeds = self.forward.sequence(ids, keep, patches, proprio)
        hidden = self.llm.encode(embeds, key_mask)  # (1, T, D)
        return self.forward.head(hidden.index_select(1, slot_index))

    def run(self, pixel_values, ids, keep, proprio, clock=None):
        """Return the head's output for the inputs ``OpenVLAOFTPolicy.inputs`` made."""
        prompt = ids.shape[1] - self.slots - 1
        start = self.prefix + prompt - 1
        if not self.static_shapes or prompt > self.prompt_limit:
            index = torch.arange(start, start + self.slots, device=self.device)
            out = self._body(pixel_values, proprio, ids, keep, None, index)
        else:
            length = self.prefix + ids.shape[1]  # the sequence, unpadded
            bucket = self._bucket(length)
            tokens = bucket - self.prefix
            self.pixels.copy_(pixel_values)
            if proprio is not None:
                self.proprio.copy_(proprio)
            self.ids[:, :ids.shape[1]].copy_(ids)
            self.ids[:, ids.shape[1]:].zero_()
            self.keep[:, :keep.shape[1]].copy_(keep)
            self.keep[:, keep.shape[1]:].zero_()
            self.key_mask[..., :length].zero_()
            self.key_mask[..., length:].fill_(float('-inf'))  # padding: never attended
            torch.arange(start, start + self.slots, out=self.slot_index)
            graph = self._graphs.get(bucket)
            if graph is not None:
                out = graph.replay()
            else:
                out = self._bucket_body(bucket, tokens)
        if clock is not None:
            clock.mark('forward')
        return out

    def _bucket_body(self, bucket, tokens):
        proprio = self.proprio if self.forward.proprio_projector is not None else None
        return self._body(self.pixels, proprio, self.ids[:, :tokens], self.keep[:, :tokens],
                          self.key_mask[..., :bucket], self.slot_index)

    def warmup(self):
        """Capture one CUDA graph per bucket (when enabled); return the number captured."""
        if not self.cuda_graphs:
            return 0
        graphs = self._capture = GraphCapture(self.device)
        with torch.inference_mode(), graphs.on_device():
            shortest = self._bucket(1 + self.prefix + 2 + self.slots + 1)
            for bucket in range(shortest, self.max_seq + BUCKET, BUCKET):
                tokens = bucket - self.prefix
                prompt = tokens - self.slots - 1  # a prompt that just fills the bucket
                self.ids[:, :tokens].fill_(1)
                self.keep[:, :tokens].fill_(1)
                self.key_mask.zero_()
                start = self.prefix + prompt - 1
                torch.arange(start, start + self.slots, out=self.slot_index)
                graph = graphs.capture(
                    f'OFT forward of {bucket}',
                    lambda bucket=bucket, tokens=tokens: self._bucket_body(bucket, tokens))
                if graph is not None:
                    self._graphs[bucket] = graph
            graphs.synchronize()
        return len(self._graphs)

    def graph_report(self):
        """Return the graphs captured and the failures: ``graphs.capture_report``."""
        return capture_report(self._capture)
