"""
OpenVLA-OFT: several cameras and the arm's state to a chunk of actions in one forward pass.

Files: ``configuration`` (the platform constants, normalisation bounds), ``modeling`` (the action
head and proprio projector), ``processing`` (frame crops, pixel values, the token layout),
``policy`` (``OpenVLAOFTPolicy``), ``fast`` (its fast path).
"""
