"""
openpi's websocket wire format: msgpack maps with numpy arrays, packed and safely unpacked.

    data = pack({'observation/image': image, 'prompt': 'pick up the cup'})
    message = unpack(data)                    # Limits() by default: refuses what is unsafe

The array encoding is openpi-client's (``openpi_client.msgpack_numpy``), so either side can be
the reference implementation: an ``np.ndarray`` is the map ``{b'__ndarray__': True, b'data':
bytes, b'dtype': dtype.str, b'shape': [...]}``, a numpy scalar ``{b'__npgeneric__': True,
b'data': item, b'dtype': dtype.str}``; text is msgpack str, bytes are msgpack bin.

The reference decoder trusts what it reads: ``np.ndarray(buffer=data, dtype=dtype, shape=...)``
with an object dtype reads the bytes as pointers. ``unpack`` refuses, with a ``WireError``
naming the problem: a message over ``max_message_bytes`` (checked before msgpack reads it; the
same limit bounds every str, bin, array and map length inside), msgpack extension types, maps
nested deeper than ``max_depth``, an array or scalar whose dtype kind is not bool, signed or
unsigned integer or float (object, void, complex, strings, datetimes, structured and sub-array
dtypes), a shape with more than ``max_ndim`` dimensions or a negative, non-integer or huge one, a
shape whose element count times the item size is not the byte count, and malformed array maps
(missing or extra keys). Arrays come back read-only: views of the message's own immutable bytes
(no copy, and nothing a later message can change).
"""

import dataclasses
import math

import msgpack
import numpy as np

__all__ = ['ALLOWED_KINDS', 'Limits', 'WireError', 'pack', 'unpack']

# bool, signed and unsigned integers, floats: the kinds whose every byte pattern is a value.
ALLOWED_KINDS = frozenset('biuf')
ARRAY_KEYS = frozenset({b'__ndarray__', b'data', b'dtype', b'shape'})
SCALAR_KEYS = frozenset({b'__npgeneric__', b'data', b'dtype'})
MAX_DTYPE_CHARS = 8  # '<f8', '|u1', '>i4': anything longer is no dtype of the allowed kinds


class WireError(ValueError):
    """A message that is not what the protocol allows; the text names the problem."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """
    What ``unpack`` accepts.

    ``max_message_bytes``: the whole message (also the websocket frame limit of ``vla_serve``);
    64 MiB holds a dozen full-HD RGB images. ``max_depth``: maps and lists nested in one another
    (an observation is 2 deep, an array map 3). ``max_ndim``: dimensions of one array.
    """

    max_message_bytes: int = 64 << 20
    max_depth: int = 8
    max_ndim: int = 8

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'Limits.{field.name} must be a positive int, not {value!r}')


def _encode(obj):
    """Return the map of a numpy array or scalar, as openpi-client (msgpack's ``default``)."""
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind in ('V', 'O', 'c'):
            raise WireError(f'cannot send a {obj.dtype} array: void, object and complex dtypes '
                            'have no meaning on the wire')
        if isinstance(obj, np.ndarray):
            return {b'__ndarray__': True, b'data': obj.tobytes(), b'dtype': obj.dtype.str,
                    b'shape': obj.shape}
        return {b'__npgeneric__': True, b'data': obj.item(), b'dtype': obj.dtype.str}
    raise WireError(f'cannot send a {type(obj).__name__}: send dicts, lists, str, bytes, '
                    'numbers, None and numpy arrays')


def pack(obj):
    """Return ``obj`` (dicts, lists, str, bytes, numbers, numpy arrays) as one msgpack message."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpack(data, limits=Limits()):
    """
    Return the message ``data`` (bytes) decoded, numpy arrays included; raise ``WireError``.

    See the module docstring for what is refused. Map keys come back as msgpack wrote them
    (str for text, bytes for bin).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f'a message is binary (bytes), not {type(data).__name__}')
    size = len(data)
    if size > limits.max_message_bytes:
        raise WireError(f'message of {size} bytes is over the limit of '
                        f'{limits.max_message_bytes} bytes')
    # No item inside can be longer than the message: the same bound for every length field,
    # so a header claiming 2 GB is refused before anything is allocated for it.
    cap = limits.max_message_bytes
    try:
        raw = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True,
                              max_str_len=cap, max_bin_len=cap, max_array_len=cap,
                              max_map_len=cap, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ExtraData, FormatError, StackError and the limit errors are all ValueErrors.
        raise WireError(f'not a valid msgpack message: {type(exc).__name__}: {exc}') from None
    return _decode(raw, limits, 0)


def _decode(obj, limits, depth):
    """Return ``obj`` with array and scalar maps turned into numpy, checking the depth."""
    if isinstance(obj, dict):
        if depth >= limits.max_depth:
            raise WireError(f'maps and lists nested deeper than {limits.max_depth}')
        if b'__ndarray__' in obj:
            return _array(obj, limits)
        if b'__npgeneric__' in obj:
            return _scalar(obj)
        return {key: _decode(value, limits, depth + 1) for key, value in obj.items()}
    if isinstance(obj, list):
        if depth >= limits.max_depth:
            raise WireError(f'maps and lists nested deeper than {limits.max_depth}')
        return [_decode(value, limits, depth + 1) for value in obj]
    return obj


def _dtype(obj, what):
    """Return the allowed numpy dtype named by ``obj[b'dtype']``; raise ``WireError``."""
    name = obj.get(b'dtype')
    if not isinstance(name, str) or not 0 < len(name) <= MAX_DTYPE_CHARS:
        raise WireError(f'{what}: dtype must be a short str such as "<f8", not {name!r:.40}')
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        raise WireError(f'{what}: {name!r} is not a numpy dtype') from None
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype:
        raise WireError(f'{what}: dtype {name!r} (kind {dtype.kind!r}) is refused; allowed are '
                        'bool, integers and floats')
    return dtype


def _array(obj, limits):
    """Return the read-only ndarray of an array map; raise ``WireError``."""
    if set(obj) != ARRAY_KEYS:
        raise WireError(f'array map needs exactly the keys {sorted(ARRAY_KEYS)}, has '
                        f'{sorted(map(repr, obj))[:8]}')
    dtype = _dtype(obj, 'array')
    data, shape = obj[b'data'], obj[b'shape']
    if not isinstance(data, bytes):
        raise WireError(f'array data must be bin (bytes), not {type(data).__name__}')
    if not isinstance(shape, list) or len(shape) > limits.max_ndim:
        raise WireError(f'array shape must be a list of at most {limits.max_ndim} ints, '
                        f'not {shape!r:.80}')
    if not all(type(d) is int and 0 <= d <= limits.max_message_bytes for d in shape):
        raise WireError(f'array shape must hold ints from 0 to {limits.max_message_bytes}, '
                        f'not {shape!r:.80}')
    count = math.prod(shape)  # Python ints: no overflow, however large the claim
    if count * dtype.itemsize != len(data):
        raise WireError(f'array of shape {tuple(shape)} and dtype {dtype.str} needs '
                        f'{count * dtype.itemsize} bytes, the message has {len(data)}')
    # A view of an immutable bytes object is read-only already.
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _scalar(obj):
    """Return the numpy scalar of a scalar map; raise ``WireError``."""
    if set(obj) != SCALAR_KEYS:
        raise WireError(f'scalar map needs exactly the keys {sorted(SCALAR_KEYS)}, has '
                        f'{sorted(map(repr, obj))[:8]}')
    dtype = _dtype(obj, 'scalar')
    item = obj[b'data']
    if type(item) not in (bool, int, float):
        raise WireError(f'scalar data must be a bool, int or float, not {type(item).__name__}')
    try:
        return dtype.type(item)
    except (OverflowError, TypeError, ValueError) as exc:
        raise WireError(f'scalar {item!r:.40} does not fit dtype {dtype.str}: {exc}') from None
