"""
Offline evaluation of an OpenVLA or OpenVLA-OFT checkpoint on rosbag2 recordings (``vla_eval``).

The same ``ControlCore``, frame decoding, state assembly, preprocessing and ``predict`` as
``vla_node``, at the node's control rate on bag time, so offline results predict live behaviour
(several cameras, proprioception and action chunks included). ROS-free: the bags are read and
written by ``vla_ros.recordings``, no rclpy node or graph is involved.

Files: ``options`` (what evaluation adds to the data options: the reference, the control core's
settings; the bag and policy checks), ``reference`` (the reference of each step: recorded
actions, or ee_pose relabelled), ``evaluate`` (one bag through the control core and the policy),
``results`` (a bag's per-step and per-chunk record), ``metrics`` (pure numpy), ``report``
(metrics.json, plots, summary.md, predictions bags), ``cli`` (the command line, accelerate).
"""

from vla_ros.evaluation.evaluate import BagResult, EvalError, EvalOptions, evaluate_bag

__all__ = ['BagResult', 'EvalError', 'EvalOptions', 'evaluate_bag']
