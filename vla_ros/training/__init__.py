"""
Fine-tuning from rosbag2 recordings (``vla_finetune``), ROS-free: OpenVLA-OFT's recipe.

It reads the bags through ``vla_ros.recordings`` and takes its data options (``DataOptions``).
Files: ``options`` (the run's settings and the checks before training), ``dataset`` (bags to
samples with vla_eval's step semantics and the policy's own preprocessing), ``augment``
(OFT's training image augmentation, ``--image-aug``), ``stats`` (the new
dataset statistics and the normalised targets), ``model`` (the forward pass on a batch, LoRA,
merged weights), ``checkpoint`` (the output folder and the state to resume from), ``finetune``
(the run and its training loop under ``accelerate``), ``memory`` (glibc's malloc kept compact
while the bags are read), ``cli`` (the command line),
``demo_policy`` (the demo's trained policy, rebuilt from the assets the package ships).
"""

from vla_ros.training.options import FinetuneError, TrainConfig

__all__ = ['FinetuneError', 'TrainConfig']
