"""Entry points for executables whose issue has not landed yet: a clear message, exit status 2."""

import sys

_ISSUES = {
    'vla_node': 'the policy node',
    'arm_bridge': 'the arm driver bridge',
    'sim_arm': 'the MuJoCo simulated arm',
    'vla_eval': 'offline rosbag evaluation',
    'vla_tiny_model': 'the miniature checkpoint writer',
}


def _unavailable(name):
    def main(argv=None):
        print(f'{name} ({_ISSUES[name]}) is not yet available in this version of vla_ros; '
              'see README.md for what works today.', file=sys.stderr)
        return 2
    main.__name__ = name
    return main


vla_eval = _unavailable('vla_eval')
