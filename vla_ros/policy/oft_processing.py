"""
OpenVLA-OFT's inputs: camera images as OFT prepares them, and the prompt with its action slots.

Images (``prepare_images_for_vla`` in OFT's ``openvla_utils``), each on its own:

1. not 224 x 224: ``resize_image_for_policy``, TensorFlow's ``encode_jpeg`` (quality 95, 4:2:0)
   and ``decode_image``, then ``tf.image.resize(..., 'lanczos3', antialias=True)``, rounded half
   to even and clipped to uint8. Reproduced without TensorFlow, bit for bit on every case of the
   conformance kit: Pillow writes the same JPEG bytes as TF; TF decodes with libjpeg-turbo's fast
   integer IDCT (``JDCT_IFAST``, its default), which ``simplejpeg(fastdct=True)`` gives; the
   resize is TF's ``ScaleAndTranslate`` in float32 in TF's order (rows, then columns), with its
   lanczos3 kernel evaluated with the C library's ``sinf`` as TF's C++ does.
2. the center crop (0.9 of the area, TF ``crop_and_resize``): ``center_crop_and_resize``, shared
   with OpenVLA's optional crop;
3. OpenVLA's processor on the 224 x 224 result (its resize is then the identity).

Prompt: OpenVLA's, with the 29871 rule; then K placeholder ids (1) and the stop id (2).
"""

import ctypes
import ctypes.util
import functools
import io
import math

import numpy as np
from PIL import Image
import torch

from vla_ros.policy.errors import InputError
from vla_ros.policy.oft_configuration import PLACEHOLDER_ID, STOP_ID
from vla_ros.policy.processing import center_crop_and_resize

SIZE = 224
JPEG_QUALITY = 95
_F32 = np.float32
_PI = _F32(3.14159265359)  # TF's kPI, as a float
_RADIUS = _F32(3)


def _c_sinf():
    """Return the C library's ``sinf`` (what TF's ``std::sin(float)`` calls), or None."""
    name = ctypes.util.find_library('m')
    if name is None:
        return None
    try:
        sinf = ctypes.CDLL(name).sinf
    except (OSError, AttributeError):
        return None
    sinf.restype, sinf.argtypes = ctypes.c_float, [ctypes.c_float]
    return sinf


_SINF = _c_sinf()


def _sin(x):  # float32 array -> float32 array
    if _SINF is None:  # no C library: correctly rounded, 1 ulp from glibc's sinf at times
        return np.sin(x.astype(np.float64)).astype(_F32)
    return np.array([_SINF(float(v)) for v in x.ravel()], _F32).reshape(x.shape)


def _lanczos3(x):
    """Return TF's lanczos3 kernel, float32: 3 sin(pi x) sin(pi x / 3) / (pi^2 x^2), 1 near 0."""
    x = np.abs(x).astype(_F32)
    a = (_PI * x).astype(_F32)
    numerator = ((_RADIUS * _sin(a)).astype(_F32) * _sin((a / _RADIUS).astype(_F32))).astype(_F32)
    denominator = (((_PI * _PI).astype(_F32) * x).astype(_F32) * x).astype(_F32)
    with np.errstate(divide='ignore', invalid='ignore'):
        value = (numerator / denominator).astype(_F32)
    value = np.where(x <= _F32(1e-3), _F32(1), value)
    return np.where(x > _RADIUS, _F32(0), value).astype(_F32)


@functools.lru_cache(maxsize=64)
def _spans(in_size, out_size):
    """Return TensorFlow's ``ComputeSpansCore`` spans (antialias, no shift): starts, weights."""
    scale = _F32(out_size) / _F32(in_size)
    inv_scale = _F32(1.0 / float(scale))  # C++: const float inv_scale = 1.0 / scale
    kernel_scale = max(inv_scale, _F32(1))
    reach = _F32(_RADIUS * kernel_scale)
    span = min(2 * math.ceil(float(reach)) + 1, in_size)
    one_over = _F32(_F32(1) / kernel_scale)
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, span), _F32)
    for x in range(out_size):
        sample = _F32(_F32(_F32(x) + _F32(0.5)) * inv_scale)
        if sample < 0 or sample > in_size:
            continue
        start = math.ceil(float(_F32(_F32(sample - reach) - _F32(0.5))))
        end = math.floor(float(_F32(_F32(sample + reach) - _F32(0.5))))
        start = min(max(start, 0), in_size - 1)
        end = min(max(end, 0), in_size - 1) + 1
        position = (np.arange(start, end).astype(_F32) + _F32(0.5) - sample).astype(_F32)
        w = _lanczos3((position * one_over).astype(_F32))
        total = _F32(0)
        for value in w:  # sequential float32 sum, as the C++ loop
            total = _F32(total + value)
        if abs(total) >= _F32(1000) * np.finfo(_F32).tiny:
            weights[x, :w.size] = (w * _F32(_F32(1) / total)).astype(_F32)
        starts[x] = start
    return starts, weights


def _gather(image, starts, weights, axis):
    """
    Weighted sum along ``axis`` of ``image`` (a float32 tensor), in float32 in TF's order.

    One multiply and one add per span position, as separate float32 operations (no fused
    multiply-add), accumulated from the first position on: TF's loop, bit for bit.
    """
    size = image.shape[axis]
    shape = [1] * image.dim()
    shape[axis] = -1
    out = None
    for j in range(weights.shape[1]):
        index = torch.from_numpy(np.minimum(starts + j, size - 1))
        weight = torch.from_numpy(weights[:, j].copy()).view(shape)
        term = image.index_select(axis, index).mul_(weight)
        out = term if out is None else out.add_(term)
    return out


def tf_resize(image, size=SIZE):
    """Return ``image`` (H, W, 3) uint8 as OFT's ``resize_image_for_policy`` does: (size, size)."""
    import simplejpeg

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='JPEG', quality=JPEG_QUALITY, subsampling=2)
    decoded = simplejpeg.decode_jpeg(buffer.getvalue(), colorspace='RGB', fastdct=True,
                                     fastupsample=False)  # (H, W, 3) uint8, as TF decodes
    x = torch.from_numpy(decoded).float()  # (H, W, 3)
    rows = _gather(x, *_spans(x.shape[0], size), axis=0)  # (size, W, 3)
    out = _gather(rows, *_spans(x.shape[1], size), axis=1).numpy()  # (size, size, 3)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)  # np.round: half to even, as TF


def as_uint8_rgb(image, index):
    """Return camera image ``index`` as (H, W, 3) uint8; OFT asserts exactly that layout."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert('RGB'))
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or 0 in image.shape:
        shape = getattr(image, 'shape', None)
        raise InputError(f'image {index} must be a PIL image or a uint8 numpy array (H, W, 3) '
                         f'RGB, got {type(image).__name__} {getattr(image, "dtype", "")} '
                         f'{shape if shape is not None else ""}'.rstrip() + '.')
    return image


def prepare_image(image, center_crop, index=0):
    """Return the 224 x 224 RGB PIL image OFT gives the processor (``prepared_*.png``)."""
    array = as_uint8_rgb(image, index)
    if array.shape != (SIZE, SIZE, 3):
        array = tf_resize(array)
    pil = Image.fromarray(np.ascontiguousarray(array)).convert('RGB')
    return center_crop_and_resize(pil) if center_crop else pil


def sequence_ids(prompt_ids, num_slots):
    """
    Return the ids OFT's forward pass sees: the prompt, K placeholder ids, the stop id.

    The one statement of the rule: inference (``OpenVLAOFTPolicy.inputs``) and fine-tuning
    (``training.dataset.collate``) both build their sequences here; the K action slots start
    at ``len(prompt_ids)``.
    """
    return list(prompt_ids) + [PLACEHOLDER_ID] * num_slots + [STOP_ID]
