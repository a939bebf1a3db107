"""
Recordings (rosbag2), read and written without ROS: what vla_eval and vla_finetune both read.

Files: ``bags`` (reading and writing rosbag2; ``RecordingError``, a bad bag or data option),
``steps`` (the control steps of a bag: time base, the cameras' frames paired by stamp, state and
instruction of each), ``actions`` (the recorded action of each step), ``options`` (the data
options both tools take, their command-line flags, declared once, and the bag check).
Nothing here imports evaluation, training or the nodes.
"""

from vla_ros.recordings.bags import RecordingError
from vla_ros.recordings.options import DataOptions

__all__ = ['DataOptions', 'RecordingError']
