"""Declare a node's parameters once (name, typed default, description) and read them back."""

import dataclasses
import types

from rcl_interfaces.msg import ParameterDescriptor


@dataclasses.dataclass(frozen=True)
class NodeParam:
    """One parameter: its name, its default (which fixes its type) and a description."""

    name: str
    default: object
    description: str


def declare(node, params):
    """Declare every parameter on ``node`` with its type, default and description."""
    for p in params:
        # Floats also accept integers (``-p control_rate_hz:=5``); ``read`` converts them.
        descriptor = ParameterDescriptor(description=p.description,
                                         dynamic_typing=isinstance(p.default, float))
        node.declare_parameter(p.name, p.default, descriptor)


def read(node, params):
    """Return the current values as a namespace (``cfg.model_path`` ...)."""
    values = {p.name: node.get_parameter(p.name).value for p in params}
    for p in params:
        # An integer given on the command line for a float parameter is still a number.
        if isinstance(p.default, float) and isinstance(values[p.name], int):
            values[p.name] = float(values[p.name])
    return types.SimpleNamespace(**values)
