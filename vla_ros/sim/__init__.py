"""
The simulator core behind ``sim_arm`` (ROS-free): MuJoCo scene, arm, cameras; synthetic images.

Files: ``arm`` (the floating gripper, table and objects, commanded like a real arm), ``camera``
(offscreen rendering of the scene and wrist cameras on any thread), ``loop`` (physics time and
output schedules), ``scenes`` (seeded synthetic camera images, numpy only), ``tasks`` (seeded
episodes, instructions, success), ``expert`` (the scripted expert), ``outcomes`` (why a reach
episode failed), ``scene.xml``. The bimanual ALOHA (gym-aloha's ViperX scene, joints driven like
ros2_control's joint_trajectory_controller): ``aloha`` (scene, controllers, cameras, the
``transfer_cube`` task and its success), ``aloha_expert`` (its scripted expert, by inverse
kinematics).

MuJoCo reads ``MUJOCO_GL`` once, when it is first imported. This package sets it to ``egl``
(headless offscreen rendering) unless the environment already chose a back end, here and nowhere
else: every module that imports mujoco lives in this package, so this runs first.
"""

import os

os.environ.setdefault('MUJOCO_GL', 'egl')
