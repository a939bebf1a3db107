"""
vla_ros: Vision-Language-Action policies in charge of ROS 2 robot arms.

Folders by floor (a module imports from its own floor or the ones below, ``test_structure``):

0. ``control`` (the rules of the control loop), ``sim`` (the MuJoCo simulator core), ``policy``
   (the OpenVLA family as plain Python policies): ROS-free cores.
1. ``recordings`` (rosbag2 recordings read and written without ROS), ``remote`` (``vla_serve``
   and openpi's websocket wire: policies on another machine).
2. ``evaluation`` (``vla_eval``) and ``training`` (``vla_finetune``): offline tools on recordings.
3. ``nodes``: the thin ROS 2 nodes.
4. ``closed_loop``: the programs that start the nodes (demo, expert recorder, sim evaluation).
5. ``bench``: benchmarks and the GPU check.
"""
