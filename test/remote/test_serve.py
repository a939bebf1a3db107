"""
vla_serve's server in this process (the OFT miniature: two cameras, 8-D state), real websockets.

Each bad input is its own test, and each ends by checking that a good client, connected before
the bad one, still gets the exact chunk ``predict`` gives in-process.
"""

import socket
import struct

from conftest import wait_until
import msgpack
import numpy as np
import pytest
from vla_ros.policy.loading import load_policy
from vla_ros.remote import serve as cli
from vla_ros.remote.observations import ObservationSchema
from vla_ros.remote.server import BackgroundServer, metadata_for, PolicyServer
from vla_ros.remote.wire import pack, unpack
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

KEY = 'k3y-for-tests'
PROMPT = 'put the bowl on the plate'


@pytest.fixture(scope='module')
def oft(oft_checkpoints, torch_one_thread):
    """Return ``(policy, unnorm_key)``: the OFT LIBERO miniature, loaded as vla_serve does."""
    policy, key = load_policy(oft_checkpoints['libero'], policy='openvla_oft', platform='libero',
                              unnorm_key='synth_libero_spatial_no_noops')
    yield policy, key
    policy.close()


def start(oft, api_key=None):
    """Return a started ``BackgroundServer`` (close it) serving ``oft``."""
    policy, unnorm_key = oft
    schema = ObservationSchema.for_policy(policy.num_images, policy.proprio_dim)
    metadata = metadata_for(policy, schema, unnorm_key, 'openvla_oft', 'libero')
    server = PolicyServer(policy, unnorm_key, schema, metadata, api_key=api_key)
    return BackgroundServer(server).__enter__()


@pytest.fixture(scope='module')
def served(oft):
    """Return the running server without an API key."""
    running = start(oft)
    yield running
    running.close()


@pytest.fixture(scope='module')
def observation():
    """Return one observation of openpi's LIBERO keys and the chunk ``predict`` gives for it."""
    rng = np.random.default_rng(0)
    obs = {'observation/image': rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
           'observation/wrist_image': rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
           'observation/state': rng.uniform(-0.5, 0.5, 8), 'prompt': PROMPT}
    return obs


def expected(oft, obs):
    """Return ``predict``'s rows for ``obs``, in this process."""
    policy, unnorm_key = oft
    return policy.predict([obs['observation/image'], obs['observation/wrist_image']], PROMPT,
                          proprio=obs['observation/state'], unnorm_key=unnorm_key).rows


def uri(running):
    return f'ws://127.0.0.1:{running.port}'


def ask(ws, obs):
    """Send ``obs``; return the reply (a dict) or the error text (a str)."""
    ws.send(pack(obs))
    reply = ws.recv(timeout=30)
    return reply if isinstance(reply, str) else unpack(reply)


@pytest.fixture
def good(served, oft, observation):
    """Return a check, run after the bad input, that a client connected first is still served."""
    want = expected(oft, observation)
    with connect(uri(served), compression=None, max_size=None) as ws:
        unpack(ws.recv(timeout=10))

        def still_served():
            reply = ask(ws, observation)
            np.testing.assert_array_equal(reply['actions'], want)
            with connect(uri(served)) as other:  # and a new one is welcome
                assert unpack(other.recv(timeout=10))['server'] == 'vla_serve'
        yield still_served


def test_metadata_then_the_exact_chunk_of_predict(served, oft, observation):
    with connect(uri(served)) as ws:
        meta = unpack(ws.recv(timeout=10))
        assert meta['camera_keys'] == ['observation/image', 'observation/wrist_image']
        assert (meta['state_key'], meta['state_dim'], meta['prompt_key']) == \
            ('observation/state', 8, 'prompt')
        assert (meta['chunk_len'], meta['action_dim'], meta['unnorm_key']) == \
            (8, 7, oft[1])
        first, second = ask(ws, observation), ask(ws, observation)
    assert first['actions'].dtype == np.float64 and first['actions'].shape == (8, 7)
    np.testing.assert_array_equal(first['actions'], expected(oft, observation))
    assert first['valid'] is True
    assert first['server_timing']['infer_ms'] > 0 and 'prev_total_ms' not in first['server_timing']
    assert second['server_timing']['prev_total_ms'] > 0


def test_api_key_is_required_and_compared(oft, observation):
    running = start(oft, api_key=KEY)
    try:
        for headers in (None, {'Authorization': 'Api-Key wrong'}, {'Authorization': KEY}):
            with pytest.raises(InvalidStatus) as refused:
                connect(uri(running), additional_headers=headers)
            assert refused.value.response.status_code == 401
        with connect(uri(running), additional_headers={'Authorization': f'Api-Key {KEY}'}) as ws:
            unpack(ws.recv(timeout=10))
            np.testing.assert_array_equal(ask(ws, observation)['actions'],
                                          expected(oft, observation))
    finally:
        running.close()


def test_object_dtype_is_refused(served, observation, good):
    raw = {b'__ndarray__': True, b'data': struct.pack('<Q', 0xdeadbeef) * 3, b'dtype': '|O',
           b'shape': [3]}
    with connect(uri(served)) as ws:
        ws.recv(timeout=10)
        ws.send(msgpack.packb(dict(observation, **{'observation/state': raw}),
                              default=lambda a: {b'__ndarray__': True, b'data': a.tobytes(),
                                                 b'dtype': a.dtype.str, b'shape': a.shape}))
        assert "bad message: array: dtype '|O'" in ws.recv(timeout=10)
        assert ask(ws, observation)['actions'].shape == (8, 7)  # the same connection serves on
    good()


def test_shape_that_does_not_match_its_bytes_is_refused(served, observation, good):
    obs = dict(observation, **{'observation/image': np.zeros((100,), np.uint8)})
    message = msgpack.unpackb(pack(obs), raw=False)
    message['observation/image'][b'shape'] = [224, 224, 3]
    with connect(uri(served)) as ws:
        ws.recv(timeout=10)
        ws.send(msgpack.packb(message))
        assert 'needs 150528 bytes, the message has 100' in ws.recv(timeout=10)
    good()


def test_a_2gb_size_claim_is_refused(served, observation, good):
    with connect(uri(served)) as ws:
        ws.recv(timeout=10)
        ws.send(b'\x81\xa6prompt\xc6' + struct.pack('>I', 2 << 30) + b'tiny')
        assert ws.recv(timeout=10).startswith('bad message: not a valid msgpack')
    # A websocket frame header claiming 2 GiB: the connection is closed (1009), nobody else's.
    with socket.create_connection(('127.0.0.1', served.port)) as raw:
        raw.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                    b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
                    b'Sec-WebSocket-Version: 13\r\n\r\n')
        raw.settimeout(10)
        assert raw.recv(4096).startswith(b'HTTP/1.1 101')
        raw.sendall(b'\x82\xff' + struct.pack('>Q', 2 << 30) + b'mask')
        data = b''
        while chunk := raw.recv(4096):
            data += chunk
        assert b'\x88' in data  # a close frame, then EOF
    good()


def test_a_missing_image_key_is_refused(served, observation, good):
    obs = {k: v for k, v in observation.items() if k != 'observation/wrist_image'}
    with connect(uri(served)) as ws:
        ws.recv(timeout=10)
        assert 'missing observation/wrist_image' in ask(ws, obs)
    good()


def test_a_prompt_that_is_not_a_string_is_refused(served, observation, good):
    with connect(uri(served)) as ws:
        ws.recv(timeout=10)
        assert 'prompt must be a str' in ask(ws, dict(observation, prompt=7))
        assert 'text' in (ws.send('hello') or ws.recv(timeout=10))
    good()


def test_a_client_that_sends_nothing_blocks_nobody(served, good):
    with connect(uri(served)), socket.create_connection(('127.0.0.1', served.port)) as half:
        # One handshake done and then silence, one handshake that never ends.
        half.sendall(b'GET / HTTP/1.1\r\n')
        good()


def test_a_thousand_connections_opened_and_dropped(served, good):
    for i in range(1000):
        with socket.create_connection(('127.0.0.1', served.port)) as dropped:
            if i % 2:
                dropped.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n')
    good()
    wait_until(lambda: served.server.connections == 1, 10, message='connections closed')


def test_vla_serve_refuses_another_host_without_a_key(tmp_path, capsys):
    argv = ['--model', str(tmp_path), '--host', '0.0.0.0']
    assert cli.main(argv) == 2
    assert 'give an API key' in capsys.readouterr().err
    (tmp_path / 'key').write_text('\n')
    assert cli.main(argv + ['--api-key-file', str(tmp_path / 'key')]) == 2
    assert 'is empty' in capsys.readouterr().err


@pytest.mark.process
def test_the_vla_serve_program_requires_its_key_and_never_prints_it(tmp_path, oft_checkpoints,
                                                                    observation):
    import subprocess
    import sys
    secret = 'Zq7-never-printed-9x'
    (tmp_path / 'key').write_text(secret + '\n')
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    program = subprocess.Popen(
        [sys.executable, '-m', 'vla_ros.remote.serve', '--model',
         str(oft_checkpoints['libero']), '--policy', 'openvla_oft', '--platform', 'libero',
         '--unnorm-key', 'synth_libero_spatial_no_noops', '--device', 'cpu', '--dtype',
         'float32', '--port', str(port), '--api-key-file', str(tmp_path / 'key')],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up():
            try:
                with connect(f'ws://127.0.0.1:{port}', open_timeout=2):
                    pass
            except InvalidStatus:
                return True  # it answers, and refuses: no key
            except OSError:
                return program.poll() is not None
        wait_until(up, 120, message='vla_serve listening')
        assert program.poll() is None
        for wrong in (None, 'Api-Key nope', secret):  # the key without its 'Api-Key ' prefix
            headers = {'Authorization': wrong} if wrong else None
            with pytest.raises(InvalidStatus, match='401'):
                connect(f'ws://127.0.0.1:{port}', additional_headers=headers, open_timeout=5)
        with connect(f'ws://127.0.0.1:{port}', compression=None, max_size=None,
                     additional_headers={'Authorization': f'Api-Key {secret}'}) as ws:
            assert unpack(ws.recv(timeout=30))['server'] == 'vla_serve'
            assert ask(ws, observation)['actions'].shape == (8, 7)
    finally:
        program.terminate()
        output, _ = program.communicate(timeout=30)
    assert 'required (from' in output, output  # it says a key is required, and where from
    assert secret not in output
