"""
Offscreen rendering of the sim's cameras, with its own MjData, so it can run on any thread.

One ``SimCamera`` draws one or several named cameras of the scene (``scene_camera``, the fixed
third-person view; ``wrist_camera``, on the gripper) at one size, from one state snapshot: the
kinematics run once and every view shows the same instant, which is what lets ``sim_arm`` stamp
a frame pair with one stamp. Sites (debug markers such as the end-effector point) are not drawn,
as a real camera would not see them.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it is first imported; ``vla_ros.sim``
sets it to ``egl`` unless the environment already says otherwise. An OpenGL context belongs to
the thread that made it current, so create, use and close a ``SimCamera`` on one thread.
"""

import dataclasses
import os
import time

import mujoco
import numpy as np


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The state a camera needs to draw one frame: sim time, joint positions and mocap pose."""

    time: float
    qpos: np.ndarray
    mocap_pos: np.ndarray
    mocap_quat: np.ndarray


def snapshot(data, sim_time):
    """Return a copy of what a camera needs of MuJoCo ``data`` at ``sim_time``, for any thread."""
    return Snapshot(sim_time, data.qpos.copy(), data.mocap_pos.copy(), data.mocap_quat.copy())


class RenderError(RuntimeError):
    """The offscreen renderer could not start; the text says what to try."""


class SimCamera:
    """
    Draw the named camera(s) of ``model`` for state snapshots (see ``SimArm.snapshot``).

    ``camera`` is one name (``render`` returns one image) or a tuple of names (``render`` returns
    a tuple of images in the same order). ``last_render_s`` is the wall time of the last
    ``render`` call, all views together; ``last_view_s`` the time of each view (the first also
    holds the kinematics update).
    """

    def __init__(self, model, width, height, camera='scene_camera'):
        self.model = model
        self.data = mujoco.MjData(model)
        self.camera = camera
        self.cameras = (camera,) if isinstance(camera, str) else tuple(camera)
        self.last_render_s = float('nan')
        self.last_view_s = (float('nan'),) * len(self.cameras)
        self._renderer = None
        if not self.cameras:
            raise RenderError('no camera named: give at least one camera of the scene')
        names = [model.camera(i).name for i in range(model.ncam)]
        missing = [name for name in self.cameras if name not in names]
        if missing:
            raise RenderError(f'the scene has no camera named {", ".join(map(repr, missing))}; '
                              f'its cameras: {", ".join(names)}')
        self._option = mujoco.MjvOption()
        self._option.sitegroup[:] = 0  # markers, not things a camera sees
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
        """Return the frame(s) for ``snapshot``: (height, width, 3) uint8 RGB per camera."""
        start = time.perf_counter()
        self.data.qpos[:] = snapshot.qpos
        self.data.mocap_pos[:] = snapshot.mocap_pos
        self.data.mocap_quat[:] = snapshot.mocap_quat
        self.data.time = snapshot.time
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)
        images, times, mark = [], [], start
        for name in self.cameras:
            self._renderer.update_scene(self.data, camera=name, scene_option=self._option)
            images.append(np.ascontiguousarray(self._renderer.render()))  # (H, W, 3) uint8
            now = time.perf_counter()
            times.append(now - mark)
            mark = now
        self.last_view_s = tuple(times)
        self.last_render_s = mark - start
        return images[0] if isinstance(self.camera, str) else tuple(images)

    def close(self):
        """Free the OpenGL context; the camera cannot render afterwards."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
