"""
Test policies for vla_node, loaded through its ``policy`` parameter ('policies:slow', ...).

Each wraps the real ``OpenVLAPolicy`` on the given checkpoint and changes one thing: it sleeps
or it raises (or its factory does). Test code only; the test puts this folder on the node's
PYTHONPATH.
"""

import os
import time

from vla_ros.policy import OpenVLAPolicy

# An instruction that makes ``failing`` raise; any other instruction predicts normally.
FAIL_INSTRUCTION = 'raise an error'


class _Wrapped:
    def __init__(self, policy):
        self._policy = policy

    def __getattr__(self, name):
        return getattr(self._policy, name)


class _Slow(_Wrapped):
    def __init__(self, policy, delay):
        super().__init__(policy)
        self._delay = delay

    def predict(self, image, instruction, unnorm_key=None):
        if instruction != 'warm up':
            time.sleep(self._delay)
        return self._policy.predict(image, instruction, unnorm_key=unnorm_key)


class _Failing(_Wrapped):
    def __init__(self, policy, error):
        super().__init__(policy)
        self._error = error  # a new exception each time

    def predict(self, image, instruction, unnorm_key=None):
        if instruction == FAIL_INSTRUCTION:
            raise self._error()
        return self._policy.predict(image, instruction, unnorm_key=unnorm_key)


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
