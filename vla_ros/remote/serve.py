r"""
``vla_serve``: a checkpoint vla_node loads, served over openpi's websocket protocol.

    vla_serve --model /models/oft-libero --policy openvla_oft --platform libero
    vla_serve --model /models/openvla-7b --unnorm-key bridge_orig --host 0.0.0.0 \
        --api-key-file ~/.vla_serve_key

The checkpoint loads and warms up as in vla_node (``load_policy``). It listens on localhost
unless ``--host`` says otherwise; any other host needs an API key, from ``--api-key-file`` or
``VLA_SERVE_API_KEY``, which clients send as ``Authorization: Api-Key <key>``. The key is never
logged. docs/vla_serve.md has the observation keys and the replies.
"""

import argparse
import asyncio
import logging
import os
from pathlib import Path
import sys

from vla_ros.policy.errors import PolicyError
from vla_ros.policy.loading import load_policy
from vla_ros.remote.observations import ObservationSchema
from vla_ros.remote.server import metadata_for, PolicyServer
from vla_ros.remote.wire import Limits

KEY_ENV = 'VLA_SERVE_API_KEY'
LOCALHOST = ('127.0.0.1', 'localhost', '::1')


def parse_args(argv):
    """Return the parsed command line."""
    parser = argparse.ArgumentParser(prog='vla_serve', description=__doc__.split('\n')[1])
    parser.add_argument('--model', required=True, help='checkpoint folder, as vla_node model_path')
    parser.add_argument('--policy', default='openvla',
                        help="openvla, openvla_oft or 'package.module:callable' (default openvla)")
    parser.add_argument('--platform', default='libero', help='OpenVLA-OFT platform (libero)')
    parser.add_argument('--action-head', default='auto', help='OpenVLA-OFT head (auto)')
    parser.add_argument('--unnorm-key', default='',
                        help='dataset statistics; empty only when the checkpoint has one')
    parser.add_argument('--center-crop', action='store_true', help='as vla_node center_crop')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N')
    parser.add_argument('--dtype', default='auto', help='auto, float32, bfloat16, float16')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (127.0.0.1); another one needs an API key')
    parser.add_argument('--port', type=int, default=8000, help='TCP port (8000)')
    parser.add_argument('--api-key-file', type=Path,
                        help=f'file holding the API key (else ${KEY_ENV}, if set)')
    parser.add_argument('--max-message-mb', type=float, default=64.0,
                        help='largest observation accepted, MiB (64)')
    return parser.parse_args(argv)


def read_api_key(path, environ):
    """Return ``(key or None, where it came from)``; raise ``ValueError`` naming the problem."""
    if path is not None:
        try:
            key = path.expanduser().read_text().strip()
        except OSError as exc:
            raise ValueError(f'--api-key-file {path}: cannot read it ({exc.strerror})') from None
        if not key:
            raise ValueError(f'--api-key-file {path} is empty; put the key in it')
        return key, f'file {path}'
    key = environ.get(KEY_ENV, '').strip()
    return (key, f'${KEY_ENV}') if key else (None, 'none')


def check_config(args, key):
    """Raise ``ValueError`` for a configuration that must not start."""
    if args.host not in LOCALHOST and key is None:
        raise ValueError(f'--host {args.host} is reachable from other machines: give an API key '
                         f'with --api-key-file F or ${KEY_ENV} (clients send it as '
                         "'Authorization: Api-Key <key>'), or serve on --host 127.0.0.1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f'--port {args.port} is not a TCP port (0..65535)')
    if not args.max_message_mb > 0:
        raise ValueError(f'--max-message-mb must be positive, not {args.max_message_mb}')


def build_server(args, key):
    """Load the policy (as vla_node does) and return the ``PolicyServer``."""
    policy, unnorm_key = load_policy(args.model, policy=args.policy, unnorm_key=args.unnorm_key,
                                     device=args.device, dtype=args.dtype,
                                     center_crop=args.center_crop, platform=args.platform,
                                     action_head=args.action_head)
    schema = ObservationSchema.for_policy(policy.num_images, policy.proprio_dim)
    limits = Limits(max_message_bytes=int(args.max_message_mb * (1 << 20)))
    platform = args.platform if args.policy == 'openvla_oft' else None
    metadata = metadata_for(policy, schema, unnorm_key, args.policy, platform, limits)
    return PolicyServer(policy, unnorm_key, schema, metadata, api_key=key, limits=limits)


def main(argv=None):
    """Console entry point of ``vla_serve``; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format='[vla_serve] %(levelname)s %(message)s')
    log = logging.getLogger('vla_serve')
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        key, key_source = read_api_key(args.api_key_file, os.environ)
        check_config(args, key)
        server = build_server(args, key)
    except (ValueError, PolicyError) as exc:
        print(f'vla_serve: {exc}', file=sys.stderr)
        return 2
    policy = server.policy
    log.info('model %s (%s, %s), device %s, dtype %s, unnorm key %s', args.model, args.policy,
             policy.description, policy.device, policy.dtype, server.unnorm_key)
    log.info('observation keys: %s; actions [%d, %d]', ', '.join(server.schema.keys),
             policy.chunk_len, policy.action_dim)
    log.info('listening on ws://%s:%d, API key: %s', args.host, args.port,
             'required (from ' + key_source + ')' if key else 'none (localhost only)')
    try:
        asyncio.run(server.serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f'vla_serve: cannot listen on {args.host}:{args.port}: {exc.strerror}',
              file=sys.stderr)
        return 1
    finally:
        server.close()
        policy.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
