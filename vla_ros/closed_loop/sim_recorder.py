"""
What vla_sim_eval watches during an episode: the subscriptions' callbacks store, the runner reads.

One episode is recorded at a time (``begin`` .. ``end``): ``ee_pose`` positions with their stamps,
``vla/action`` count, a thinned set of camera frames, the first ``sim/task`` reporting success,
the fingertips' closest approach to the reach region (and their offset there), the episode's
newest ``sim/task``; between episodes only the newest ``sim/task`` and arm_bridge diagnostics.
Messages are read through their fields only (no message type imported here).
"""

import json
import math
import threading
import time

from vla_ros.control.readers import stamp_ns
from vla_ros.nodes import diagnostics
from vla_ros.sim.tasks import reach_miss

KEEP_FRAMES = 64  # frames kept per episode (thinned to every other one, interval doubled)


class Recorder:
    """What the runner watches, stored by the callbacks; one episode recorded at a time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.task, self.task_time = {}, 0.0  # newest sim/task (parsed) and its receipt time
        self.frames_seen = 0
        self.bridge = (0.0, {})  # (receipt time, values) of arm_bridge's newest diagnostics
        self.recording = False

    def begin(self, t0, since_ns):
        """
        Start recording an episode whose instruction goes out at ``t0`` (monotonic).

        ``ee_pose`` and camera frames stamped before ``since_ns`` (ROS time; the reset's answer)
        show the scene before the reset, delivered late: they are left out.
        """
        with self.lock:
            self.t0, self.since_ns, self.recording = t0, since_ns, True
            self.poses, self.actions, self.frames = [], 0, []
            self.interval, self.last_frame, self.success = 0.0, None, None
            self.closest, self.closest_offset, self.episode_task = math.inf, None, {}

    def end(self):
        """Stop recording; return what the episode showed (a dict)."""
        with self.lock:
            self.recording = False
            frames = list(self.frames)
            if self.last_frame is not None and (not frames or frames[-1] is not
                                                self.last_frame):
                frames.append(self.last_frame)
            return {'poses': self.poses, 'actions': self.actions, 'frames': frames,
                    'success': self.success, 'closest': self.closest,
                    'closest_offset': self.closest_offset, 'task': self.episode_task}

    def on_task(self, msg):
        try:
            task = json.loads(msg.data)
        except ValueError:
            return
        with self.lock:
            self.task, self.task_time = task, time.monotonic()
            if not self.recording:
                return
            self.episode_task = task  # the newest of the episode: where the object is now
            if self.success is None and task.get('success'):
                self.success = task
            if self.success is None:
                try:
                    offset = tuple(float(v) for v in task['fingertip_distance'])
                    if reach_miss(*offset) < self.closest:
                        self.closest, self.closest_offset = reach_miss(*offset), offset
                except (KeyError, TypeError, ValueError):
                    pass

    def on_pose(self, msg):
        p = msg.pose.position
        with self.lock:
            if self.recording and stamp_ns(msg.header.stamp) >= self.since_ns:
                self.poses.append((stamp_ns(msg.header.stamp) * 1e-9, p.x, p.y, p.z))

    def on_action(self, msg):
        with self.lock:
            if self.recording:
                self.actions += 1

    def on_image(self, msg):
        now = time.monotonic()
        with self.lock:
            self.frames_seen += 1
            if not self.recording or stamp_ns(msg.header.stamp) < self.since_ns:
                return
            frame = (now - self.t0, msg)
            self.last_frame = frame
            if self.frames and now - self.t0 - self.frames[-1][0] < self.interval:
                return
            self.frames.append(frame)
            if len(self.frames) >= KEEP_FRAMES:  # thin out: long episodes keep ~KEEP/2..KEEP
                self.frames = self.frames[::2]
                self.interval = max(2 * self.interval, self.frames[1][0] - self.frames[0][0])

    def on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith('arm_bridge'):
                with self.lock:
                    self.bridge = (time.monotonic(), diagnostics.values_of(status))
