"""
The OpenVLA family as plain Python policies: no ROS, no remote code, safetensors only.

    from vla_ros.policy import OpenVLAPolicy, OpenVLAOFTPolicy
    policy = OpenVLAPolicy.from_pretrained('/models/openvla-7b', device='auto', dtype='auto')
    action = policy.predict(image, 'put the carrot on the plate', unnorm_key='bridge_orig')
    oft = OpenVLAOFTPolicy.from_pretrained('/models/oft-libero', platform='libero')
    chunk = oft.predict([primary, wrist], 'put the bowl on the plate', proprio=state)

One backbone (``policy.load_backbone``), two heads. Files: ``configuration`` (config.json,
device/dtype arguments), ``processing`` (image and prompt), ``modeling`` (the network),
``weights`` (safetensors loading), ``actions`` (tokens -> actions, the ``Action`` result),
``policy`` (``OpenVLAPolicy``, the backbone loader), ``decoder`` (the fused Llama of the fast
paths), ``fast`` and ``graphs`` (OpenVLA's fast path, CUDA graphs), ``oft*`` (OpenVLA-OFT:
configuration, modeling, processing, the policy and its fast path), ``loading`` (load and warm
up by name), ``quantization`` (bitsandbytes), ``tiny`` (miniature checkpoints).
"""

from vla_ros.policy.actions import Action
from vla_ros.policy.errors import CheckpointError, ConfigError, InputError, PolicyError
from vla_ros.policy.oft import OpenVLAOFTPolicy
from vla_ros.policy.policy import OpenVLAPolicy

__all__ = ['Action', 'CheckpointError', 'ConfigError', 'InputError', 'OpenVLAOFTPolicy',
           'OpenVLAPolicy', 'PolicyError']
