"""
Offline evaluation of an OpenVLA checkpoint on rosbag2 recordings (``vla_eval``).

The same ``ControlCore``, frame decoding, preprocessing and ``OpenVLAPolicy.predict`` as
``vla_node``, at
the node's control rate on bag time, so offline results predict live behaviour. ROS-free:
``rosbags`` reads and writes the bags, no rclpy node or graph is involved.

Files: ``bags`` (reading and writing rosbag2, input checks), ``steps`` (the control steps of a
bag: time base, image and instruction pairing), ``reference`` (recorded actions, ee_pose
relabelling), ``evaluate`` (one bag through the policy), ``metrics`` (pure numpy), ``report``
(metrics.json, plots, summary.md, predictions bags), ``cli`` (the command line, accelerate).
"""

from vla_ros.evaluation.bags import EvalError
from vla_ros.evaluation.evaluate import BagResult, EvalOptions, evaluate_bag

__all__ = ['BagResult', 'EvalError', 'EvalOptions', 'evaluate_bag']
