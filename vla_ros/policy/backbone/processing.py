r"""
Inputs of the model, exactly as OpenVLA's reference prepares them.

Image -> pixel values, and instruction -> prompt -> token ids.

Image (``PrismaticImageProcessor``, strategy ``resize-naive``):
1. ``convert('RGB')``: RGBA loses its alpha (no compositing), L is replicated.
2. Per tower, from ``preprocessor_config.json``'s stored ``tvf_*`` entries (they win over
   ``means``/``stds``; the stored DINOv2 mean/std are the bf16-rounded ones): PIL bicubic resize to
   224x224 (aspect ratio not kept), center crop (a no-op at 224), to-tensor (x / 255 in float32),
   normalise ``(x - mean) / std`` in float32.
3. Stack as 6 channels: ``[DINOv2 | SigLIP]``, shape (1, 6, 224, 224).

Optional center crop (``center_crop=True``) for fine-tunes trained with image augmentation, see
``center_crop_and_resize``.

Prompt: ``In: What action should the robot take to {instruction.lower()}?\nOut:``, tokenized with
BOS in front and no EOS; then the 29871 rule of ``predict_action``: if the last id is not 29871
(the bare '▁'), one 29871 is appended.
"""

import dataclasses
import math
from pathlib import Path

import numpy as np
from PIL import Image
import torch

from vla_ros.policy.backbone.configuration import read_json
from vla_ros.policy.errors import CheckpointError, InputError

PREPROCESSOR_FILE = 'preprocessor_config.json'
TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
PROMPT_TEMPLATE = 'In: What action should the robot take to {instruction}?\nOut:'
SPACE_TOKEN_ID = 29871  # '▁': predict_action appends it when the prompt does not end with it
CENTER_CROP_SCALE = 0.9  # area fraction of OpenVLA's augmentation crop


def build_prompt(instruction):
    """Return OpenVLA's prompt for ``instruction`` (lower-cased, as the reference callers do)."""
    if not isinstance(instruction, str):
        raise InputError(f'instruction must be a str, got {type(instruction).__name__}.')
    if not instruction.strip():
        raise InputError('instruction is empty; pass a task such as '
                         '"put the carrot on the plate".')
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


def to_rgb(image):
    """
    Return ``image`` as an RGB ``PIL.Image``, the reference's ``convert('RGB')``.

    Accepts a ``PIL.Image`` of any mode, or a uint8 numpy array (H, W, 3) RGB, (H, W, 4) RGBA,
    (H, W) or (H, W, 1) grayscale.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == 'RGB' else image.convert('RGB')
    if not isinstance(image, np.ndarray):
        raise InputError(f'image must be a PIL.Image or a uint8 numpy array, got '
                         f'{type(image).__name__}.')
    if image.dtype != np.uint8:
        raise InputError(f'image array has dtype {image.dtype}; expected uint8 (0..255). For '
                         'floats in [0, 1] use np.clip(x * 255, 0, 255).astype(np.uint8).')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    modes = {2: 'L', 3: 'RGB', 4: 'RGBA'}
    channels = 2 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else None)
    if channels not in modes or image.ndim == 3 and channels == 2:
        raise InputError(f'image array has shape {image.shape}; expected (H, W, 3) RGB, '
                         '(H, W, 4) RGBA or (H, W) grayscale.')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f'image array has shape {image.shape}; it is empty.')
    pil = Image.fromarray(np.ascontiguousarray(image), mode=modes[channels])
    return pil if pil.mode == 'RGB' else pil.convert('RGB')


def center_crop_and_resize(rgb, crop_scale=CENTER_CROP_SCALE):
    """
    Crop the central ``crop_scale`` of the area and resize back to the same size.

    Reproduces OpenVLA's ``crop_and_resize`` (``experiments/robot/openvla_utils.py``), which runs
    ``tf.image.convert_image_dtype`` (x * float32(1/255)), ``tf.image.crop_and_resize`` (bilinear,
    no antialiasing, box side sqrt(crop_scale) of the normalised image, centred, sampled at
    ``y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (h - 1)``), clipping to [0, 1] and conversion back
    to uint8 (x * 255.5, truncated). The arithmetic is float32 step by step, as in TF's CPU
    kernel; TensorFlow itself is not used, so equality with it is by construction.

    One choice differs from the reference *call site*: the reference crops the raw observation
    and resizes straight to 224x224 (its eval environments already deliver 224x224 frames). Here
    the crop is applied after the processor's bicubic resize to 224x224, which is identical for
    224x224 inputs and, for larger camera frames, matches training (dlimp resizes to 224 first and
    crops afterwards) instead of bilinear downsampling without antialiasing.
    """
    arr = np.asarray(rgb, dtype=np.uint8)
    height, width = arr.shape[:2]
    image = arr.astype(np.float32) * np.float32(1.0 / 255.0)  # (H, W, 3)
    side = np.clip(np.sqrt(np.float32(crop_scale)), np.float32(0), np.float32(1))
    offset = (np.float32(1) - side) / np.float32(2)
    y1, x1 = offset, offset
    y2, x2 = offset + side, offset + side
    ys = _crop_sample_points(y1, y2, height, height)  # (H,)
    xs = _crop_sample_points(x1, x2, width, width)  # (W,)
    top, bottom = np.floor(ys).astype(np.int64), np.ceil(ys).astype(np.int64)
    left, right = np.floor(xs).astype(np.int64), np.ceil(xs).astype(np.int64)
    y_lerp = (ys - top.astype(np.float32))[:, None, None]  # (H, 1, 1)
    x_lerp = (xs - left.astype(np.float32))[None, :, None]  # (1, W, 1)
    top_left, top_right = image[top][:, left], image[top][:, right]  # (H, W, 3)
    bottom_left, bottom_right = image[bottom][:, left], image[bottom][:, right]
    upper = top_left + (top_right - top_left) * x_lerp
    lower = bottom_left + (bottom_right - bottom_left) * x_lerp
    out = upper + (lower - upper) * y_lerp
    out = np.clip(out, np.float32(0), np.float32(1)) * np.float32(255.5)
    out = np.clip(out, 0, 255).astype(np.uint8)  # saturate_cast truncates toward zero
    return Image.fromarray(out, mode='RGB')


def _crop_sample_points(start, end, in_size, out_size):
    """Source coordinates of ``tf.image.crop_and_resize`` for one axis, in float32."""
    last = np.float32(in_size - 1)
    if out_size > 1:
        scale = (end - start) * last / np.float32(out_size - 1)
        return start * last + np.arange(out_size, dtype=np.float32) * scale
    return np.full(out_size, np.float32(0.5) * (start + end) * last, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class TowerTransform:
    """One tower's stored torchvision parameters (``tvf_*`` in preprocessor_config.json)."""

    size: tuple  # (H, W) of the resize
    interpolation: int  # torchvision's int code, equal to PIL's filter constant (3 = bicubic)
    crop: tuple  # (H, W) of the center crop
    mean: tuple
    std: tuple


class ImageProcessor:
    """
    Turns one image into the model's (1, 6, 224, 224) float32 pixel values.

    In two steps that the fast path runs apart: ``crops`` (PIL, on the host: one bicubic resize
    and center crop per distinct tower transform, uint8) and ``normalize`` (torch, on any device:
    ``(x / 255 - mean) / std`` per tower, as a lookup in a float32 table computed on the CPU).
    """

    def __init__(self, towers, center_crop=False):
        self.towers = tuple(towers)
        self.center_crop = bool(center_crop)
        keys, self.tower_source = [], []
        for tower in self.towers:
            key = (tower.size, tower.interpolation, tower.crop)
            if key not in keys:
                keys.append(key)
            self.tower_source.append(keys.index(key))
        self.transforms = tuple(keys)  # distinct (size, interpolation, crop)
        # The reference's arithmetic, ``(x / 255 - mean) / std`` in float32, done once here on
        # the CPU for every byte value of every channel: normalising is then a lookup, which
        # gives the same bits on any device (CUDA turns a division by a scalar into a
        # multiplication by its reciprocal, one ulp off for 126 of the 256 values).
        mean = torch.tensor([m for t in self.towers for m in t.mean], dtype=torch.float32)
        std = torch.tensor([s for t in self.towers for s in t.std], dtype=torch.float32)
        levels = torch.arange(256, dtype=torch.uint8).float().div(255)  # (256,)
        self.table = ((levels[None] - mean[:, None]) / std[:, None]).contiguous()  # (3T, 256)
        self._tables = {self.table.device: self.table}  # a copy per device normalised on

    @classmethod
    def from_pretrained(cls, path, center_crop=False):
        """Read ``preprocessor_config.json`` of the checkpoint directory ``path``."""
        file = Path(path) / PREPROCESSOR_FILE
        if not file.is_file():
            raise CheckpointError(f'{file} is missing: copy preprocessor_config.json of the base '
                                  'model (e.g. openvla/openvla-7b) into the checkpoint folder.')
        raw = read_json(file)
        try:
            towers = [_tower_transform(raw, i) for i in range(2)]
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise CheckpointError(f'{file}: cannot read the tvf_resize_params / tvf_crop_params / '
                                  f'tvf_normalize_params of two towers ({err!r}); use the '
                                  'preprocessor_config.json of an OpenVLA checkpoint.') from None
        if raw.get('tvf_do_letterbox'):
            raise CheckpointError(f'{file}: tvf_do_letterbox is true; only the resize-naive '
                                  'strategy of OpenVLA is supported.')
        for tower in towers:
            if tower.crop != (224, 224) or tower.size[0] < 224 or tower.size[1] < 224:
                raise CheckpointError(f'{file}: resize {tower.size} / crop {tower.crop} do not '
                                      'give the 224x224 input the towers expect.')
        return cls(towers, center_crop=center_crop)

    def resize(self, image, tower=0):
        """Resize like tower ``tower`` does; returns RGB (the golden ``resized_224.png``)."""
        rgb = to_rgb(image)
        transform = self.towers[tower]
        size = transform.size[1], transform.size[0]  # PIL wants (W, H)
        return rgb.resize(size, transform.interpolation)

    def crops(self, image):
        """Return (K, 224, 224, 3) uint8: one resized, center-cropped image per transform."""
        rgb = to_rgb(image)
        if self.center_crop:
            rgb = center_crop_and_resize(self.resize(rgb, 0))
        arrays = []
        for (height, width), interpolation, (crop_h, crop_w) in self.transforms:
            resized = rgb.resize((width, height), interpolation)
            if (height, width) != (crop_h, crop_w):  # torchvision center_crop rounding
                top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
                resized = resized.crop((left, top, left + crop_w, top + crop_h))
            arrays.append(np.array(resized, dtype=np.uint8))  # (H, W, 3), writable
        return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)  # (K, H, W, 3)

    def normalize(self, crops):
        """
        Return pixel values (1, 3T, H, W) float32 from ``crops`` (K, H, W, 3) uint8 (any device).

        One gather from the table on the crops' device (copied there once, on first use): the
        value of byte ``b`` in channel ``c`` is ``table[c, b]``.
        """
        table = self._tables.get(crops.device)
        if table is None:
            table = self._tables[crops.device] = self.table.to(crops.device)
        x = crops.permute(0, 3, 1, 2)[self.tower_source]  # (T, 3, H, W): [DINOv2 | SigLIP]
        index = x.reshape(table.shape[0], -1).long()  # (3T, H * W)
        return table.gather(1, index).view(1, table.shape[0], *x.shape[2:])  # (1, 3T, H, W)

    def __call__(self, image):
        """Return pixel values (1, 6, 224, 224) float32: [DINOv2 | SigLIP] channels."""
        return self.normalize(torch.from_numpy(self.crops(image)))


def _tower_transform(raw, index):
    resize = raw['tvf_resize_params'][index]
    crop = raw['tvf_crop_params'][index]
    norm = raw.get('tvf_normalize_params')
    if norm:
        mean, std = norm[index]['mean'], norm[index]['std']
    else:  # older processors: fall back to the plain means/stds
        mean, std = raw['means'][index], raw['stds'][index]
    if isinstance(resize['size'], (int, float)):  # torchvision would keep the aspect ratio
        raise ValueError('tvf_resize_params size must be [H, W] (resize-naive)')
    size, out = _pair(resize['size']), _pair(crop['output_size'])
    if len(size) != 2 or len(out) != 2 or len(mean) != 3 or len(std) != 3:
        raise ValueError('sizes need 2 entries and mean/std 3')
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise ValueError(f'std {std} must be positive')
    return TowerTransform(size=size, interpolation=int(resize.get('interpolation', 3)), crop=out,
                          mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def _pair(value):
    if isinstance(value, (int, float)):
        return int(value), int(value)
    return tuple(int(v) for v in value)


class PromptTokenizer:
    """The checkpoint's ``tokenizer.json`` via the ``tokenizers`` library, plus OpenVLA rules."""

    def __init__(self, tokenizer, add_bos=True, add_eos=False, bos_token='<s>', eos_token='</s>'):
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.bos_id = tokenizer.token_to_id(bos_token)
        self.eos_id = tokenizer.token_to_id(eos_token)

    @classmethod
    def from_pretrained(cls, path):
        """
        Load ``tokenizer.json`` (and the BOS/EOS flags of ``tokenizer_config.json``).

        BOS/EOS are added the way transformers' ``LlamaTokenizerFast`` does from
        ``add_bos_token`` / ``add_eos_token`` (defaults True / False), whatever post-processor the
        file carries.
        """
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / TOKENIZER_FILE
        if not file.is_file():
            hint = ' Copy the tokenizer files of the base model (openvla/openvla-7b).'
            if (path / 'tokenizer.model').is_file():
                hint = (' Only tokenizer.model (sentencepiece) is there: convert it once with '
                        '`python -c "from transformers import AutoTokenizer; '
                        f"AutoTokenizer.from_pretrained('{path}').save_pretrained('{path}')\"`.")
            raise CheckpointError(f'{file} is missing.' + hint)
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception on a bad file
            raise CheckpointError(f'{file} cannot be loaded by the tokenizers library ({err}); '
                                  're-download it.') from None
        settings = {}
        config_file = path / TOKENIZER_CONFIG_FILE
        if config_file.is_file():
            settings = read_json(config_file)
        kwargs = {'add_bos': settings.get('add_bos_token', True),
                  'add_eos': settings.get('add_eos_token', False)}
        for name in ('bos_token', 'eos_token'):
            token = settings.get(name)
            if isinstance(token, dict):
                token = token.get('content')
            if token:
                kwargs[name] = token
        result = cls(tokenizer, **kwargs)
        if result.add_bos and result.bos_id is None:
            raise CheckpointError(f'{file} has no BOS token {kwargs.get("bos_token", "<s>")!r}; '
                                  'use the tokenizer of the base model.')
        return result

    def encode(self, text):
        """Token ids of ``text`` as transformers' Llama tokenizer gives them (BOS, no EOS)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.add_bos:
            ids = [self.bos_id] + ids
        if self.add_eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def model_input_ids(self, prompt):
        """Ids handed to generation: ``encode(prompt)`` plus the 29871 rule."""
        ids = self.encode(prompt)
        if not ids or ids[-1] != SPACE_TOKEN_ID:
            ids.append(SPACE_TOKEN_ID)
        return ids
