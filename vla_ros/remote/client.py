"""
A synchronous client of openpi's websocket protocol: one connection, a deadline per request.

    client = Client('ws://gpu-box:8000', api_key=key, timeout=0.5)
    reply, timing = client.request({'observation/image': image, ..., 'prompt': 'pick it up'})
    client.metadata      # the map the server sent on connect (None while disconnected)

As ``openpi-client`` (``websockets.sync.client``, no compression, ``Authorization: Api-Key``),
with what a control loop needs besides: every request has a deadline (``timeout`` seconds, the
connection included), and any failure (refused, timed out, closed, a text frame, a reply that
does not unpack) raises ``RemoteError`` and drops the connection. A reply that arrives after
its deadline is thus never read as the answer to a later request. While the server is down,
connection attempts back off exponentially (``backoff`` to ``max_backoff`` seconds); a request
in between raises at once, without touching the network. ``timing``: round trip (packing to
unpacked reply), the server's ``server_timing.infer_ms``, and the rest (serialisation, network,
queueing behind other clients), all in seconds. ROS-free; the API key is never in a message.
"""

import socket
import time

from vla_ros.policy.errors import PolicyError
from vla_ros.remote.wire import Limits, pack, unpack, WireError
import websockets
from websockets.sync.client import connect

__all__ = ['Client', 'RemoteError']


class RemoteError(PolicyError):
    """No answer from the server this time; the text names the server and what happened."""


class Client:
    """One connection to a policy server, reopened with capped exponential backoff."""

    def __init__(self, uri, api_key=None, timeout=1.0, backoff=0.1, max_backoff=2.0,
                 limits=Limits()):
        if not uri.startswith(('ws://', 'wss://')):
            raise ValueError(f'server URI {uri!r} must start with ws:// or wss://, e.g. '
                             'ws://gpu-box:8000')
        if not timeout > 0:
            raise ValueError(f'request timeout must be > 0 s, not {timeout!r}')
        self.uri = uri
        self.timeout = float(timeout)
        self.limits = limits
        self._headers = {'Authorization': f'Api-Key {api_key}'} if api_key else None
        self._backoff, self._max_backoff = backoff, max_backoff
        self._delay = 0.0  # wait before the next attempt after a failed one
        self._retry_at = 0.0  # time.monotonic() before which no attempt is made
        self._ws = None
        self.metadata = None
        self.connects = 0  # successful connections (a reconnect is one more)

    @property
    def connected(self):
        """Return whether a connection is open (as far as the last request knows)."""
        return self._ws is not None

    def connect(self, deadline=None):
        """Open the connection unless open; return the server's metadata or raise RemoteError."""
        if self._ws is not None:
            return self.metadata
        now = time.monotonic()
        if now < self._retry_at:
            raise RemoteError(f'server {self.uri} is unreachable; next attempt in '
                              f'{self._retry_at - now:.2f} s')
        remaining = self.timeout if deadline is None else deadline - now
        try:
            ws = connect(self.uri, compression=None, max_size=self.limits.max_message_bytes,
                         additional_headers=self._headers, open_timeout=max(remaining, 1e-3),
                         close_timeout=0.1)
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            hint = ' (a missing or wrong API key: check api_key_file / api_key_env)' \
                if status in (401, 403) else ''
            self._failed()
            raise RemoteError(f'server {self.uri} refused the connection: HTTP {status}'
                              f'{hint}') from None
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            self._failed()
            raise RemoteError(f'cannot connect to {self.uri}: {_reason(exc)}') from None
        try:
            metadata = self._receive(ws, deadline, 'its metadata')
        except RemoteError:
            ws.close()
            self._failed()
            raise
        if not isinstance(metadata, dict):
            ws.close()
            self._failed()
            raise RemoteError(f'server {self.uri} sent metadata of type '
                              f'{type(metadata).__name__}, not a map')
        self._ws, self.metadata = ws, metadata
        self._delay, self._retry_at = 0.0, 0.0
        self.connects += 1
        return metadata

    def request(self, observation):
        """Return ``(reply, timing)`` for one observation map; raise ``RemoteError``."""
        start = time.monotonic()
        deadline = start + self.timeout
        self.connect(deadline)
        try:
            data = pack(observation)
        except WireError as exc:
            raise RemoteError(f'cannot send the observation: {exc}') from None
        try:
            self._ws.send(data)
        except (OSError, websockets.WebSocketException) as exc:
            self._drop()
            raise RemoteError(f'server {self.uri} went away: {_reason(exc)}') from None
        reply = self._receive(self._ws, deadline, 'a reply')
        if not isinstance(reply, dict):
            self._drop()
            raise RemoteError(f'server {self.uri} replied with a {type(reply).__name__}, not '
                              'a map')
        round_trip = time.monotonic() - start
        timing = reply.get('server_timing')
        infer_ms = timing.get('infer_ms') if isinstance(timing, dict) else None
        server = float(infer_ms) * 1e-3 if isinstance(infer_ms, (int, float)) else float('nan')
        return reply, {'round_trip': round_trip, 'server': server,
                       'overhead': round_trip - server}

    def _receive(self, ws, deadline, what):
        """Return the next message of ``ws`` unpacked, by ``deadline``; raise ``RemoteError``."""
        remaining = self.timeout if deadline is None else deadline - time.monotonic()
        try:
            message = ws.recv(timeout=max(remaining, 0.0))
        except TimeoutError:
            self._drop(ws)
            raise RemoteError(f'server {self.uri} sent no {what.split()[-1]} within '
                              f'{self.timeout:g} s (request_timeout)') from None
        except (OSError, websockets.WebSocketException) as exc:
            self._drop(ws)
            raise RemoteError(f'server {self.uri} went away: {_reason(exc)}') from None
        if isinstance(message, str):  # openpi's way to say an error; the connection stays
            raise RemoteError(f'server {self.uri} answered with an error: {message[:300]}')
        try:
            return unpack(message, self.limits)
        except WireError as exc:
            self._drop(ws)
            raise RemoteError(f'server {self.uri} sent {what} that does not unpack: '
                              f'{exc}') from None

    def _failed(self):
        """Schedule the next connection attempt: the delay doubles up to ``max_backoff``."""
        self._delay = min(self._max_backoff, max(self._backoff, 2 * self._delay))
        self._retry_at = time.monotonic() + self._delay

    def _drop(self, ws=None):
        """Close the connection: whatever it still carries belongs to an abandoned request."""
        ws = ws or self._ws
        if ws is not None:
            ws.close()
        if ws is self._ws:
            self._ws, self.metadata = None, None

    def close(self):
        """Close the connection (a later request opens a new one)."""
        self._drop()


def _reason(exc):
    """Return a short reason for a network exception."""
    if isinstance(exc, ConnectionRefusedError):
        return 'connection refused (is the server running on that host and port?)'
    if isinstance(exc, socket.gaierror):
        return f'unknown host ({exc.strerror})'
    if isinstance(exc, TimeoutError):
        return 'timed out'
    return f'{type(exc).__name__}: {exc}'
