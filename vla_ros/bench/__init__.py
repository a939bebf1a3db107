"""
Benchmarks that print timings, and the GPU check: ``python -m vla_ros.bench.NAME``.

Files: ``openvla`` (OpenVLA's fast path against ``generate()``, random or real checkpoints; the
library the others build on), ``oft`` (OpenVLA-OFT's paths), ``policy`` (load and first-step
times, in child processes), ``preprocess`` (ms per frame: decode, resize, pixel values),
``kernels`` (kernel launches per decode layer), ``conversions`` (message conversions), ``sim``
(rendering), ``reach_rollout`` (a policy's reach success in closed loop on the ROS-free sim,
latency and chunking under control), ``node`` (vla_node's loop over DDS), ``eval`` (vla_eval's
throughput), ``finetune_memory`` (vla_finetune's memory while reading bags), ``remote`` (what
vla_serve's websocket wire adds to ``predict``), ``machine`` (what the host
is), ``gpu_check`` (everything a lent GPU runs, in one command).
"""
