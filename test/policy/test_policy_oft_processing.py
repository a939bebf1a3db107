"""
OFT's lanczos3 resize against TF's loop written plainly, on images of odd sizes.

The conformance kit (``test_policy_oft.py``) checks ``tf_resize`` on its frames; this checks the
resize alone on sizes the kit lacks: downsizing both ways, one side kept, upsizing, tiny inputs.
"""

import numpy as np
import pytest

from vla_ros.policy.oft import processing as oft_processing


def reference_resize(image, size):
    """Return TF's ScaleAndTranslate as a plain loop: float32, each term multiplied, then added."""
    x = image.astype(np.float32)
    for axis in (0, 1):  # rows, then columns
        starts, weights = oft_processing._spans(x.shape[axis], size)
        source = np.moveaxis(x, axis, 0)
        out = np.zeros((size,) + source.shape[1:], np.float32)
        for i in range(size):
            for j in range(weights.shape[1]):
                term = weights[i, j] * source[min(starts[i] + j, len(source) - 1)]
                out[i] = out[i] + term
        x = np.moveaxis(out, 0, axis)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('shape', [(480, 640), (256, 320), (100, 90), (225, 224), (100, 100),
                                   (5, 300)])
def test_lanczos3_resize_is_tf_loop_exactly(shape, torch_one_thread):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    image[: shape[0] // 2, : shape[1] // 3] = 255  # an edge, where the lobes go below 0
    expected = reference_resize(image, 224)
    assert np.array_equal(oft_processing.lanczos3_resize(image, 224), expected)
