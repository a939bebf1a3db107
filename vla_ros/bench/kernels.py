"""
Count the aten ops that launch work, with a ``TorchDispatchMode``: the kernel budget on the CPU.

    with OpCounter() as ops:
        block(...)
    ops.launching   # Counter of op name -> calls, metadata-only ops left out

A ``TorchDispatchMode`` sees every op after composite ops are decomposed and dispatched, which
is what a CUDA graph would launch (one kernel per op here; a few ops launch two). Ops that only
create a view, change metadata or allocate (``view``, ``transpose``, ``slice``, ``empty``...)
launch nothing and are left out. One hidden kernel is counted: an out-of-place ``addmm`` with a
2-D input copies it into the result before the GEMM on CUDA (``addmm_out_cuda_impl``, below
the dispatcher); it is counted as a ``copy_`` (``addmm_`` into the input needs none).

``python -m vla_ros.bench.kernels [--model PATH]`` prints the count per decode layer for the
plain path (transformers' own layer) and for the fast path's fused decoder.
"""

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that return views, change metadata or only allocate: no kernel on the device.
METADATA_OPS = frozenset((
    'view', '_unsafe_view', '_reshape_alias', 'reshape', 'as_strided', 't', 'transpose',
    'permute', 'expand', 'slice', 'select', 'unsqueeze', 'squeeze', 'alias', 'detach', 'split',
    'split_with_sizes', 'unbind', 'chunk', 'narrow', 'view_as_real', 'view_as_complex',
    'lift_fresh', 'empty', 'empty_like', 'empty_strided', 'new_empty', 'new_empty_strided',
    'unflatten', 'flatten', 'diagonal', 'movedim', 'expand_as', 'squeeze_', 'unsqueeze_',
))


def _copies_input(func, args, kwargs):
    """Return True for an out-of-place ``addmm`` whose 2-D input CUDA copies into the result."""
    return (func is torch.ops.aten.addmm.default and args[0].dim() == 2
            and kwargs.get('beta', 1) != 0)


class OpCounter(TorchDispatchMode):
    """
    Count the aten ops dispatched inside the ``with`` block (``all`` and ``launching``).

    ``only``: a module; then only the ops dispatched while its forward runs are counted.
    """

    def __init__(self, only=None):
        super().__init__()
        self.all = collections.Counter()
        self._inside = only is None
        self._hooks = []
        if only is not None:
            self._hooks = [only.register_forward_pre_hook(lambda *a: self._enter(True)),
                           only.register_forward_hook(lambda *a: self._enter(False))]

    def _enter(self, inside):
        self._inside = inside

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._inside:
            self.all[func.overloadpacket.__name__] += 1
            if _copies_input(func, args, kwargs):
                self.all['copy_'] += 1
        return func(*args, **kwargs)

    @property
    def launching(self):
        """Return the Counter of the ops that launch work."""
        return collections.Counter({name: n for name, n in self.all.items()
                                    if name not in METADATA_OPS})


def decode_layer_ops(fast):
    """
    Return (ops per decode layer, launching ops per decode layer) of a warmed-up ``FastPath``.

    One decode step at a mid position runs under the counter; the counts of the whole step minus
    those outside the layers (embedding, mask, final norm, lm_head), divided by the layers.
    """
    llm = fast.llm
    with torch.inference_mode():
        fast.token.zero_()
        fast.pos.fill_(fast.num_patches + 8)
        with OpCounter() as whole:
            llm.decode_step(fast.token, fast.pos)
        layers, llm.layers = llm.layers, []
        try:
            with OpCounter() as outside:
                llm.decode_step(fast.token, fast.pos)
        finally:
            llm.layers = layers
    count = len(layers)
    per_layer = whole.all.copy()
    per_layer.subtract(outside.all)
    per_layer = collections.Counter({k: v / count for k, v in per_layer.items() if v})
    launching = collections.Counter({k: v for k, v in per_layer.items()
                                     if k not in METADATA_OPS})
    return per_layer, launching


def plain_layer_ops(model, prompt_length=270):
    """
    Return the launching ops of one decoder layer in one decode step of the plain path.

    transformers' own ``LlamaDecoderLayer`` with a ``DynamicCache``, as ``OpenVLAModel`` runs
    it: the reference the fused decoder is measured against.
    """
    llama = model.language_model
    with torch.inference_mode():
        cache = model.new_cache()
        embeds = llama.model.embed_tokens(torch.zeros((1, prompt_length), dtype=torch.long,
                                                      device=llama.lm_head.weight.device))
        model.prefill(embeds, cache)
        token = torch.zeros((1, 1), dtype=torch.long, device=embeds.device)
        with OpCounter(only=llama.model.layers[0]) as counter:
            model.decode_step(token, cache)
    return counter.launching


def main(argv=None):
    parser = argparse.ArgumentParser(description='Kernel budget of one decode step (CPU).')
    parser.add_argument('--model', default=None,
                        help='checkpoint directory (default: a miniature one, written to a '
                        'temporary directory)')
    args = parser.parse_args(argv)
    import tempfile

    from vla_ros.policy import OpenVLAPolicy
    from vla_ros.policy.openvla.fast import FastPath

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from vla_ros.policy.tiny import write_tiny_checkpoint
            model = write_tiny_checkpoint(f'{tmp}/tiny', seed=0)
        policy = OpenVLAPolicy.from_pretrained(model, device='cpu', dtype='float32')
        plain = plain_layer_ops(policy.model)
        fast = FastPath(policy.model, policy.image_processor, 7, static_shapes=True)
        per_layer, launching = decode_layer_ops(fast)
    for label, counts in (("plain path (transformers' LlamaDecoderLayer)", plain),
                          ('fast path (vla_ros.policy.backbone.decoder.FusedBlock)', launching)):
        print(f'{label}: {sum(counts.values()):.0f} aten ops launching work per decode layer')
        for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            print(f'  {n:4.0f}  {name}')


if __name__ == '__main__':
    main()
