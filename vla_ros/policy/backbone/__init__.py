"""
The backbone both policy families share: OpenVLA's Prismatic vision towers, projector and Llama.

Files: ``configuration`` (config.json, device/dtype arguments), ``processing`` (image and prompt),
``modeling`` (the network), ``weights`` (safetensors loading), ``loading`` (``load_backbone``:
a checkpoint folder to a ``Backbone``), ``timing`` (``PhaseClock``), ``decoder`` (the fused
Llama of the fast paths), ``graphs`` (CUDA graph capture), ``quantization`` (bitsandbytes).
"""
