"""
The policy's error types: one base class, one subclass per kind of mistake.

Every message names what is wrong (the file, the tensor, the argument and its value) and the fix,
so a user reading one log line at start-up knows what to do.

- ``CheckpointError``: a checkpoint directory or one of its files is missing, unsafe, corrupt or
  does not fit the model (missing/unexpected tensors, wrong shapes, bad config.json).
- ``ConfigError``: a bad argument (``device``, ``dtype``, ``quantization``, ``unnorm_key``).
- ``InputError``: a bad input to ``predict`` (image type, dtype or shape; instruction).

``ConfigError`` and ``InputError`` are also ``ValueError``, so generic callers can catch them.
"""

__all__ = ['CheckpointError', 'ConfigError', 'InputError', 'PolicyError', 'format_names']


class PolicyError(Exception):
    """Base class of every error the policy raises on purpose."""


class CheckpointError(PolicyError):
    """A checkpoint directory or file cannot be used; the message names the file and the fix."""


class ConfigError(PolicyError, ValueError):
    """A bad argument; the message names it, its value and the allowed values."""


class InputError(PolicyError, ValueError):
    """A bad input to ``predict``; the message says what was expected."""


def format_names(names, limit=12):
    """Return ``names`` sorted and comma-separated, truncated after ``limit`` with a count."""
    names = sorted(names)
    shown = ', '.join(names[:limit])
    if len(names) > limit:
        shown += f', ... ({len(names) - limit} more)'
    return shown
