"""Pure preprocessing tests (no model): prompt, image kinds, the optional center crop."""

import hashlib

import numpy as np
from PIL import Image
from policy_helpers import scene
import pytest
import torch
from vla_ros.policy import InputError
from vla_ros.policy.backbone.processing import (build_prompt, center_crop_and_resize,
                                                ImageProcessor, PromptTokenizer, to_rgb)
from vla_ros.policy.tiny import ASSETS

# sha256 of TensorFlow 2.21's output for OpenVLA's crop_and_resize steps (convert_image_dtype,
# crop_and_resize with crop_scale 0.9, clip, convert back with saturate=True) on pattern().
TF_CROP_SHA256 = 'b3f99f930ec1a787c9504433870a92053a288ae305d234b3555dfdd223d17aa2'


def pattern():
    """Return a deterministic 224x224 RGB image with high-frequency content."""
    y, x, c = np.meshgrid(np.arange(224), np.arange(224), np.arange(3), indexing='ij')
    return ((x * 7 + y * 13 + c * 101 + (x * y) % 17) % 256).astype(np.uint8)


def test_prompt():
    assert build_prompt('Put the Spoon in the DRAWER ') == (
        'In: What action should the robot take to put the spoon in the drawer ?\nOut:')


def test_29871_rule():
    tokenizer = PromptTokenizer.from_pretrained(ASSETS)
    ids = tokenizer.model_input_ids(build_prompt('pick up the red cup'))
    assert ids[0] == 1 and ids[-1] == 29871 and ids[-2] != 29871
    assert tokenizer.model_input_ids(build_prompt('pick up the red cup') + ' ') == ids


def test_center_crop_matches_tensorflow():
    out = np.asarray(center_crop_and_resize(Image.fromarray(pattern())))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert hashlib.sha256(out.tobytes()).hexdigest() == TF_CROP_SHA256


def test_center_crop_geometry():
    flat = np.full((224, 224, 3), 77, np.uint8)
    assert np.array_equal(np.asarray(center_crop_and_resize(Image.fromarray(flat))), flat)
    ramp = np.repeat(np.repeat(np.arange(224, dtype=np.uint8)[None, :, None], 3, axis=2), 224,
                     axis=0)  # value = column index
    out = np.asarray(center_crop_and_resize(Image.fromarray(ramp)))[0, :, 0].astype(int)
    side = float(np.sqrt(np.float32(0.9)))
    first, last = (1 - side) / 2 * 223, (1 + side) / 2 * 223  # the box edges, in pixels
    assert abs(out[0] - first) <= 1 and abs(out[-1] - last) <= 1
    assert np.all(np.diff(out) >= 0)


def test_center_crop_in_the_processor():
    image = scene(6, 300, 400)
    cropped = ImageProcessor.from_pretrained(ASSETS, center_crop=True)(image)
    plain = ImageProcessor.from_pretrained(ASSETS)(image)
    assert cropped.shape == plain.shape == (1, 6, 224, 224)
    assert not torch.equal(cropped, plain)


def test_pixel_values_layout():
    processor = ImageProcessor.from_pretrained(ASSETS)
    x = processor(np.full((50, 80, 3), 255, np.uint8))
    assert x.shape == (1, 6, 224, 224) and x.dtype == torch.float32
    dino_mean, dino_std = processor.towers[0].mean, processor.towers[0].std
    assert dino_mean == (0.484375, 0.455078125, 0.40625)  # the stored bf16-rounded values
    expected = (1.0 - torch.tensor(dino_mean)) / torch.tensor(dino_std)
    assert torch.equal(x[0, :3, 0, 0], expected)
    assert torch.equal(x[0, 3:, 0, 0], torch.ones(3))  # SigLIP: (1 - 0.5) / 0.5


@pytest.mark.parametrize('image', [
    np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 5), np.uint8), np.zeros((8, 8, 2), np.uint8),
    np.zeros((1, 8, 8, 3), np.uint8), np.zeros((0, 8, 3), np.uint8), [[0, 1]], 'image.png'])
def test_bad_images(image):
    with pytest.raises(InputError):
        to_rgb(image)


def test_image_modes():
    rgb = scene(9, 30, 40)
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 3, np.uint8)], axis=2)
    assert np.array_equal(np.asarray(to_rgb(rgba)), rgb)  # alpha dropped, no compositing
    gray = rgb[:, :, 0]
    assert np.array_equal(np.asarray(to_rgb(gray)), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(np.asarray(to_rgb(gray[:, :, None])), np.asarray(to_rgb(gray)))
    assert to_rgb(Image.fromarray(gray).convert('P')).mode == 'RGB'
