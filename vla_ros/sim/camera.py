"""
Offscreen rendering of the sim's scene camera, with its own MjData, so it can run on any thread.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it is first imported; ``vla_ros.sim``
sets it to ``egl`` unless the environment already says otherwise. An OpenGL context belongs to
the thread that made it current, so create, use and close a ``SimCamera`` on one thread.
"""

import os
import time

import mujoco
import numpy as np


class RenderError(RuntimeError):
    """The offscreen renderer could not start; the text says what to try."""


class SimCamera:
    """Draw the named camera of ``model`` for state snapshots (see ``SimArm.snapshot``)."""

    def __init__(self, model, width, height, camera='scene_camera'):
        self.model = model
        self.data = mujoco.MjData(model)
        self.camera = camera
        self.last_render_s = float('nan')
        try:
            model.camera(camera)
        except KeyError as exc:
            raise RenderError(f'the scene has no camera named {camera!r}') from exc
        try:
            self._renderer = mujoco.Renderer(model, height=height, width=width)
        except Exception as exc:  # noqa: B902 - GL back ends raise many types; all mean the same
            backend = os.environ.get('MUJOCO_GL', '(unset)')
            raise RenderError(
                f'cannot start the MuJoCo offscreen renderer with MUJOCO_GL={backend} '
                f'({type(exc).__name__}: {exc}). Headless Linux needs EGL (libEGL, e.g. Mesa '
                'libegl1): try MUJOCO_GL=egl (on a multi-GPU machine also MUJOCO_EGL_DEVICE_ID); '
                'with a display try MUJOCO_GL=glfw; with OSMesa installed try MUJOCO_GL=osmesa.'
            ) from exc

    def render(self, snapshot):
        """Return the frame for ``snapshot`` as (height, width, 3) uint8 RGB."""
        start = time.perf_counter()
        self.data.qpos[:] = snapshot.qpos
        self.data.mocap_pos[:] = snapshot.mocap_pos
        self.data.mocap_quat[:] = snapshot.mocap_quat
        self.data.time = snapshot.time
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)
        self._renderer.update_scene(self.data, camera=self.camera)
        image = self._renderer.render()  # (H, W, 3) uint8
        self.last_render_s = time.perf_counter() - start
        return np.ascontiguousarray(image)

    def close(self):
        """Free the OpenGL context; the camera cannot render afterwards."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
