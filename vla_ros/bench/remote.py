"""
What openpi's websocket wire adds to ``predict``: vla_serve's server on loopback, one process.

    python -m vla_ros.bench.remote [--n 100] [--seconds 10] [--model DIR] [--json out.json]

The OFT LIBERO miniature (written to a temporary folder unless ``--model``), two 224x224 RGB
images and an 8-D state per request. Reported: in-process ``predict`` p50/p95; the round trip
through a websocket client; the wire's share of each request (round trip minus the server's own
``infer_ms``: packing, the socket, unpacking and checking, both sides), p50/p95; and requests
per second from 4 clients at once (one model: they queue). Client and server share this
process (and its GIL), so the wire's figure is an upper bound of what two processes would see.
"""

import argparse
import json
from pathlib import Path
import sys
import tempfile
import threading
import time

import numpy as np
import torch
from vla_ros.bench import machine
from vla_ros.policy.loading import load_policy
from vla_ros.policy.tiny import write_tiny_oft_checkpoint
from vla_ros.remote.observations import ObservationSchema
from vla_ros.remote.server import BackgroundServer, metadata_for, PolicyServer
from vla_ros.remote.wire import pack, unpack
from websockets.sync.client import connect

PROMPT = 'put the bowl on the plate'


def percentiles(values):
    """Return p50 and p95 of ``values`` in ms, rounded."""
    return {f'p{q}': round(float(np.percentile(values, q)), 3) for q in (50, 95)}


def observation(seed):
    """Return one LIBERO-keyed observation of random images and state."""
    rng = np.random.default_rng(seed)
    return {'observation/image': rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            'observation/wrist_image': rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            'observation/state': rng.uniform(-0.5, 0.5, 8), 'prompt': PROMPT}


def round_trips(uri, n, seed, out):
    """Send ``n`` requests on one connection; append (round trip ms, infer ms) to ``out``."""
    obs = observation(seed)
    with connect(uri, compression=None, max_size=None) as ws:
        ws.recv()
        for _ in range(n):
            start = time.perf_counter()
            ws.send(pack(obs))
            reply = unpack(ws.recv())
            out.append(((time.perf_counter() - start) * 1e3, reply['server_timing']['infer_ms']))


def run(model, n, seconds):
    """Return the figures (a dict) for the checkpoint folder ``model``."""
    policy, key = load_policy(model, policy='openvla_oft', platform='libero',
                              unnorm_key='synth_oft_libero')
    obs = observation(0)
    images = [obs['observation/image'], obs['observation/wrist_image']]
    local = []
    for _ in range(n):
        start = time.perf_counter()
        policy.predict(images, PROMPT, proprio=obs['observation/state'], unnorm_key=key)
        local.append((time.perf_counter() - start) * 1e3)
    schema = ObservationSchema.for_policy(policy.num_images, policy.proprio_dim)
    server = PolicyServer(policy, key, schema, metadata_for(policy, schema, key, 'openvla_oft'))
    with BackgroundServer(server) as running:
        uri = f'ws://127.0.0.1:{running.port}'
        one = []
        round_trips(uri, n, 0, one)
        rt, infer = np.array(one).T
        many, per_client = [], max(1, int(seconds * 1e3 / np.median(rt) / 4))
        threads = [threading.Thread(target=round_trips, args=(uri, per_client, i, many))
                   for i in range(4)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    policy.close()
    return {'predict_ms': percentiles(local), 'round_trip_ms': percentiles(rt),
            'server_infer_ms': percentiles(infer),
            'wire_ms': percentiles(rt - infer), 'requests': n,
            'four_clients': {'requests': len(many), 'seconds': round(elapsed, 2),
                             'requests_per_s': round(len(many) / elapsed, 2)},
            'torch_threads': torch.get_num_threads(), 'host': machine.host_cpu()}


def main(argv=None):
    """Run the benchmark and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--model', type=Path, help='an OFT LIBERO checkpoint (else the miniature)')
    parser.add_argument('--n', type=int, default=100, help='requests timed one by one')
    parser.add_argument('--seconds', type=float, default=10.0, help='about how long 4 clients run')
    parser.add_argument('--json', type=Path, help='also write the figures here')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_tiny_oft_checkpoint(Path(tmp) / 'oft', 'libero')
        figures = run(model, args.n, args.seconds)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
