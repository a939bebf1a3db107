"""Rotations and finite checks (vla_ros.control.geometry): one module for the whole package."""

import math

from hypothesis import given, strategies as st
import numpy as np
import pytest

from vla_ros.control.geometry import (clamp_norm, compose_pose, conjugate_wxyz, finite_vector,
                                      from_wxyz, is_finite_number, matrix_to_quaternion,
                                      matrix_to_rpy, quaternion_to_matrix, quaternion_to_rpy,
                                      rotation_from_vector, rotation_vector, rpy_to_matrix,
                                      rpy_to_quaternion, to_wxyz, wrap_angle)

angles = st.floats(-math.pi, math.pi, allow_nan=False)


def rx(a):
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def ry(a):
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def rz(a):
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _quaternion_matrix(x, y, z, w):
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@given(angles, angles, angles)
def test_quaternion_is_rz_ry_rx(roll, pitch, yaw):
    q = rpy_to_quaternion(roll, pitch, yaw)
    assert math.isclose(sum(c * c for c in q), 1.0, abs_tol=1e-12)
    np.testing.assert_allclose(_quaternion_matrix(*q), rz(yaw) @ ry(pitch) @ rx(roll),
                               atol=1e-12)


def test_quaternion_known_values_and_normalisation():
    assert rpy_to_quaternion(0, 0, 0) == (0, 0, 0, 1)
    np.testing.assert_allclose(rpy_to_quaternion(0, 0, math.pi / 2),
                               (0, 0, math.sqrt(0.5), math.sqrt(0.5)), atol=1e-15)
    q = np.array(rpy_to_quaternion(0.3, -0.2, 0.1)) * 3.7  # not unit length
    np.testing.assert_allclose(quaternion_to_rpy(*q), (0.3, -0.2, 0.1), atol=1e-12)
    gimbal = quaternion_to_rpy(*rpy_to_quaternion(0.0, math.pi / 2, 0.0))  # asin argument clamped
    assert math.isclose(gimbal[1], math.pi / 2, abs_tol=1e-7)
    with pytest.raises(ValueError, match='norm'):
        quaternion_to_rpy(0, 0, 0, 0)


def test_rpy_matrix_matches_conversions_and_elementary_rotations():
    for roll, pitch, yaw in [(0.1, -0.2, 0.3), (1.0, 0.5, -2.0), (0.0, 0.0, math.pi / 2)]:
        rot = rpy_to_matrix(roll, pitch, yaw)
        np.testing.assert_allclose(rot, rz(yaw) @ ry(pitch) @ rx(roll), atol=1e-12)
        q = rpy_to_quaternion(roll, pitch, yaw)
        np.testing.assert_allclose(quaternion_to_matrix(q), rot, atol=1e-12)
        np.testing.assert_allclose(matrix_to_rpy(rot), (roll, pitch, yaw), atol=1e-12)


@given(st.tuples(*[st.floats(-3.0, 3.0)] * 3))
def test_quaternion_and_rotation_vector_round_trip(rpy):
    rot = rpy_to_matrix(*rpy)
    np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(rot)), rot, atol=1e-9)
    np.testing.assert_allclose(rotation_from_vector(rotation_vector(rot)), rot, atol=1e-9)


def test_compose_pose_rotates_about_the_end_effector_with_base_axes_left_multiplied():
    position = np.array([0.4, 0.1, 0.3])
    start = rx(0.3) @ ry(-0.2)
    delta = np.array([0.01, -0.02, 0.03, 0.1, 0.2, math.pi / 2])
    new_position, new_quat = compose_pose(position, matrix_to_quaternion(start), delta)
    # The rotation does not move the end-effector point; the translation is in the base frame.
    np.testing.assert_allclose(new_position, position + delta[:3], atol=1e-12)
    expected = rz(delta[5]) @ ry(delta[4]) @ rx(delta[3]) @ start
    np.testing.assert_allclose(quaternion_to_matrix(new_quat), expected, atol=1e-12)
    # Base-aligned axes: a yaw of 90 degrees turns the gripper's x axis from base x to base y.
    _, quat = compose_pose(position, (0, 0, 0, 1), np.array([0, 0, 0, 0, 0, math.pi / 2]))
    np.testing.assert_allclose(quaternion_to_matrix(quat)[:, 0], [0, 1, 0], atol=1e-12)
    # Left-multiplied, not right: with a non-identity start the two differ.
    right = start @ rz(delta[5]) @ ry(delta[4]) @ rx(delta[3])
    assert not np.allclose(quaternion_to_matrix(new_quat), right, atol=1e-3)


def test_wrap_angle_and_mujoco_quaternion_order():
    angles = [0.0, math.pi, -math.pi, 3 * math.pi, 0.5 - 2 * math.pi]
    np.testing.assert_allclose(wrap_angle(angles), [0.0, math.pi, math.pi, math.pi, 0.5],
                               atol=1e-12)
    xyzw = np.array([0.1, 0.2, 0.3, 0.9])
    np.testing.assert_array_equal(to_wxyz(xyzw), [0.9, 0.1, 0.2, 0.3])
    np.testing.assert_array_equal(from_wxyz(to_wxyz(xyzw)), xyzw)
    np.testing.assert_array_equal(conjugate_wxyz([0.9, 0.1, 0.2, 0.3]), [0.9, -0.1, -0.2, -0.3])


def test_finite_checks_and_norm_clamp():
    assert is_finite_number(1) and is_finite_number(-0.5)
    assert not any(is_finite_number(v) for v in (True, math.nan, math.inf, '1', None))
    np.testing.assert_array_equal(finite_vector([1, 2, 3], 3, 'v'), [1.0, 2.0, 3.0])
    for bad in ([1, 2], [1, 2, math.nan], [math.inf, 0, 0]):
        with pytest.raises(ValueError, match='v must be 3 finite numbers'):
            finite_vector(bad, 3, 'v')
    np.testing.assert_allclose(clamp_norm(np.array([3.0, 4.0]), 1.0), [0.6, 0.8])
    np.testing.assert_array_equal(clamp_norm(np.array([0.3, 0.4]), 1.0), [0.3, 0.4])
