"""
Load a policy ready for its first control step: one function for the node, evaluation and benches.

    policy, unnorm_key = load_policy('/models/openvla-7b', unnorm_key='bridge_orig')

``load_policy`` builds the policy named by ``policy`` (``'openvla'``, ``'openvla_oft'``, or
``'module:callable'``, a callable returning a ``vla_ros.policy.Policy``), resolves the unnorm
key (a wrong one raises with the list of valid keys) and warms it up with one prediction, so the
first real prediction pays for no lazy initialisation (allocators, kernels, CUDA graphs). Errors
are ``PolicyError``s with one line naming the problem and the fix.
"""

import contextlib
import importlib

import numpy as np

from vla_ros.policy.base import Policy
from vla_ros.policy.errors import ConfigError, PolicyError

POLICIES = ('openvla', 'openvla_oft')
WARMUP_INSTRUCTION = 'warm up'


def policy_factory(name):
    """Return the callable ``factory(model_path, **kwargs)`` for a policy name."""
    if name == 'openvla':
        from vla_ros.policy.openvla.policy import OpenVLAPolicy
        return OpenVLAPolicy.from_pretrained
    if name == 'openvla_oft':
        from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
        return OpenVLAOFTPolicy.from_pretrained
    module_name, _, attr = name.partition(':')
    if not module_name or not attr:
        raise ConfigError(f'policy {name!r} is not known; use one of {", ".join(POLICIES)} or '
                          "'package.module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f'policy {name!r}: cannot import {attr} from {module_name} ({exc}); '
                          'check the module is on PYTHONPATH') from None
    except Exception as exc:  # noqa: B902 - importing runs the module's code, which may raise
        raise ConfigError(f'policy {name!r}: importing {module_name} raised '
                          f'{type(exc).__name__}: {exc}; fix that module') from None
    if not callable(factory):
        raise ConfigError(f'policy {name!r}: {module_name}.{attr} is a {type(factory).__name__}, '
                          'not a callable; name a function or class that takes (model_path, '
                          '**kwargs) and returns a policy')
    return factory


@contextlib.contextmanager
def custom_errors(name, what, fix):
    """
    Turn what a ``module:callable`` policy raises into a ``ConfigError``: ``what`` failed, ``fix``.

    Its code is the user's and may raise anything; the package's own policies raise
    ``PolicyError`` on purpose, and anything else from them passes unchanged (a bug to report).
    """
    try:
        yield
    except PolicyError:
        raise
    except Exception as exc:  # noqa: B902 - user code: see the docstring
        if name in POLICIES:
            raise
        raise ConfigError(f'policy {name!r} failed {what}: {type(exc).__name__}: {exc}; '
                          f'{fix}') from None


def warm_up(policy, unnorm_key):
    """Run one prediction on grey 224x224 images (and a zero state) (results discarded)."""
    grey = np.full((224, 224, 3), 128, np.uint8)
    state = np.zeros(policy.proprio_dim) if policy.proprio_dim else None
    policy.predict([grey] * policy.num_images, WARMUP_INSTRUCTION, proprio=state,
                   unnorm_key=unnorm_key)


def load_policy(model_path, policy='openvla', unnorm_key='', device='auto', dtype='auto',
                center_crop=False, quantization=None, platform='libero', action_head='auto'):
    """
    Load, resolve the unnorm key and warm up; return ``(policy, resolved unnorm key)``.

    ``platform`` and ``action_head`` are OpenVLA-OFT's. Raises ``PolicyError`` for every
    problem with the checkpoint or the arguments, and for anything a ``module:callable`` policy
    raises.
    """
    factory = policy_factory(policy)
    kwargs = {'device': device, 'dtype': dtype, 'center_crop': center_crop}
    if quantization:
        kwargs['quantization'] = quantization
    if policy == 'openvla_oft':
        kwargs.update(platform=platform, action_head=action_head)
    with custom_errors(policy, 'to load', f'fix {policy} (called as factory(model_path, '
                       f'{", ".join(f"{k}=..." for k in kwargs)}))'):
        loaded = factory(str(model_path), **kwargs)
    if not isinstance(loaded, Policy):
        raise ConfigError(f'policy {policy!r} returned a {type(loaded).__name__}, not a '
                          'vla_ros.policy.Policy; make it return an instance of a subclass of '
                          'vla_ros.policy.Policy (predict, action_dim, unnorm_keys)')
    try:
        with custom_errors(policy, 'its warm-up', 'fix its predict(images, instruction, '
                           'proprio=None, unnorm_key=None) or unnorm_keys'):
            key = loaded.resolve_unnorm_key(unnorm_key or None)
            warm_up(loaded, key)
    except PolicyError:
        loaded.close()
        raise
    return loaded, key
