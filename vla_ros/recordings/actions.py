"""
The recorded action of each control step: the ``vla/action`` a step is paired with.

vla_eval compares predictions with it (``--reference action``, regression between checkpoints)
and vla_finetune trains on it, so both read the same action for the same step. Pure numpy; every
time is bag log time in integer nanoseconds, steps and message times sorted. A step without a
recorded action gets a row of NaN. Actions have any size D: 7 end-effector deltas, or one
target per joint (ALOHA's 14).

A ``Float64MultiArray`` has no header, so pairing is by log time: step ``k`` takes the first
``vla/action`` logged in the window ``[log time of its (primary) image, t_{k+1})``, from the
moment its image was logged up to (not including) the next step time, skipping two kinds: one an
earlier step took, and one logged at the very log time of a newer step's image. That is the
action a live node published from (about) that frame before its next tick, and also the action a
dataset converted to a bag (or a teleoperation log) logged at the same time as its image, even
when the image was logged slightly before ``t_k``. A step with no such action in its window has
none.

Each recorded action belongs to at most one step. With ``--rate`` above the camera rate
(``--rate 20`` on 10 Hz cameras) a step that reuses the previous step's image has a window that
starts at that image: it holds the previous step's action, which that step took, and the step
takes its own, logged after its tick. A dataset logs no action for such a step, and the next
image's action, logged with that image (maybe just before the next step time), is the next
image's; so the step has none rather than the wrong one.
"""

import numpy as np

from vla_ros.control.action_layout import ACTION_DIM


def recorded_actions(image_log_ns, next_step_ns, action_times, actions, dim=None):
    """
    Pair each step with its recorded action (the rule is in the module docstring).

    ``image_log_ns``, ``next_step_ns``: int64 (K,), in step order; ``action_times`` int64 (N,),
    sorted; ``actions`` float64 (N, D). Returns float64 (K, D), NaN rows where no action fits;
    ``dim``: D when there are no actions (default 7), else it must be the actions' D.
    """
    image_log_ns = np.asarray(image_log_ns, dtype=np.int64)
    next_step_ns = np.asarray(next_step_ns, dtype=np.int64)
    action_times = np.asarray(action_times, dtype=np.int64)
    actions = np.asarray(actions, dtype=np.float64).reshape(action_times.size, -1) \
        if action_times.size else np.zeros((0, dim or ACTION_DIM))
    if dim is not None and actions.shape[1] != dim:
        raise ValueError(f'the recorded actions have {actions.shape[1]} values, expected {dim}')
    out = np.full((image_log_ns.shape[0], actions.shape[1]), np.nan)
    if action_times.size == 0:
        return out
    images = set(image_log_ns.tolist())
    first = np.searchsorted(action_times, image_log_ns, side='left')  # first at or after image
    taken = np.zeros(action_times.size, dtype=bool)
    free = 0  # every action before it is taken
    for k, image_ns in enumerate(image_log_ns.tolist()):
        i = max(int(first[k]), free)
        while i < action_times.size and action_times[i] < next_step_ns[k]:
            logged = int(action_times[i])
            if not taken[i] and not (logged > image_ns and logged in images):
                out[k] = actions[i]
                taken[i] = True
                while free < taken.size and taken[free]:
                    free += 1
                break
            i += 1
    return out
