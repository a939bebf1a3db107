"""
The remote policy against vla_serve's server in this process (the OFT miniature), real websockets.

The exact chunk, a server that goes and comes back on the same port, a timeout, an error text,
and replies the contract refuses: each failure raises ``RemoteError`` and is counted, and the
next answer is always the one for the next request.
"""

import asyncio
import threading
import time

import numpy as np
import pytest
from test_serve import expected, KEY, observation, oft, PROMPT, start  # noqa: F401 - fixtures
from vla_ros.remote.client import RemoteError
from vla_ros.remote.observations import ObservationSchema
from vla_ros.remote.policy import PRESETS, RemotePolicy
from vla_ros.remote.server import BackgroundServer, metadata_for, PolicyServer
from vla_ros.remote.wire import pack
from websockets.asyncio.server import serve

STATE = np.linspace(-0.3, 0.3, 8)


def images(seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 40, 3), dtype=np.uint8) for _ in range(2)]


def reference(oft, seed):  # noqa: F811 - oft is the fixture's value
    front, wrist = images(seed)
    return expected(oft, {'observation/image': front, 'observation/wrist_image': wrist,
                          'observation/state': STATE})


def test_vla_serve_preset_reads_the_metadata_and_returns_the_exact_chunk(oft):  # noqa: F811
    running = start(oft)
    try:
        policy = RemotePolicy.connect(f'ws://127.0.0.1:{running.port}', 'vla_serve',
                                      timeout=30.0)
        assert (policy.num_images, policy.proprio_dim, policy.chunk_len, policy.action_dim) == \
            (2, 8, 8, 7)
        assert policy.unnorm_keys == (oft[1],)
        for seed in (1, 2):
            chunk = policy.predict(images(seed), PROMPT, proprio=STATE)
            np.testing.assert_array_equal(chunk.values, reference(oft, seed))
            assert chunk.valid
        diag = policy.diagnostics()
        assert diag['remote_failures'] == 0 and diag['remote_connects'] == 1
        assert diag['remote_round_trip_p50_ms'] >= diag['remote_server_p50_ms'] > 0
        assert diag['remote_overhead_p50_ms'] == pytest.approx(
            diag['remote_round_trip_p50_ms'] - diag['remote_server_p50_ms'], abs=1e-6)
        policy.close()
    finally:
        running.close()


def served_by(oft, api_key):  # noqa: F811
    """Return a ``PolicyServer`` of ``oft`` (not started)."""
    policy, unnorm_key = oft
    schema = ObservationSchema.for_policy(policy.num_images, policy.proprio_dim)
    return PolicyServer(policy, unnorm_key, schema,
                        metadata_for(policy, schema, unnorm_key, 'openvla_oft', 'libero'),
                        api_key=api_key)


def test_server_down_raises_at_once_then_reconnects_when_it_is_back(oft):  # noqa: F811
    running = BackgroundServer(served_by(oft, KEY)).__enter__()
    port = running.port
    policy = RemotePolicy.connect(f'ws://127.0.0.1:{port}', 'vla_serve', api_key=KEY,
                                  timeout=30.0)
    policy.predict(images(1), PROMPT, proprio=STATE)
    running.close()
    failures = []
    for _ in range(4):  # closed, then refused, then refused without trying (backoff)
        started = time.monotonic()
        with pytest.raises(RemoteError) as raised:
            policy.predict(images(1), PROMPT, proprio=STATE)
        failures.append((str(raised.value), time.monotonic() - started))
    assert all(seconds < 1.0 for _, seconds in failures)
    assert any('connection refused' in text for text, _ in failures), failures
    assert 'next attempt in' in failures[-1][0]
    assert policy.diagnostics()['remote_failures'] == 4
    assert policy.diagnostics()['remote_last_error'] == failures[-1][0]
    with BackgroundServer(served_by(oft, KEY), port=port):
        deadline = time.monotonic() + 10
        while True:  # the backoff caps at 2 s
            try:
                chunk = policy.predict(images(2), PROMPT, proprio=STATE)
                break
            except RemoteError:
                assert time.monotonic() < deadline, 'no reconnect within 10 s'
                time.sleep(0.05)
        np.testing.assert_array_equal(chunk.values, reference(oft, 2))
        assert policy.client.connects == 2
        policy.close()


class FakeServer:
    """A protocol server of the test's own: metadata, then ``answer(n, message)`` per message."""

    def __init__(self, answer, metadata=None):
        self.answer, self.metadata = answer, metadata or {}
        self.port, self.count = None, 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, ws):
        await ws.send(pack(self.metadata))
        async for message in ws:
            self.count += 1  # over every connection
            reply = await self.answer(self.count - 1, message)
            await ws.send(reply if isinstance(reply, str) else pack(reply))

    async def _start(self):
        self._server = await serve(self._handle, '127.0.0.1', 0, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]

    def __enter__(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc):
        async def stop():
            self._server.close()
            await self._server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def chunk(n):
    return {'actions': np.full((4, 7), float(n))}


def openpi_policy(port, timeout=0.3, **kwargs):
    return RemotePolicy.connect(f'ws://127.0.0.1:{port}', 'openpi_libero', timeout=timeout,
                                chunk_len=4, **kwargs)


def test_a_late_reply_is_never_taken_for_the_next_one():
    async def answer(n, message):
        if n == 0:
            await asyncio.sleep(0.6)  # past the client's 0.3 s
        return chunk(n)
    with FakeServer(answer) as server:
        policy = openpi_policy(server.port)
        started = time.monotonic()
        with pytest.raises(RemoteError, match='within 0.3 s'):
            policy.predict(images(1), PROMPT, proprio=STATE)
        assert time.monotonic() - started < 0.5
        time.sleep(0.15)  # the backoff before reconnecting
        second = policy.predict(images(1), PROMPT, proprio=STATE)
        assert second.values[0, 0] == 1.0  # the answer to the second request, never chunk 0
        time.sleep(0.5)  # chunk 0 leaves the server now, to the dropped connection
        assert policy.predict(images(1), PROMPT, proprio=STATE).values[0, 0] == 2.0
        policy.close()


@pytest.mark.parametrize('reply, words', [
    ('policy error: boom', 'answered with an error: policy error: boom'),
    ({'action': np.zeros((4, 7))}, "has no 'actions'"),
    ({'actions': np.zeros((4, 6))}, 'has shape (4, 6), expected (4, 7)'),
    ({'actions': np.zeros((5, 7))}, 'has shape (5, 7)'),
    ({'actions': np.array([[np.nan] * 7] * 4)}, 'NaN or infinity'),
    ({'actions': 'left'}, 'not a numeric array'),
])
def test_a_reply_the_contract_refuses_raises_and_the_next_good_one_is_used(reply, words):
    async def answer(n, message):
        return reply if n == 0 else chunk(n)
    with FakeServer(answer) as server:
        policy = openpi_policy(server.port)
        with pytest.raises(RemoteError) as raised:
            policy.predict(images(1), PROMPT, proprio=STATE)
        assert words in str(raised.value)
        time.sleep(0.15)  # a dropped connection waits out its backoff
        good = policy.predict(images(1), PROMPT, proprio=STATE)
        assert good.values.shape == (4, 7) and good.values[0, 0] >= 1.0
        assert policy.diagnostics()['remote_failures'] == 1
        policy.close()


def test_openpi_presets_send_their_keys_with_224_images():
    seen = []

    async def answer(n, message):
        from vla_ros.remote.wire import unpack
        seen.append(unpack(message))
        return {'actions': np.zeros((10, 8))}
    with FakeServer(answer) as server:
        policy = RemotePolicy.connect(f'ws://127.0.0.1:{server.port}', 'openpi_droid',
                                      timeout=5.0, action_dim=8)
        assert (policy.num_images, policy.proprio_dim, policy.chunk_len) == (2, 8, 0)
        rows = policy.predict(images(1), 'wipe', proprio=np.arange(8.0)).rows
        assert rows.shape == (10, 8)
    obs = seen[0]
    assert sorted(obs) == sorted(['observation/exterior_image_1_left',
                                  'observation/wrist_image_left', 'observation/joint_position',
                                  'observation/gripper_position', 'prompt'])
    assert obs['observation/exterior_image_1_left'].shape == (224, 224, 3)
    np.testing.assert_array_equal(obs['observation/joint_position'], np.arange(7.0))
    np.testing.assert_array_equal(obs['observation/gripper_position'], [7.0])
    assert PRESETS['openpi_libero'].camera_keys == ('observation/image',
                                                    'observation/wrist_image')


def test_a_wrong_key_is_refused_by_name_and_never_shown(oft):  # noqa: F811
    running = start(oft, api_key=KEY)
    try:
        with pytest.raises(Exception) as raised:
            RemotePolicy.connect(f'ws://127.0.0.1:{running.port}', 'vla_serve',
                                 api_key='not-the-key', timeout=10.0)
        assert 'HTTP 401' in str(raised.value) and 'API key' in str(raised.value)
        assert 'not-the-key' not in str(raised.value)
    finally:
        running.close()
