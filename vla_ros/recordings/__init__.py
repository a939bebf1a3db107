"""
Recordings (rosbag2), read and written without ROS: what vla_eval and vla_finetune both read.

Files: ``bags`` (reading and writing rosbag2), ``steps`` (the control steps of a bag: time base,
the cameras' frames, state and instruction of each).
"""
