"""
The OpenVLA family as plain Python policies: no ROS, no remote code, safetensors only.

    from vla_ros.policy import OpenVLAOFTPolicy, OpenVLAPolicy
    policy = OpenVLAPolicy.from_pretrained('/models/openvla-7b', device='auto', dtype='auto')
    action = policy.predict(image, 'put the carrot on the plate', unnorm_key='bridge_orig')
    oft = OpenVLAOFTPolicy.from_pretrained('/models/oft-libero', platform='libero')
    chunk = oft.predict([primary, wrist], 'put the bowl on the plate', proprio=state)

One backbone, two heads, one contract. Folders: ``backbone`` (configuration, processing,
modeling, weights, loading, timing, decoder, graphs, quantization: what both families share),
``openvla`` (``OpenVLAPolicy`` and its fast path), ``oft`` (``OpenVLAOFTPolicy``: configuration,
modeling, processing, the policy, its fast path). Files: ``base`` (``Policy``, the contract every
policy implements, and ``mismatches``, its check against a configuration), ``actions`` (tokens
-> actions, the ``Action`` result), ``errors``, ``loading`` (load and warm up by name), ``tiny``
(miniature checkpoints).
"""

from vla_ros.policy.actions import Action
from vla_ros.policy.base import Policy
from vla_ros.policy.errors import CheckpointError, ConfigError, InputError, PolicyError
from vla_ros.policy.oft.policy import OpenVLAOFTPolicy
from vla_ros.policy.openvla.policy import OpenVLAPolicy

__all__ = ['Action', 'CheckpointError', 'ConfigError', 'InputError', 'OpenVLAOFTPolicy',
           'OpenVLAPolicy', 'Policy', 'PolicyError']
