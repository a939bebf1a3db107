"""
OpenVLA as a plain Python policy: no ROS, no remote code, safetensors only.

    from vla_ros.policy import OpenVLAPolicy
    policy = OpenVLAPolicy.from_pretrained('/models/openvla-7b', device='auto', dtype='auto')
    action = policy.predict(image, 'put the carrot on the plate', unnorm_key='bridge_orig')
    action.values, action.valid, action.token_ids

Files: ``configuration`` (config.json, device/dtype arguments), ``processing`` (image and prompt),
``modeling`` (the network), ``weights`` (safetensors loading), ``actions`` (tokens -> actions),
``policy`` (the public class), ``quantization`` (bitsandbytes), ``tiny`` (miniature checkpoints).
"""

from vla_ros.policy.actions import Action
from vla_ros.policy.errors import CheckpointError, ConfigError, InputError, PolicyError
from vla_ros.policy.policy import OpenVLAPolicy

__all__ = ['Action', 'CheckpointError', 'ConfigError', 'InputError', 'OpenVLAPolicy',
           'PolicyError']
