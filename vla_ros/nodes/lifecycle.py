"""
A lifecycle request that is not valid now is refused, as rclcpp refuses it, not fatal.

rclpy's ``LifecycleNode`` triggers a requested transition without checking it: a ChangeState
that the current state has no transition for (``configure`` while active, an unknown id) makes
rcl raise "Transition is not registered" through the executor, which ends the node with no
hold. Any peer on the graph could stop the arm's policy that way. rclcpp answers such a request
with ``success=False`` and keeps running; ``refuse_invalid_transitions`` makes rclpy's server do
the same, without touching rclpy itself: it wraps the ChangeState service's callback.
"""


def refuse_invalid_transitions(node, warn):
    """
    Answer a ChangeState for a transition ``node`` cannot take now with ``success=False``.

    A valid request goes to rclpy's own handler unchanged. ``warn(text)`` is told why a request
    was refused (the transition asked for, the state, the transitions valid now).
    """
    service = node._service_change_state  # rclpy's ChangeState server of a LifecycleNode
    machine = node._state_machine
    handle = service.callback

    def change_state(request, response):
        wanted = request.transition  # rclpy looks a label up first, when there is one
        available = machine.available_transitions  # (id, label, start, ..., goal, ...) each
        if any(wanted.label == t[1] if wanted.label else wanted.id == t[0] for t in available):
            return handle(request, response)
        what = repr(wanted.label) if wanted.label else f'id {wanted.id}'
        valid = ', '.join(f'{t[1]} ({t[0]})' for t in available)
        warn(f'lifecycle request refused: transition {what} is not valid in state '
             f'{machine.current_state[1]!r}; valid now: {valid}')
        response.success = False
        return response

    service.callback = change_state
