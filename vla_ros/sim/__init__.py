"""
ROS-free MuJoCo simulation behind the ``sim_arm`` node: a floating gripper, a table, objects.

Importing this package sets ``MUJOCO_GL=egl`` (headless offscreen rendering) unless the
environment already chose a backend; MuJoCo reads it once, when it is first imported.
"""

import os

os.environ.setdefault('MUJOCO_GL', 'egl')

from vla_ros.sim.arm import object_layout, SimArm, Snapshot  # noqa: E402 - after MUJOCO_GL
from vla_ros.sim.camera import RenderError, SimCamera  # noqa: E402 - after MUJOCO_GL
from vla_ros.sim.loop import Pacer, Queue, Schedule  # noqa: E402 - after MUJOCO_GL

__all__ = ['object_layout', 'Pacer', 'Queue', 'RenderError', 'Schedule', 'SimArm', 'SimCamera',
           'Snapshot']
