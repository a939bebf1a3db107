"""
Test policies for vla_node, loaded through its ``policy`` parameter ('policies:slow', ...).

Each wraps the real ``OpenVLAPolicy`` on the given checkpoint behind the ``Policy`` contract and
changes one thing: it sleeps, it raises (or its factory does), or it returns NaN rows; ``duck``
returns an object that is not a ``Policy``. Test code only; the test puts this
folder on the node's PYTHONPATH.
"""

import dataclasses
import os
import time

import numpy as np

from vla_ros.policy import OpenVLAPolicy, Policy

# An instruction that makes ``failing`` raise; any other instruction predicts normally.
FAIL_INSTRUCTION = 'raise an error'
# An instruction that makes ``nan_rows`` return a chunk of 4 rows: the prediction, then 3 NaN rows.
NAN_INSTRUCTION = 'return nan rows'


class _Wrapped(Policy):
    """The wrapped policy's contract, unchanged; subclasses change ``predict``."""

    def __init__(self, policy):
        self._policy = policy
        self.device, self.dtype = policy.device, policy.dtype

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        return self._policy.predict(images, instruction, proprio, unnorm_key=unnorm_key)

    @property
    def action_dim(self):
        return self._policy.action_dim

    @property
    def unnorm_keys(self):
        return self._policy.unnorm_keys

    def resolve_unnorm_key(self, unnorm_key=None):
        return self._policy.resolve_unnorm_key(unnorm_key)

    def close(self):
        self._policy.close()


class _Slow(_Wrapped):
    def __init__(self, policy, delay):
        super().__init__(policy)
        self._delay = delay

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        if instruction != 'warm up':
            time.sleep(self._delay)
        return super().predict(images, instruction, proprio, unnorm_key)


class _Failing(_Wrapped):
    def __init__(self, policy, error):
        super().__init__(policy)
        self._error = error  # a new exception each time

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        if instruction == FAIL_INSTRUCTION:
            raise self._error()
        return super().predict(images, instruction, proprio, unnorm_key)


class _NanRows(_Wrapped):
    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        action = super().predict(images, instruction, proprio, unnorm_key)
        if instruction != NAN_INSTRUCTION:
            return action
        nan = np.full((3, action.values.size), np.nan)
        return dataclasses.replace(action, values=np.vstack([action.values, nan]),  # (4, 7)
                                   normalized=np.vstack([action.normalized, nan]))


class _Duck:
    """What a custom policy looked like before the contract: the methods, not the base class."""

    unnorm_keys = ('synth_bridge',)
    action_dim = 7

    def resolve_unnorm_key(self, unnorm_key=None):
        return unnorm_key or self.unnorm_keys[0]

    def predict(self, image, instruction, unnorm_key=None):
        raise AssertionError('a policy that is no Policy must not be used')


def slow(model_path, **kwargs):
    """Sleep ``VLA_TEST_POLICY_DELAY`` seconds (default 1.0) before every prediction."""
    delay = float(os.environ.get('VLA_TEST_POLICY_DELAY', '1.0'))
    return _Slow(OpenVLAPolicy.from_pretrained(model_path, **kwargs), delay)


def failing(model_path, **kwargs):
    """Raise RuntimeError for the instruction FAIL_INSTRUCTION."""
    return _Failing(OpenVLAPolicy.from_pretrained(model_path, **kwargs),
                    lambda: RuntimeError('injected model failure'))


def exiting(model_path, **kwargs):
    """Call sys.exit (raise SystemExit, not an Exception) for the instruction FAIL_INSTRUCTION."""
    return _Failing(OpenVLAPolicy.from_pretrained(model_path, **kwargs),
                    lambda: SystemExit('injected sys.exit in predict'))


def refusing(model_path, **kwargs):
    """Fail to load: a factory raising ValueError (not a PolicyError), as user code may."""
    raise ValueError(f'no policy for {model_path!r} (injected)')


def nan_rows(model_path, **kwargs):
    """Return a chunk whose rows after the first are NaN for the instruction NAN_INSTRUCTION."""
    return _NanRows(OpenVLAPolicy.from_pretrained(model_path, **kwargs))


def duck(model_path, **kwargs):
    """Return an object with a policy's methods that does not subclass ``Policy``."""
    return _Duck()
