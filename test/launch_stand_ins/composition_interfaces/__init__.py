"""
Stand-in for ROS 2's ``composition_interfaces`` message package, for the launch tests only.

``launch_ros.actions`` imports ``composition_interfaces.srv`` (composable nodes) when it is
imported, and no PyPI wheel provides that package. vla_ros's launch files start ordinary nodes,
so the names alone are enough (see ../shared/vendor/ros2_launch_jazzy/README.md). Only the launch
tests put this folder on PYTHONPATH; nothing of vla_ros imports it.
"""
