"""
The one contract every policy implements (``Policy``) and its check against a configuration.

``mismatches`` is that check (cameras, state, action length): vla_node and vla_eval both call it
and put its findings into their own words (parameters, command-line options).

    class MyPolicy(Policy):
        action_dim = 7
        unnorm_keys = ('my_robot',)
        def predict(self, images, instruction, proprio=None, unnorm_key=None): ...

A ``module:callable`` policy (``load_policy``) returns an instance of a subclass; the node, the
control core, evaluation and the benches read only what is declared here, never probe.
"""

import abc
import dataclasses

from vla_ros.policy.errors import ConfigError

# The end-effector delta layout of OpenVLA and of OFT's LIBERO and Bridge platforms.
EE_DELTA_LABELS = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')


class Policy(abc.ABC):
    """
    A policy: camera images, an instruction and the robot's state in, an ``Action`` out.

    ``predict(images, instruction, proprio=None, unnorm_key=None)`` takes ``num_images`` images
    (primary camera first; a one-image policy also takes the image alone, as OpenVLA's documented
    ``predict(image, ...)``), ``proprio_dim`` state values (None when it is 0) and a key of
    ``unnorm_keys``. Every result is a chunk: ``Action.rows`` is float64 (``chunk_len``,
    ``action_dim``) for every policy. ``Action.values`` keeps each model's reference shape:
    (``action_dim``,) for OpenVLA, exactly as its ``predict_action``, so a one-action policy's
    chunk is its one row; (``chunk_len``, ``action_dim``) for OFT. Callers that handle every
    policy read ``rows``.

    Subclasses define ``predict``, ``action_dim`` and ``unnorm_keys``; the rest has defaults
    that fit a one-camera, stateless, one-action policy.
    """

    device = None  # where it runs (a torch.device), None when it does not say
    dtype = None  # its compute dtype (a torch.dtype), None when it does not say
    head_kind = None  # OFT: 'l1' or 'discrete'; None for token-by-token decoding (OpenVLA)

    @abc.abstractmethod
    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        """Return the ``Action`` for ``images``, ``instruction`` and ``proprio``."""

    @property
    @abc.abstractmethod
    def action_dim(self):
        """Return the length of one action (one row of the chunk)."""

    @property
    @abc.abstractmethod
    def unnorm_keys(self):
        """Return the keys of the dataset statistics it can un-normalise with, sorted."""

    @property
    def num_images(self):
        """Return the number of camera images ``predict`` takes."""
        return 1

    @property
    def proprio_dim(self):
        """Return the number of state values ``predict`` takes; 0: it takes no state."""
        return 0

    @property
    def chunk_len(self):
        """Return the number of actions (rows) of each prediction."""
        return 1

    @property
    def action_labels(self):
        """Return a name per action dimension (the end-effector delta layout when 7-D)."""
        if self.action_dim == len(EE_DELTA_LABELS):
            return EE_DELTA_LABELS
        return tuple(f'a{i}' for i in range(self.action_dim))

    @property
    def description(self):
        """Return what the policy is, in a few words, for messages."""
        return type(self).__name__

    @property
    def stats_source(self):
        """Return where ``unnorm_keys`` come from, for messages (a file, say)."""
        return 'the policy'

    def resolve_unnorm_key(self, unnorm_key=None):
        """
        Return the statistics key to use for ``unnorm_key``.

        None or '' is allowed only when there is exactly one key; an unknown key raises
        ``ConfigError`` listing the valid ones.
        """
        keys = list(self.unnorm_keys)
        if unnorm_key is None or unnorm_key == '':
            if len(keys) == 1:
                return keys[0]
            raise ConfigError(f'unnorm_key is required: this checkpoint has {len(keys)} dataset '
                              f'statistics ({self.stats_source}); pass one of: '
                              f'{", ".join(keys)}.')
        if unnorm_key not in keys:
            raise ConfigError(f'unnorm_key={unnorm_key!r} is not in the dataset statistics of '
                              f'this checkpoint ({self.stats_source}); valid keys: '
                              f'{", ".join(keys)}.')
        return unnorm_key

    def diagnostics(self):
        """Return values the node adds to /diagnostics: none; a remote policy adds its timing."""
        return {}

    def close(self):
        """Free what the policy holds (weights, GPU memory); nothing by default."""


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """
    One way a configuration does not fit a policy.

    ``kind``: 'cameras', 'state' or 'actions'; ``given``: what the configuration has (cameras,
    state values, action values it handles), ``needed``: what the policy has. ``sentence`` says
    the policy's side, the same words for every caller; the caller says the configuration's side
    in its own terms (parameters, command-line options) and the fix.
    """

    kind: str
    given: int
    needed: int
    sentence: str


def mismatches(policy, num_cameras, state_dim, action_dim):
    """
    Return the ``Mismatch``es of a configuration with ``policy`` (empty when it fits).

    ``num_cameras``: the camera topics; ``state_dim``: the values of the state layout;
    ``action_dim``: the length of the actions the caller handles.
    """
    found = []
    who = f'the policy ({policy.description})'
    if num_cameras != policy.num_images:
        found.append(Mismatch('cameras', num_cameras, policy.num_images,
                              f'{who} takes {policy.num_images} image(s)'))
    needed = policy.proprio_dim
    if state_dim != needed:
        what = (f'needs {needed} state values' if needed
                else 'takes no state (no proprio projector)')
        found.append(Mismatch('state', state_dim, needed, f'{who} {what}'))
    if policy.action_dim != action_dim:
        found.append(Mismatch('actions', action_dim, policy.action_dim,
                              f'{who} predicts {policy.action_dim}-D actions'))
    return found
