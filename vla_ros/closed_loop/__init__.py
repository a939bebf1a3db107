"""
The programs that start the nodes and close the loop: demo, expert recorder, sim evaluation.

Files: ``processes`` (the process kit they and the tests' DDS harness share: config file,
executables, start, stop, a private participant spun on a thread), ``demo`` (sim_arm + vla_node +
arm_bridge with a policy), ``demo_aloha`` (its ``--robot aloha``: the simulated ALOHA, joint
trajectories), ``record_demos`` (the scripted expert's episodes, or a policy's
corrections, recorded as rosbag2 bags), ``expert_recorder`` (its participant: the expert or the
labeller, and the bag), ``sim_eval`` (a checkpoint's success rate in closed loop),
``sim_recorder`` (what it watches), ``sim_report`` (its report), ``sim_compare`` (two runs
compared, with an exact test).
"""
