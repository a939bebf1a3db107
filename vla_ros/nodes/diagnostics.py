"""Build ``/diagnostics`` messages from plain values (shared by every vla_ros node)."""

import math

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR


def _text(value):
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.6g}'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


def status(name, level, message, values, hardware_id=''):
    """Return a DiagnosticStatus whose key-values are ``values`` (a dict), in insertion order."""
    msg = DiagnosticStatus()
    msg.name = name
    msg.level = level
    msg.message = message
    msg.hardware_id = hardware_id
    msg.values = [KeyValue(key=str(k), value=_text(v)) for k, v in values.items()]
    return msg


def array(stamp, *statuses):
    """Wrap statuses into a DiagnosticArray stamped with ``stamp`` (a builtin Time)."""
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg


def values_of(status_msg):
    """Return the key-values of a DiagnosticStatus as a dict of strings (for tests and tools)."""
    return {kv.key: kv.value for kv in status_msg.values}
