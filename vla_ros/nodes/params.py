"""
Node parameters: declared once (name, typed default, description, allowed values), checked once.

Every parameter is declared with ``dynamic_typing``, so rclpy neither crashes at start on a value
of another type nor answers a run-time change with its own terse type error; instead ``check``
(used at start by ``read`` and at run time by ``check_changes``) gives every problem in one
sentence naming the parameter, the value and what is allowed. The type comes from the default:

* ``float``: a number (an integer is accepted, ``-p control_rate_hz:=5``);
* ``int``: an integer (a float with no fraction is accepted);
* ``bool``, ``str``: that type exactly (``'0.3'`` is not a number, ``true`` is not 1.0);
* a list: numbers or strings, by the default's first element (or ``item``); a list whose
  default is empty also accepts "not set", which is what rcl makes of ``[]`` in a YAML file.

Each ``NodeParam`` may add ``check`` (a predicate on the typed value) and ``allowed`` (the words
for it); ``runtime`` says whether it may change while the node runs.
"""

import dataclasses
import types

from rcl_interfaces.msg import ParameterDescriptor

from vla_ros.control.geometry import is_finite_number

_TYPE_WORDS = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}


@dataclasses.dataclass(frozen=True)
class NodeParam:
    """One parameter: its name, default (which fixes its type), description and checks."""

    name: str
    default: object
    description: str
    check: object = None  # callable(typed value) -> bool
    allowed: str = ''  # what ``check`` accepts, in words (for messages)
    runtime: bool = False  # may be changed while the node runs
    item: type = None  # element type of a list parameter whose default is empty

    @property
    def kind(self):
        """Return bool, int, float, str or list."""
        return list if isinstance(self.default, (list, tuple)) else type(self.default)

    @property
    def item_kind(self):
        if self.item is not None:
            return self.item
        return type(self.default[0]) if self.default else float


def _type_words(param):
    if param.kind is list:
        return 'a list of numbers' if param.item_kind is float else 'a list of strings'
    return _TYPE_WORDS[param.kind]


def _typed(param, value):
    """Return ``value`` converted to the parameter's type, or raise TypeError."""
    kind = param.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif value is None and not param.default:
        return ()  # rcl reads an empty YAML list ([]) as "not set"
    elif hasattr(value, '__len__') and not isinstance(value, (str, bytes)):
        items = list(value)
        if param.item_kind is float and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return tuple(float(v) for v in items)
        if param.item_kind is str and all(isinstance(v, str) for v in items):
            return tuple(items)
    raise TypeError


def _shown(value):
    if hasattr(value, 'tolist'):
        value = value.tolist()
    if hasattr(value, 'typecode'):  # array.array from rclpy
        value = list(value)
    return repr(value)


def check(param, value):
    """Return ``(typed value, None)`` or ``(value, problem)``; the problem is one sentence."""
    allowed = param.allowed or _type_words(param)
    try:
        typed = _typed(param, value)
    except TypeError:
        kind = _TYPE_WORDS.get(type(value), type(value).__name__)
        return value, (f"parameter '{param.name}' is {_shown(value)} ({kind}); it must be "
                       f'{_type_words(param)}: {allowed}')
    if param.check is None:
        return typed, None  # any value of the type (ranges checked by the caller)
    if (param.kind is float and not is_finite_number(typed)) or not param.check(typed):
        return value, f"parameter '{param.name}' is {_shown(typed)}; allowed: {allowed}"
    return typed, None


def declare(node, params):
    """Declare every parameter on ``node`` with its default and description."""
    for p in params:
        description = p.description + (f' Allowed: {p.allowed}.' if p.allowed else '')
        node.declare_parameter(p.name, list(p.default) if p.kind is list else p.default,
                               ParameterDescriptor(description=description,
                                                   dynamic_typing=True))


def read(node, params):
    """Return ``(cfg, problems)``: the typed values as a namespace, and every problem found."""
    values, problems = {}, []
    for p in params:
        values[p.name], problem = check(p, node.get_parameter(p.name).value)
        if problem:
            problems.append(problem)
    return types.SimpleNamespace(**values), problems


def check_changes(params, changes, running, hint):
    """
    Check run-time changes (rclpy ``Parameter``s); return ``({name: typed value}, reason)``.

    ``reason`` is None when every change is acceptable. While ``running``, a parameter that is
    not ``runtime`` is refused with ``hint`` (how to change it). Parameters not in ``params``
    (``use_sim_time``...) are left to rclpy.
    """
    by_name = {p.name: p for p in params}
    values = {}
    for change in changes:
        param = by_name.get(change.name)
        if param is None:
            continue
        if running and not param.runtime:
            return {}, f"'{change.name}' cannot change while the node runs: {hint}"
        values[change.name], problem = check(param, change.value)
        if problem:
            return {}, problem
    return values, None
