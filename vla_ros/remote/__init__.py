"""
Policies on another machine, over openpi's websocket protocol; no ROS, no torch in the wire.

Files: ``wire`` (msgpack with numpy arrays as openpi-client packs them, and an unpacker that
refuses what is unsafe: the one codec of server and clients), ``observations`` (the observation
keys of ``vla_serve``: one image per camera, the state, the prompt), ``server`` (``PolicyServer``:
one model, many connections, requests in order), ``serve`` (the ``vla_serve`` command line),
``client`` (a synchronous connection with a deadline per request and reconnection with backoff),
``policy`` (``RemotePolicy``: the policy contract answered by a server; the presets of keys).
"""
