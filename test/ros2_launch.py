"""
What ``ros2 launch PACKAGE FILE NAME:=VALUE ...`` does, for a ROS that comes from PyPI.

The ros-jazzy-* wheels bring rclpy, not the ``ros2`` command nor ``launch``. test_launch.py runs
this file in a process of its own, with Jazzy's ``launch`` and ``launch_ros`` sources on
PYTHONPATH (launch_helpers.launch_env), and stops it with SIGINT as Ctrl-C would. Like
``ros2launch.api.launch_a_launch_file``: the file is looked up in the package's share folder
through the ament index, each ``NAME:=VALUE`` becomes a launch argument, and ``LaunchService.run``
handles SIGINT by shutting the launched processes down; its result is the exit status.

    python test/ros2_launch.py vla_ros vla.launch.py model_path:=/models/openvla-7b
"""

from pathlib import Path
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource


def main(argv=None):
    """Run the launch file until it ends or SIGINT; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print('usage: ros2_launch.py PACKAGE FILE [NAME:=VALUE ...]', file=sys.stderr)
        return 2
    package, file_name, *arguments = argv
    bad = [a for a in arguments if ':=' not in a]
    if bad:
        print(f'ros2_launch.py: launch arguments are NAME:=VALUE, got {bad}', file=sys.stderr)
        return 2
    found = sorted(Path(get_package_share_directory(package)).rglob(file_name))
    if len(found) != 1:
        print(f'ros2_launch.py: {len(found)} files named {file_name} in package {package}: '
              f'{[str(f) for f in found]}', file=sys.stderr)
        return 2
    service = LaunchService(argv=arguments)
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(found[0])),
        launch_arguments=[tuple(a.split(':=', 1)) for a in arguments])]))
    return service.run()


if __name__ == '__main__':
    sys.exit(main())
