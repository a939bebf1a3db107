"""
The thin ROS 2 nodes and what only they need: message building, QoS, parameters, diagnostics.

Executables: ``vla_node`` (policy), ``arm_bridge`` (safety bridge; ``joint_bridge`` is its node
for ``output_mode: joint_trajectory``), ``sim_arm`` (MuJoCo arm; ``sim_aloha`` is its ``robot:
aloha``), ``camera_stream`` (synthetic camera); their settings: ``vla_node_config``,
``sim_arm_config``;
vla_node's inputs: ``observations`` (camera, state and instruction subscriptions), ``lifecycle``
(invalid transitions refused, not fatal). Shared pieces: ``messages`` (ROS messages from numpy),
``qos``, ``params`` (typed declarations, one check), ``startup`` (the one start-up pattern),
``diagnostics``, ``logs`` (a cheap log throttle). The programs that start these nodes live in
``vla_ros.closed_loop``. Every decision is made by
the ROS-free code in ``vla_ros.control``; a node turns messages into its inputs and its outputs
into messages.
"""
