"""
Offline evaluation of an OpenVLA or OpenVLA-OFT checkpoint on rosbag2 recordings (``vla_eval``).

The same ``ControlCore``, frame decoding, state assembly, preprocessing and ``predict`` as
``vla_node``, at the node's control rate on bag time, so offline results predict live behaviour
(several cameras, proprioception and action chunks included). ROS-free: ``rosbags`` reads and
writes the bags, no rclpy node or graph is involved.

Files: ``bags`` (reading and writing rosbag2), ``options`` (what to read, input checks),
``steps`` (the control steps of a bag: time base, the cameras' frames, state and instruction of
each), ``reference`` (recorded actions, ee_pose relabelling), ``evaluate`` (one bag through the
control core and the policy), ``results`` (a bag's per-step and per-chunk record), ``metrics``
(pure numpy), ``report`` (metrics.json, plots, summary.md, predictions bags), ``cli`` (the command
line, accelerate).
"""

from vla_ros.evaluation.evaluate import BagResult, EvalOptions, evaluate_bag
from vla_ros.recordings.bags import EvalError

__all__ = ['BagResult', 'EvalError', 'EvalOptions', 'evaluate_bag']
