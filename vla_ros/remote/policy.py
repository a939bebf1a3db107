"""
``RemotePolicy``: the one policy contract, answered by a server of openpi's websocket protocol.

    policy = RemotePolicy.connect('ws://gpu-box:8000', 'vla_serve', api_key=key, timeout=0.5)
    chunk = policy.predict([front, wrist], 'put the bowl on the plate', proprio=state)

A preset names the observation keys and the response key (``PRESETS``): ``vla_serve`` reads
them, and the sizes, from the server's metadata; ``openpi_libero`` and ``openpi_droid`` are the
keys of openpi's ``examples/libero/main.py`` and ``examples/droid/main.py`` (images resized with
padding to 224x224 uint8 on this side, as those examples do), with the action size the caller
handles (``action_dim``) and ``chunk_len`` rows (0: whatever number the server sends). Explicit
keys override a preset's. Each state key takes the next ``n`` values of the state vector in order
(DROID: 7 joint positions, then the gripper position).

``predict`` raises ``RemoteError`` (a ``PolicyError``, which vla_node counts as a model error and
names in /diagnostics) when there is no answer this time: the server down, slow past the timeout,
an error text, a reply without the response key, of the wrong shape, or not finite. It never
returns an earlier answer. ``diagnostics()`` gives the timing split and the failures.
"""

import dataclasses
import threading

import numpy as np
from PIL import Image
from vla_ros.control.stats import Window
from vla_ros.policy.actions import Action
from vla_ros.policy.base import Policy
from vla_ros.policy.errors import ConfigError
from vla_ros.remote.client import Client, RemoteError

__all__ = ['PRESETS', 'RemotePolicy', 'RemoteSpec']

OPENPI_SIZE = 224  # openpi's examples send 224x224 images (resize_with_pad)


@dataclasses.dataclass(frozen=True)
class RemoteSpec:
    """Which keys an observation has, which key holds the actions, and how images travel."""

    camera_keys: tuple
    state_keys: tuple  # ((key, number of values), ...) taking the state vector in order
    prompt_key: str = 'prompt'
    response_key: str = 'actions'
    image_size: int = 0  # resize with padding to this square side; 0: send as received

    @property
    def state_dim(self):
        """Return the length of the state vector the keys take."""
        return sum(n for _, n in self.state_keys)

    def observation(self, images, instruction, proprio):
        """Return the observation map of ``images``, ``instruction`` and ``proprio``."""
        obs = {key: self._image(image) for key, image in zip(self.camera_keys, images)}
        start = 0
        for key, n in self.state_keys:
            obs[key] = np.asarray(proprio[start:start + n], dtype=np.float64)
            start += n
        obs[self.prompt_key] = instruction
        return obs

    def _image(self, image):
        image = np.ascontiguousarray(image, dtype=np.uint8)
        side = self.image_size
        if not side or image.shape[:2] == (side, side):
            return image
        # Keep the aspect ratio, pad with black (openpi-client's image_tools.resize_with_pad).
        height, width = image.shape[:2]
        ratio = max(width / side, height / side)
        size = (max(1, int(width / ratio)), max(1, int(height / ratio)))
        resized = Image.fromarray(image).resize(size, Image.BILINEAR)
        padded = Image.new(resized.mode, (side, side), 0)
        padded.paste(resized, ((side - size[0]) // 2, (side - size[1]) // 2))
        return np.asarray(padded)


PRESETS = {
    'vla_serve': None,  # from the server's metadata
    'openpi_libero': RemoteSpec(('observation/image', 'observation/wrist_image'),
                                (('observation/state', 8),), image_size=OPENPI_SIZE),
    'openpi_droid': RemoteSpec(('observation/exterior_image_1_left',
                                'observation/wrist_image_left'),
                               (('observation/joint_position', 7),
                                ('observation/gripper_position', 1)), image_size=OPENPI_SIZE),
}


def spec_from_metadata(metadata, uri):
    """Return the ``RemoteSpec`` a ``vla_serve`` metadata map describes; raise ConfigError."""
    try:
        cameras = tuple(metadata['camera_keys'])
        state = ((metadata['state_key'], int(metadata['state_dim'])),) \
            if metadata['state_key'] else ()
        return RemoteSpec(cameras, state, metadata['prompt_key'])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f'the server at {uri} sent no vla_serve metadata ({exc!r} missing or '
                          "wrong): is it vla_serve? For openpi's server use remote_preset "
                          'openpi_libero or openpi_droid') from None


class RemotePolicy(Policy):
    """A ``Policy`` whose ``predict`` is a request to a server; see the module docstring."""

    def __init__(self, client, spec, action_dim, chunk_len=0, unnorm_key='server',
                 labels=None, description=None):
        self.client, self.spec = client, spec
        self._action_dim, self._chunk_len = int(action_dim), int(chunk_len)
        self._unnorm_key = unnorm_key or 'server'
        self._labels = tuple(labels) if labels else None
        self._description = description or f'remote policy at {client.uri}'
        self._lock = threading.Lock()
        self._windows = {name: Window() for name in ('round_trip', 'server', 'overhead')}
        self.failures, self.last_error = 0, ''

    @classmethod
    def connect(cls, uri, preset='vla_serve', api_key=None, timeout=1.0, action_dim=7,
                chunk_len=0, camera_keys=(), state_keys=(), prompt_key='', response_key=''):
        """
        Return a policy speaking to ``uri``; raise ``ConfigError`` naming the problem.

        ``vla_serve`` connects now (its metadata gives the keys and sizes); the openpi presets
        connect at the first ``predict``. ``state_keys``: ``(key, n)`` pairs.
        """
        if preset not in PRESETS:
            raise ConfigError(f'remote preset {preset!r} is not known; use one of '
                              f'{", ".join(PRESETS)}')
        try:
            client = Client(uri, api_key=api_key, timeout=timeout)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        spec, unnorm_key, labels = PRESETS[preset], None, None
        if spec is None:
            try:
                metadata = client.connect()
            except RemoteError as exc:
                raise ConfigError(f'{exc}; remote_preset vla_serve needs the server up at '
                                  'start (its metadata gives the keys and sizes)') from None
            spec = spec_from_metadata(metadata, uri)
            action_dim, chunk_len = metadata.get('action_dim'), metadata.get('chunk_len')
            unnorm_key, labels = metadata.get('unnorm_key'), metadata.get('action_labels')
        overrides = {'camera_keys': tuple(camera_keys), 'state_keys': tuple(state_keys),
                     'prompt_key': prompt_key, 'response_key': response_key}
        spec = dataclasses.replace(spec, **{k: v for k, v in overrides.items() if v})
        return cls(client, spec, action_dim, chunk_len or 0, unnorm_key, labels,
                   f'{preset} server at {uri}')

    # ---------------------------------------------------------------- the contract
    @property
    def action_dim(self):
        """Return the length of one action (the server's, or what the caller handles)."""
        return self._action_dim

    @property
    def chunk_len(self):
        """Return the rows of each reply (0: any number, as the server sends)."""
        return self._chunk_len

    @property
    def num_images(self):
        """Return the number of camera keys."""
        return len(self.spec.camera_keys)

    @property
    def proprio_dim(self):
        """Return the number of state values the state keys take."""
        return self.spec.state_dim

    @property
    def unnorm_keys(self):
        """Return the server's statistics key (``server`` when it does not say)."""
        return (self._unnorm_key,)

    @property
    def action_labels(self):
        """Return the server's action labels when it sends them."""
        return self._labels or super().action_labels

    @property
    def description(self):
        """Return the preset and the server."""
        return self._description

    @property
    def stats_source(self):
        """Return the server: it un-normalises."""
        return f'the server at {self.client.uri}'

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        """Return the server's ``Action`` for this observation; raise ``RemoteError``."""
        if isinstance(images, (np.ndarray, Image.Image)):
            images = [images]
        if len(images) != self.num_images:
            raise RemoteError(f'{len(images)} image(s) given, the keys take {self.num_images}')
        try:
            reply, timing = self.client.request(
                self.spec.observation(images, instruction, proprio))
            rows = self._rows(reply)
        except RemoteError as exc:
            with self._lock:
                self.failures += 1
                self.last_error = str(exc)
            raise
        for name, window in self._windows.items():
            window.add(timing[name])
        valid = reply.get('valid', True) is not False
        reason = reply.get('reason', '') if not valid else ''
        return Action(values=rows, valid=valid, token_ids=np.zeros(0, np.int64),
                      normalized=np.full_like(rows, np.nan), reason=str(reason),
                      unnorm_key=self._unnorm_key, timing=timing)

    def _rows(self, reply):
        """Return the reply's actions as float64 (K, D); raise ``RemoteError``."""
        key = self.spec.response_key
        if key not in reply:
            raise RemoteError(f'the reply of {self.client.uri} has no {key!r} (keys: '
                              f'{", ".join(map(str, list(reply)[:8]))})')
        actions = reply[key]
        if not isinstance(actions, np.ndarray) or actions.dtype.kind not in 'iuf':
            raise RemoteError(f'{key!r} of the reply is not a numeric array')
        rows = np.array(np.atleast_2d(actions), dtype=np.float64)  # (K, D), a copy
        want = self._chunk_len or rows.shape[0]
        if rows.ndim != 2 or rows.shape != (want, self._action_dim) or rows.size == 0:
            raise RemoteError(f'{key!r} of the reply has shape {actions.shape}, expected '
                              f'({self._chunk_len or "any"}, {self._action_dim})')
        if not np.isfinite(rows).all():
            raise RemoteError(f'{key!r} of the reply holds NaN or infinity')
        return rows

    def diagnostics(self):
        """Return the timing split (p50, p95 in ms) and the failures, for /diagnostics."""
        values = {}
        for name, window in self._windows.items():
            summary = window.summary()
            values[f'remote_{name}_p50_ms'] = summary['p50'] * 1e3
            values[f'remote_{name}_p95_ms'] = summary['p95'] * 1e3
        with self._lock:
            values.update(remote_failures=self.failures, remote_last_error=self.last_error[:200],
                          remote_connects=self.client.connects)
        return values

    def close(self):
        """Close the connection."""
        self.client.close()
