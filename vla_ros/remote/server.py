"""
A policy behind openpi's websocket protocol: many clients, one model, requests in arrival order.

    server = PolicyServer(policy, unnorm_key, metadata, api_key=None)
    with BackgroundServer(server, '127.0.0.1', 0) as running:   # or: asyncio.run(server.serve(..))
        uri = f'ws://127.0.0.1:{running.port}'

Per connection: the metadata map on connect, then for each binary frame (an observation) one
reply ``{'actions': float64 [chunk_len, action_dim], 'valid': bool, 'reason': str,
'server_timing': {'infer_ms': ..., 'queue_ms': ..., 'prev_total_ms': ...}}`` (openpi's
``server_timing``; ``queue_ms``: waiting for the model behind other clients' requests).
``actions`` is ``Action.rows``: the values ``predict`` returns, one row for OpenVLA. A message
that cannot be read, an observation that does not fit, or a prediction that raises gets a text
frame naming the problem, and the connection stays open for the next request.

The event loop only reads, checks and writes; ``predict`` runs on one worker thread, so requests
queue there in order and a silent or slow client holds up nobody. With ``api_key`` the handshake
must carry ``Authorization: Api-Key <key>`` (compared in constant time); otherwise the answer is
HTTP 401 and no websocket. ``GET /healthz`` answers 200 without a key, as openpi's server.
"""

import asyncio
import concurrent.futures
import hmac
import http
import logging
import threading
import time

import numpy as np
from vla_ros.policy.errors import PolicyError
from vla_ros.remote.observations import ObservationError
from vla_ros.remote.wire import Limits, pack, unpack, WireError
import websockets
from websockets.asyncio.server import serve

__all__ = ['BackgroundServer', 'PolicyServer', 'metadata_for']

LOG = logging.getLogger('vla_serve')
AUTH_PREFIX = 'Api-Key '


def metadata_for(policy, schema, unnorm_key, policy_name, platform=None, limits=Limits()):
    """Return the metadata map sent on connect: what the policy is and what it takes."""
    return {'server': 'vla_serve', 'policy': policy_name, 'description': policy.description,
            'platform': platform, 'chunk_len': policy.chunk_len, 'action_dim': policy.action_dim,
            'action_labels': list(policy.action_labels), 'camera_keys': list(schema.camera_keys),
            'state_key': schema.state_key, 'state_dim': schema.state_dim, 'prompt_key': 'prompt',
            'unnorm_key': unnorm_key, 'max_message_bytes': limits.max_message_bytes}


class PolicyServer:
    """Serves one ``Policy`` with one ``ObservationSchema`` to any number of connections."""

    def __init__(self, policy, unnorm_key, schema, metadata, api_key=None, limits=Limits()):
        self.policy = policy
        self.unnorm_key = unnorm_key
        self.schema = schema
        self.limits = limits
        self._metadata = pack(metadata)
        self._key = api_key.encode() if api_key else None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='predict')
        self.connections = 0  # open websocket connections (read by tests and logs)

    async def serve(self, host, port, started=None):
        """Serve until cancelled; ``started(server)`` is called once the socket listens."""
        async with serve(self._handle, host, port, compression=None,
                         max_size=self.limits.max_message_bytes,
                         process_request=self._check_request, logger=LOG) as server:
            if started:
                started(server)
            await server.serve_forever()

    def close(self):
        """Stop the worker thread (after the request it runs)."""
        self._worker.shutdown(wait=True, cancel_futures=True)

    def _check_request(self, connection, request):
        """Answer /healthz; refuse a handshake without the right key (HTTP 401)."""
        if request.path == '/healthz':
            return connection.respond(http.HTTPStatus.OK, 'OK\n')
        if self._key is None:
            return None
        given = request.headers.get('Authorization', '')
        if given.startswith(AUTH_PREFIX) and hmac.compare_digest(
                given[len(AUTH_PREFIX):].encode(), self._key):
            return None
        # The key given is never logged: it may be a real key of another server.
        LOG.warning('refused a connection from %s: %s API key', connection.remote_address,
                    'wrong' if given else 'no')
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, 'missing or wrong API key\n')

    async def _handle(self, ws):
        """One connection: metadata, then a reply or an error text per message."""
        self.connections += 1
        try:
            await ws.send(self._metadata)
            prev_total_ms = None
            async for message in ws:
                start = time.perf_counter()
                reply = await self._reply(message)
                if isinstance(reply, dict) and prev_total_ms is not None:
                    reply['server_timing']['prev_total_ms'] = prev_total_ms
                await ws.send(pack(reply) if isinstance(reply, dict) else reply)
                prev_total_ms = (time.perf_counter() - start) * 1e3
        except websockets.ConnectionClosed:
            pass
        finally:
            self.connections -= 1

    async def _reply(self, message):
        """Return the reply map for one message, or the error text."""
        if isinstance(message, str):
            return 'bad message: send observations as binary msgpack frames, not text'
        try:
            images, prompt, state = self.schema.read(unpack(message, self.limits))
        except WireError as exc:
            return f'bad message: {exc}'
        except ObservationError as exc:
            return f'bad observation: {exc}'
        queued = time.perf_counter()
        try:
            action, started, infer_ms = await asyncio.get_running_loop().run_in_executor(
                self._worker, self._predict, images, prompt, state)
        except PolicyError as exc:
            return f'policy refused the input: {exc}'
        except Exception as exc:  # noqa: B902 - a model bug must not end the server
            LOG.exception('predict raised')
            return f'policy error: {type(exc).__name__}: {exc}'
        return {'actions': np.ascontiguousarray(action.rows, dtype=np.float64),
                'valid': bool(action.valid), 'reason': action.reason,
                'server_timing': {'infer_ms': infer_ms,
                                  'queue_ms': (started - queued) * 1e3}}

    def _predict(self, images, prompt, state):
        """Run on the worker thread: ``(action, start time, ms)`` of one prediction."""
        started = time.perf_counter()
        action = self.policy.predict(images, prompt, proprio=state, unnorm_key=self.unnorm_key)
        return action, started, (time.perf_counter() - started) * 1e3


class BackgroundServer:
    """A ``PolicyServer`` on its own event loop thread (tests, benchmarks); ``port`` once open."""

    def __init__(self, server, host='127.0.0.1', port=0):
        self.server = server
        self.port = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task = None
        self._thread = threading.Thread(target=self._run, args=(host, port), daemon=True,
                                        name='vla_serve')

    def _run(self, host, port):
        def started(ws_server):
            self.port = ws_server.sockets[0].getsockname()[1]
            self._ready.set()
        self._task = self._loop.create_task(self.server.serve(host, port, started))
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._ready.set()
            self._loop.close()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(30)
        if self.port is None:
            self.close()
            raise RuntimeError('the policy server did not start listening')
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop serving, close every connection, and join the thread."""
        if self._thread.is_alive() and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        self.server.close()
