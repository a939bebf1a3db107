"""vla_ros: Vision-Language-Action policies in charge of ROS 2 robot arms."""
