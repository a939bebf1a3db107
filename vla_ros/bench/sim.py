"""
Time the simulator behind ``sim_arm``: offscreen rendering per frame and physics speed.

Run ``python -m vla_ros.bench.sim``. For each camera size the scene camera is rendered
``--frames`` times after ``--warmup`` untimed frames (``time.perf_counter``; MuJoCo's renderer
reads the pixels back, so each timing covers the whole frame) and p50 / p95 in milliseconds are
printed. Physics is timed by stepping ``--seconds`` of sim time as fast as possible with the
gripper moving, which gives the largest real-time factor this machine allows; the node itself
runs at a real-time factor of 1. Finally it renders on a second thread while stepping, as the node
does, and prints how much that slows the physics.
"""

import argparse
import os
import platform
import threading
import time

import numpy as np

from vla_ros.sim.arm import SimArm  # vla_ros.sim sets MUJOCO_GL (egl) before mujoco loads
from vla_ros.sim.camera import SimCamera

SIZES = ((320, 240), (640, 480))


def percentiles(samples):
    """Return (p50, p95) of ``samples`` in milliseconds."""
    values = np.asarray(samples) * 1e3
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def time_render(width, height, frames, warmup):
    """Return per-frame render times (seconds) of the scene camera at ``width`` x ``height``."""
    arm = SimArm(width, height)
    camera = SimCamera(arm.model, width, height)
    snapshot = arm.snapshot()
    for _ in range(warmup):
        camera.render(snapshot)
    samples = []
    for _ in range(frames):
        start = time.perf_counter()
        camera.render(snapshot)
        samples.append(time.perf_counter() - start)
    camera.close()
    return samples


def physics_speed(seconds, tick=0.01, arm=None, on_tick=None):
    """Return sim seconds per wall second while the gripper moves in 10 ms ticks."""
    arm = arm or SimArm()
    start = time.perf_counter()
    ticks = int(seconds / tick)
    for i in range(ticks):
        direction = 1.0 if (i // 100) % 2 == 0 else -1.0
        arm.command_twist([0.05 * direction, 0.0, 0.0], [0.0, 0.0, 0.0])
        arm.step(tick)
        if on_tick is not None:
            on_tick(arm)
    return ticks * tick / (time.perf_counter() - start)


def physics_speed_while_rendering(seconds, width, height, rate_hz=10.0):
    """Return the physics speed with a camera thread rendering at ``rate_hz`` beside it."""
    arm = SimArm(width, height)
    latest = [arm.snapshot()]  # the physics loop replaces it; the camera thread reads it
    stop = threading.Event()

    def render_loop():
        camera = SimCamera(arm.model, width, height)
        while not stop.wait(1.0 / rate_hz):
            camera.render(latest[0])
        camera.close()
    thread = threading.Thread(target=render_loop, daemon=True)
    thread.start()
    time.sleep(0.5)  # the renderer starts

    def publish(arm):
        latest[0] = arm.snapshot()
    speed = physics_speed(seconds, arm=arm, on_tick=publish)
    stop.set()
    thread.join()
    return speed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--frames', type=int, default=50)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--seconds', type=float, default=10.0, help='sim seconds to step')
    args = parser.parse_args(argv)

    print(f'python {platform.python_version()}, {os.cpu_count()} CPUs, '
          f"MUJOCO_GL={os.environ['MUJOCO_GL']}")
    for width, height in SIZES:
        p50, p95 = percentiles(time_render(width, height, args.frames, args.warmup))
        print(f'render {width}x{height}: p50 {p50:.1f} ms  p95 {p95:.1f} ms')
    print(f'physics alone: {physics_speed(args.seconds):.1f}x real time (2 ms steps)')
    for width, height in SIZES:
        speed = physics_speed_while_rendering(args.seconds, width, height)
        print(f'physics with a {width}x{height} camera at 10 Hz on another thread: '
              f'{speed:.1f}x real time')


if __name__ == '__main__':
    main()
