"""
The one start-up pattern of every vla_ros executable, and how a node reports start-up problems.

``run(Node)``: ``rclpy.init``, build the node (declarations only), ``node.start()`` (read and
check every parameter, build resources; on failure it has reported every problem with
``report_problems`` and returns False), spin a ``SingleThreadedExecutor``, and always
``node.close()`` and shut down. Exit status 0, or 1 when the node could not start; Ctrl-C (at
any point, start-up included) is a quiet stop with status 0.

A process that has imported torch (vla_node) ends with ``os._exit`` once the node is closed and
rclpy shut down: Python's own finalisation of torch's thousands of modules and objects takes 1 s
on a quiet machine and up to 4 s on a busy one, which pushed a Ctrl-C'd vla_node past
``ros2 launch``'s 5 s before it escalates to SIGTERM. Nothing is left to finalise by then: the
node released its resources in ``close``; the standard streams and ``logging`` are flushed first.

Why single-threaded: the ``MultiThreadedExecutor``'s dispatch thread held the GIL at about 94 %
CPU and stalled ``sim_arm`` for up to 1.7 s under a 50 Hz twist stream. Work that takes long
(inference, rendering) has a thread of its own instead.
"""

import logging
import os
import sys

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def report_problems(logger, problems, what='cannot start'):
    """Log every problem in one error message: ``what``, then one problem per line."""
    lines = '\n'.join(f'  - {problem}' for problem in problems)
    logger.error(f'{what} ({len(problems)} problem{"s" if len(problems) > 1 else ""}):\n{lines}')


def run(make_node, args=None):
    """Run one node until Ctrl-C or shutdown; return the exit status."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make_node()
        if node.start():
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            executor.spin()
        else:
            code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:  # rclpy's RCLError
        # Ctrl-C shuts the context down under the node (during a slow configure, say): the call
        # that meets it fails with "context is invalid". A stop, not an error to print.
        if rclpy.ok():
            raise
    except SystemExit as exc:  # a node that finishes its job (camera_stream --count)
        code = exc.code or 0
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    if 'torch' in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
