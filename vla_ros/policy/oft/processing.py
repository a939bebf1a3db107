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

Prompt: OpenVLA's, with the 29871 rule; then K placeholder ids (1) and the stop id (2)
(``token_layout``). ``OFTProcessor`` puts it together for inference and fine-tuning alike.
"""

import ctypes
import ctypes.util
import functools
import io
import math

import numpy as np
from PIL import Image
import torch

from vla_ros.policy.backbone.processing import build_prompt, center_crop_and_resize
from vla_ros.policy.errors import InputError
from vla_ros.policy.oft.configuration import PLACEHOLDER_ID, STOP_ID

SIZE = 224
JPEG_QUALITY = 95
_F32 = np.float32
_PI = _F32(3.14159265359)  # TF's kPI, as a float
_RADIUS = _F32(3)
PROMPT_CACHE = 256  # prompts kept tokenized


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


@functools.lru_cache(maxsize=64)
def _taps(in_size, out_size, device):
    """Return the spans by span position: indices (span, out), weights (span, out, 1)."""
    starts, weights = _spans(in_size, out_size)
    index = np.minimum(starts[:, None] + np.arange(weights.shape[1]), in_size - 1)
    return (torch.from_numpy(np.ascontiguousarray(index.T)).to(device),
            torch.from_numpy(np.ascontiguousarray(weights.T)[:, :, None]).to(device))


def _resize_rows(image, out_size):
    """
    Resize ``image`` (in_size, N), float32, along its rows to (out_size, N), in TF's order.

    One multiply and one add per span position, as separate float32 operations (no fused
    multiply-add), accumulated from the first position on: TF's loop, bit for bit. Two
    preallocated buffers instead of a temporary per operation.
    """
    index, weights = _taps(image.shape[0], out_size, image.device)
    out = image.new_empty(out_size, image.shape[1])
    term = torch.empty_like(out)
    torch.index_select(image, 0, index[0], out=out).mul_(weights[0])
    for j in range(1, index.shape[0]):
        out.add_(torch.index_select(image, 0, index[j], out=term).mul_(weights[j]))
    return out


def lanczos3_resize(image, size=SIZE, device=None):
    """
    Return ``image`` (H, W, 3) uint8 resized as TF's lanczos3 ``ScaleAndTranslate``: (size, size).

    Rows first, then columns, as TF; the column pass runs on the transposed image so that both
    passes gather whole contiguous rows. Rounded half to even, clipped to uint8. ``device``
    (default CPU) runs the same float32 operations there, each its own kernel, still exact.
    """
    height, width, _ = image.shape
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).view(height, width * 3)
    rows = _resize_rows(x.float(), size)  # (size, W * 3)
    columns = rows.view(size, width, 3).transpose(0, 1).reshape(width, size * 3)  # (W, size * 3)
    out = _resize_rows(columns, size).view(size, size, 3).transpose(0, 1)  # (size, size, 3)
    return out.round().clamp_(0, 255).to(torch.uint8).cpu().numpy()  # round: half to even, as TF


def jpeg_encode(image):
    """Return the JPEG bytes TF's ``encode_jpeg`` writes for ``image`` (quality 95, 4:2:0)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='JPEG', quality=JPEG_QUALITY, subsampling=2)
    return buffer.getvalue()


def jpeg_decode(data):
    """Return JPEG ``data`` decoded as TF's ``decode_image`` does: (H, W, 3) uint8."""
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace='RGB', fastdct=True, fastupsample=False)


def tf_resize(image, size=SIZE, device=None):
    """Return ``image`` (H, W, 3) uint8 as OFT's ``resize_image_for_policy`` does: (size, size)."""
    return lanczos3_resize(jpeg_decode(jpeg_encode(image)), size, device)


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


def prepare_image(image, center_crop, index=0, device=None):
    """
    Return the 224 x 224 RGB PIL image OFT gives the processor (``prepared_*.png``).

    ``device``: where the resize's float32 passes run (the policy's GPU takes them off the host's
    critical path; the values are the same bits).
    """
    array = as_uint8_rgb(image, index)
    if array.shape != (SIZE, SIZE, 3):
        array = tf_resize(array, device=device)
    pil = Image.fromarray(np.ascontiguousarray(array)).convert('RGB')
    return center_crop_and_resize(pil) if center_crop else pil


PAD_ID = 0  # a batch's padding after the stop id; masked out as attention keys: any id works


def token_layout(prompt_ids, num_slots, device=None):
    """
    Return the ids OFT's forward pass sees, for a batch of prompts: ``(ids, keep, seq_len)``.

    The one statement of the rule: each sequence is its prompt, ``num_slots`` placeholder ids
    (``PLACEHOLDER_ID``) and the stop id (``STOP_ID``), right-padded with ``PAD_ID`` to the
    longest; the action slots start at the prompt's length. ``ids`` (B, T) long; ``keep``
    (B, T, 1) float32: 0 at the action slots (their embeddings become exact zeros), 1 elsewhere;
    ``seq_len`` (B,) long, each sequence's length before padding.
    """
    seqs = [list(p) + [PLACEHOLDER_ID] * num_slots + [STOP_ID] for p in prompt_ids]
    width = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    keep = torch.ones((len(seqs), width, 1))
    for b, (seq, prompt) in enumerate(zip(seqs, prompt_ids)):
        ids[b, :len(seq)] = torch.tensor(seq)
        keep[b, len(prompt):len(prompt) + num_slots] = 0
    return ids.to(device), keep.to(device), torch.tensor([len(seq) for seq in seqs])


class OFTProcessor:
    """
    OFT's inputs from camera frames and an instruction: what inference and fine-tuning both call.

    Split where a frame's cost can be cached (fine-tuning keeps each frame's crops): a frame's
    crops (``frame_crops``: ``prepare_image`` and the processor's crops), the pixel values of
    one observation's crops (``pixel_values``), the prompt's ids (``prompt_ids``) and their
    layout with the action slots (``layout``, ``token_layout``). ``prepared_frame``: the frame
    before any crop, which fine-tuning with ``--image-aug`` keeps and crops at random.
    """

    def __init__(self, image_processor, tokenizer, constants, center_crop):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.constants = constants
        self.center_crop = bool(center_crop)
        self._prompts = {}

    def frame_crops(self, image, camera, resize_on=None):
        """
        Return camera image ``camera``'s crops: uint8 (K, 224, 224, 3).

        ``resize_on``: the device of OFT's resize (the same bits on every device).
        """
        return self.image_processor.crops(prepare_image(image, self.center_crop, camera,
                                                        resize_on))

    def prepared_frame(self, image, camera):
        """Return camera image ``camera`` as OFT prepares it before the center crop (uint8)."""
        return np.asarray(prepare_image(image, False, camera))  # (224, 224, 3)

    def pixel_values(self, crops, device=None):
        """Return (1, 6N, 224, 224) float32 from each camera's crops (primary first)."""
        return torch.cat([self.image_processor.normalize(torch.from_numpy(c).to(device))
                          for c in crops], dim=1)

    def prompt_ids(self, instruction):
        """Return the prompt's ids (with the 29871 rule), cached per instruction."""
        ids = self._prompts.get(instruction)
        if ids is None:
            if len(self._prompts) >= PROMPT_CACHE:
                self._prompts.clear()  # a live node's instructions are a few; keep it bounded
            ids = self._prompts[instruction] = tuple(self.tokenizer.model_input_ids(
                build_prompt(instruction)))
        return list(ids)

    def layout(self, prompt_ids, device=None):
        """Return ``token_layout`` of a batch of prompts with this model's action slots."""
        return token_layout(prompt_ids, self.constants.num_action_slots, device)
