"""
The rules of the control loop, ROS-free: the node and offline evaluation share every one of them.

Files: ``core`` (the tick verdict, instruction, enable, the commit gate, ``infer``), ``safety``
(arm_bridge's checks: clamps, workspace box, staleness, watchdog), ``gripper`` (conventions,
hysteresis, pairing a command with its step), ``geometry`` (every rotation, finite checks),
``images`` (camera frames from ROS image message fields, without the message classes),
``action_layout`` (the fields of the action messages out and back),
``concurrency`` (newest-input slots, the inference worker), ``stats`` (diagnostics figures),
``chunks`` (which row of which chunk a tick publishes), ``clock`` (a node clock that jumps back),
``readers`` (one reader per message field), ``state`` (the state vector from pose and joints),
``step_period`` (one policy step's length, learned from arrivals), ``joints`` (joint-space
actions: the joint of each action dimension, limits from parameters or URDF, the joint safety
checks), ``trajectory`` (joint trajectories for ros2_control's joint_trajectory_controller and
the checks it applies), ``stamps`` (the stamp rules of every bridge: stale, future, reordered),
``joint_bridge`` (arm_bridge's joint_trajectory mode: commands and chunks to trajectories per
controller, the watchdog and enable holds).
"""
