"""
The observation keys of ``vla_serve``: one image per camera, the state, the prompt.

    schema = ObservationSchema.for_policy(num_images=2, state_dim=8)
    schema.camera_keys    # ('observation/image', 'observation/wrist_image')
    images, prompt, state = schema.read(message)    # raises ObservationError

The names follow openpi's LIBERO example (``examples/libero/main.py``), so its client drives an
OFT LIBERO checkpoint unchanged: ``observation/image`` (the primary camera),
``observation/wrist_image``, ``observation/state`` and ``prompt``. A third camera (OFT's ALOHA:
primary, left wrist, right wrist) makes the wrist keys ``observation/left_wrist_image`` and
``observation/right_wrist_image``; more than three are ``observation/wrist_image_<i>`` from 1.
A policy without state takes no state key. Nothing else is accepted: an unknown key is more
likely a client built for another model than something safe to ignore.
"""

import dataclasses

import numpy as np

__all__ = ['IMAGE_KEY', 'ObservationError', 'ObservationSchema', 'PROMPT_KEY', 'STATE_KEY',
           'camera_keys']

IMAGE_KEY = 'observation/image'
STATE_KEY = 'observation/state'
PROMPT_KEY = 'prompt'
MAX_IMAGE_SIDE = 8192


class ObservationError(ValueError):
    """An observation that does not fit the served policy; the text names the key and the fix."""


def camera_keys(num_images):
    """Return the image keys of a policy taking ``num_images`` images, primary first."""
    if num_images == 1:
        return (IMAGE_KEY,)
    if num_images == 2:
        return (IMAGE_KEY, 'observation/wrist_image')
    if num_images == 3:
        return (IMAGE_KEY, 'observation/left_wrist_image', 'observation/right_wrist_image')
    return (IMAGE_KEY,) + tuple(f'observation/wrist_image_{i}' for i in range(1, num_images))


@dataclasses.dataclass(frozen=True)
class ObservationSchema:
    """The keys of one served policy's observations and what each must hold."""

    camera_keys: tuple
    state_key: str  # None when the policy takes no state
    state_dim: int

    @classmethod
    def for_policy(cls, num_images, state_dim):
        """Return the schema of a policy taking ``num_images`` images and ``state_dim`` values."""
        return cls(camera_keys(num_images), STATE_KEY if state_dim else None, state_dim)

    @property
    def keys(self):
        """Return every key an observation must have."""
        return self.camera_keys + ((self.state_key,) if self.state_key else ()) + (PROMPT_KEY,)

    def read(self, message):
        """
        Return ``(images, prompt, state)`` of an unpacked observation; raise ``ObservationError``.

        ``images``: uint8 arrays (H, W, 3), (H, W, 4) or (H, W), in ``camera_keys`` order;
        ``state``: float64 [state_dim], None when the policy takes none.
        """
        if not isinstance(message, dict):
            raise ObservationError(f'an observation is a map, not {type(message).__name__}')
        missing = [key for key in self.keys if key not in message]
        unknown = sorted(repr(key) for key in message if key not in self.keys)
        if missing or unknown:
            raise ObservationError(
                'observation keys do not fit the served policy: '
                + (f'missing {", ".join(missing)}' if missing else '')
                + ('; ' if missing and unknown else '')
                + (f'unknown {", ".join(unknown[:8])}' if unknown else '')
                + f' (expected exactly: {", ".join(self.keys)})')
        images = [_image(key, message[key]) for key in self.camera_keys]
        prompt = message[PROMPT_KEY]
        if not isinstance(prompt, str):
            raise ObservationError(f'{PROMPT_KEY} must be a str (msgpack str), not '
                                   f'{type(prompt).__name__}')
        state = _state(self.state_key, message[self.state_key], self.state_dim) \
            if self.state_key else None
        return images, prompt, state


def _image(key, value):
    """Return the image array under ``key``; raise ``ObservationError``."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8:
        what = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise ObservationError(f'{key} must be a uint8 array (H, W, 3) RGB, not {what}')
    shape = value.shape
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4))) \
            or not all(0 < side <= MAX_IMAGE_SIDE for side in shape[:2]):
        raise ObservationError(f'{key} must be (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) '
                               f'grayscale with sides 1..{MAX_IMAGE_SIDE}, not {shape}')
    return value


def _state(key, value, dim):
    """Return the state under ``key`` as float64 [dim]; raise ``ObservationError``."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in 'iuf' \
            or value.shape != (dim,):
        what = (f'{value.dtype} {value.shape}' if isinstance(value, np.ndarray)
                else type(value).__name__)
        raise ObservationError(f'{key} must be a numeric array of shape ({dim},), not {what}')
    state = value.astype(np.float64)
    if not np.isfinite(state).all():
        raise ObservationError(f'{key} holds NaN or infinity')
    return state
