"""
OpenVLA: one image and an instruction to one 7-D action, decoded token by token.

Files: ``policy`` (``OpenVLAPolicy``), ``fast`` (its fast path: static cache, CUDA graphs).
"""
