"""The wire codec: openpi-client's encoding both ways, and what the safe unpacker refuses."""

import struct

import msgpack
import numpy as np
import pytest

from vla_ros.remote.observations import camera_keys, ObservationError, ObservationSchema
from vla_ros.remote.wire import Limits, pack, unpack, WireError


def array_map(data, dtype, shape):
    """Return the map openpi-client's msgpack_numpy writes for an array (built by hand)."""
    return {b'__ndarray__': True, b'data': data, b'dtype': dtype, b'shape': shape}


def test_pack_writes_openpi_clients_maps_and_unpack_reads_them_back():
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    state = np.linspace(-1, 1, 8)
    obs = {'observation/image': image, 'observation/state': state, 'prompt': 'pick',
           'n': np.float32(2.5), 'nested': [1, {'x': np.int64(-3)}]}
    raw = msgpack.unpackb(pack(obs), raw=False)
    assert raw['observation/image'] == array_map(image.tobytes(), '|u1', [2, 4, 3])
    assert raw['n'] == {b'__npgeneric__': True, b'data': 2.5, b'dtype': '<f4'}
    back = unpack(pack(obs))
    assert back['observation/image'].dtype == np.uint8
    np.testing.assert_array_equal(back['observation/image'], image)
    np.testing.assert_array_equal(back['observation/state'], state)
    assert back['prompt'] == 'pick' and back['nested'][1]['x'] == np.int64(-3)
    assert type(back['n']) is np.float32
    assert not back['observation/state'].flags.writeable  # no one can change it under predict


@pytest.mark.parametrize('dtype', ['|O', '|V8', '<c16', '<U2', '|S8', '<M8', 'i4,i4', '(2,)f4'])
def test_unpack_refuses_dtypes_that_are_not_plain_numbers(dtype):
    message = msgpack.packb({'a': array_map(b'\0' * 16, dtype, [2])})
    with pytest.raises(WireError, match='refused|not a numpy dtype'):
        unpack(message)


def test_pack_refuses_object_arrays():
    with pytest.raises(WireError, match='object'):
        pack({'a': np.array([None, 1], dtype=object)})


@pytest.mark.parametrize('shape, size, problem', [
    ([224, 224, 3], 100, 'needs 150528 bytes, the message has 100'),
    ([1 << 31, 1 << 31, 0], 0, 'ints from 0 to'),
    ([-2, -8], 16, 'ints from 0 to'),
    ([2.0, 8], 16, 'ints from 0 to'),
    ([1] * 9, 1, 'at most 8 ints'),
    ('16', 16, 'list of at most'),
])
def test_unpack_refuses_shapes_that_do_not_fit_their_bytes(shape, size, problem):
    message = msgpack.packb({'a': array_map(b'\0' * size, '|u1', shape)})
    with pytest.raises(WireError, match=problem):
        unpack(message)


def test_unpack_refuses_malformed_array_and_scalar_maps():
    cases = [array_map('text', '|u1', [4]), {b'__ndarray__': True, b'data': b'x'},
             dict(array_map(b'x', '|u1', [1]), extra=1),
             {b'__npgeneric__': True, b'data': 'x', b'dtype': '<f8'},
             {b'__npgeneric__': True, b'data': 300, b'dtype': '|u1'}]
    for case in cases:
        with pytest.raises(WireError):
            unpack(msgpack.packb({'a': case}))


def test_unpack_refuses_size_claims_before_reading_them():
    # A bin 32 header claiming 2 GiB followed by 3 bytes: refused, nothing allocated for it.
    claim = b'\x81\xa1a\xc6' + struct.pack('>I', 2 << 30) + b'abc'
    with pytest.raises(WireError, match='not a valid msgpack'):
        unpack(claim)
    with pytest.raises(WireError, match='over the limit of 1000 bytes'):
        unpack(pack({'a': np.zeros(2000, np.uint8)}), Limits(max_message_bytes=1000))


def test_unpack_refuses_deep_nesting_extensions_and_garbage():
    deep = b'\x91' * 100 + b'\xc0'  # a list in a list ... 100 deep
    with pytest.raises(WireError, match='nested deeper than 8'):
        unpack(deep)
    with pytest.raises(WireError, match='not a valid msgpack'):
        unpack(b'\x91' * 100_000 + b'\xc0')  # past msgpack's own stack
    with pytest.raises(WireError, match='not a valid msgpack'):
        unpack(msgpack.packb({'a': msgpack.ExtType(5, b'abc')}))
    with pytest.raises(WireError, match='not a valid msgpack'):
        unpack(b'\xc1')
    with pytest.raises(WireError, match='binary'):
        unpack('text')


def test_camera_keys_follow_openpis_libero_example():
    assert camera_keys(1) == ('observation/image',)
    assert camera_keys(2) == ('observation/image', 'observation/wrist_image')
    assert camera_keys(3)[1:] == ('observation/left_wrist_image', 'observation/right_wrist_image')
    assert camera_keys(4)[3] == 'observation/wrist_image_3'


def test_schema_reads_a_good_observation_and_names_what_is_wrong():
    schema = ObservationSchema.for_policy(2, 8)
    image = np.zeros((8, 8, 3), np.uint8)
    good = {'observation/image': image, 'observation/wrist_image': image,
            'observation/state': np.arange(8, dtype=np.float32), 'prompt': 'go'}
    images, prompt, state = schema.read(good)
    assert len(images) == 2 and prompt == 'go' and state.dtype == np.float64
    bad = [({k: v for k, v in good.items() if k != 'observation/wrist_image'},
            'missing observation/wrist_image'),
           (dict(good, extra=1), "unknown 'extra'"),
           (dict(good, prompt=b'go'), 'prompt must be a str'),
           (dict(good, **{'observation/image': image.astype(np.float32)}), 'uint8'),
           (dict(good, **{'observation/image': np.zeros((8, 8, 5), np.uint8)}), 'RGBA'),
           (dict(good, **{'observation/state': np.zeros(7)}), r'shape \(8,\)'),
           (dict(good, **{'observation/state': np.full(8, np.nan)}), 'NaN')]
    for observation, problem in bad:
        with pytest.raises(ObservationError, match=problem):
            schema.read(observation)
    assert ObservationSchema.for_policy(1, 0).keys == ('observation/image', 'prompt')
