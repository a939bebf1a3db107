"""
8-bit / 4-bit weights for the language model through bitsandbytes (CUDA only).

The Llama decoder's ``nn.Linear`` layers (attention and MLP projections, about 85% of openvla-7b's
weights) become ``bnb.nn.Linear8bitLt`` or ``bnb.nn.Linear4bit`` (nf4); the towers, projector,
embeddings and ``lm_head`` stay in the compute dtype, as transformers' ``load_in_8bit`` leaves
``lm_head``. The weights are loaded to the CPU first and quantized as they move to the GPU.

NOTE: this path cannot be tested in CI here (no GPU, no bitsandbytes); it is kept small on purpose.
"""

from torch import nn

from vla_ros.policy.errors import ConfigError

QUANTIZED_PREFIX = 'language_model.model.layers.'
QUANTIZED_SUFFIXES = ('q_proj.weight', 'k_proj.weight', 'v_proj.weight', 'o_proj.weight',
                      'gate_proj.weight', 'up_proj.weight', 'down_proj.weight')


def is_quantized_weight(name):
    """Return True for the checkpoint tensors that become bitsandbytes weights."""
    return name.startswith(QUANTIZED_PREFIX) and name.endswith(QUANTIZED_SUFFIXES)


def import_bitsandbytes(quantization):
    """Import bitsandbytes or fail with the package to install."""
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError(f'quantization={quantization} needs the bitsandbytes package: pip '
                          'install bitsandbytes (CUDA only), or use quantization=None.') from None
    return bitsandbytes


def quantize_language_model(model, quantization, compute_dtype, device):
    """Swap the decoder's linears (weights on the CPU) for bitsandbytes ones on ``device``."""
    bnb = import_bitsandbytes(quantization)
    layers = model.language_model.model.layers
    for module_name, module in list(layers.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            weight = child.weight.data
            if quantization == '8bit':
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=False,
                                          has_fp16_weights=False, threshold=6.0)
                new.weight = bnb.nn.Int8Params(weight, requires_grad=False,
                                               has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                        compute_dtype=compute_dtype, quant_type='nf4')
                new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type='nf4')
            setattr(module, child_name, new.to(device))  # quantizes on the move to CUDA
    return model
