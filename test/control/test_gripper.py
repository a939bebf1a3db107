"""Gripper conventions and hysteresis (vla_ros.control.gripper), table-tested."""

import math

import pytest

from vla_ros.control.gripper import GripperConfig, GripperHysteresis, openness

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize('convention, value, expected', [
    ('open_is_one', 1.0, 1.0), ('open_is_one', 0.0, 0.0), ('open_is_one', 0.25, 0.25),
    ('open_is_one', 1.7, 1.0), ('open_is_one', -0.2, 0.0),
    ('closed_is_one', 1.0, 0.0), ('closed_is_one', 0.0, 1.0), ('closed_is_one', 0.25, 0.75),
    ('signed', -1.0, 1.0), ('signed', 1.0, 0.0), ('signed', 0.0, 0.5), ('signed', -0.5, 0.75),
    ('signed', 3.0, 0.0),
    ('open_is_one', NAN, None), ('signed', INF, None), ('closed_is_one', -INF, None),
])
def test_openness_of_each_convention(convention, value, expected):
    assert openness(value, convention) == expected


def test_unknown_convention_raises():
    with pytest.raises(ValueError, match='open_is_one'):
        openness(0.5, 'open_is_zero')


# Each row: convention, consecutive N, the input values, the commanded position after each value
# (None = nothing published), with open_position 0.08 and closed_position 0.0 (metres of a
# parallel gripper's opening).
O, C = 0.08, 0.0
TABLE = [
    # The state starts unknown: N agreeing votes set it; nothing is commanded before.
    ('open_is_one', 2, [1.0, 1.0, 1.0], [None, O, O]),
    ('open_is_one', 1, [0.0], [C]),
    ('open_is_one', 3, [1.0, 1.0, 0.0, 1.0, 1.0, 1.0], [None, None, None, None, None, O]),
    # One stray close among opens flips nothing; two in a row do.
    ('open_is_one', 2, [1, 1, 0, 1, 0, 0, 1], [None, O, O, O, O, C, C]),
    ('open_is_one', 2, [0.9, 0.8, 0.4, 0.6, 0.3, 0.45], [None, O, O, O, O, C]),
    # Exactly at the threshold is no vote, and breaks a streak.
    ('open_is_one', 2, [1, 1, 0, 0.5, 0, 0], [None, O, O, O, O, C]),
    # NaN / inf are rejected (nothing published for them) and break a streak too.
    ('open_is_one', 2, [1, 1, 0, NAN, 0, 0], [None, O, O, None, O, C]),
    ('closed_is_one', 2, [1, 1, 0, 0], [None, C, C, O]),
    ('closed_is_one', 1, [0.2, 0.9, 0.1], [O, C, O]),
    ('signed', 2, [-1, -1, 1, 1], [None, O, O, C]),
    ('signed', 2, [1, 1, -0.2, -0.3], [None, C, C, O]),
    ('signed', 3, [1, 1, 1, -1, -1, 1, -1, -1, -1], [None, None, C, C, C, C, C, C, O]),
]


@pytest.mark.parametrize('convention, consecutive, values, expected', TABLE)
def test_hysteresis_table(convention, consecutive, values, expected):
    hysteresis = GripperHysteresis(GripperConfig(convention, 0.5, consecutive, O, C))
    assert [hysteresis.update(v).position for v in values] == expected


@pytest.mark.parametrize('threshold, values, expected', [
    (0.2, [0.3, 0.3], [None, O]),     # 0.3 is above a 0.2 threshold: open
    (0.8, [0.7, 0.7], [None, C]),     # 0.7 is below a 0.8 threshold: closed
])
def test_threshold_is_on_the_openness_scale(threshold, values, expected):
    hysteresis = GripperHysteresis(GripperConfig('open_is_one', threshold, 2, O, C))
    assert [hysteresis.update(v).position for v in values] == expected


def test_flips_and_rejections_are_reported():
    hysteresis = GripperHysteresis(GripperConfig('open_is_one', 0.5, 1, 1.0, 0.0))
    first = hysteresis.update(1.0)
    assert first.flipped and first.state == 'open' and first.position == 1.0
    assert not hysteresis.update(1.0).flipped
    assert hysteresis.update(NAN).rejected
    assert hysteresis.update(0.0).flipped
    hysteresis.reset()
    assert hysteresis.state is None and hysteresis.position() is None


@pytest.mark.parametrize('config, name', [
    (GripperConfig(convention='open_is_zero'), "'gripper_convention'"),
    (GripperConfig(threshold=1.0), "'gripper_threshold' is 1.0; allowed range (0.0, 1.0)"),
    (GripperConfig(threshold=NAN), "'gripper_threshold'"),
    (GripperConfig(consecutive=0), "'gripper_consecutive' is 0; allowed: an integer in [1, 100]"),
    (GripperConfig(consecutive=2.5), "'gripper_consecutive'"),
    (GripperConfig(open_position=INF), "'gripper_open_position'"),
    (GripperConfig(open_position=0.0, closed_position=0.0), 'must differ'),
])
def test_validate_names_the_parameter_and_range(config, name):
    problems = config.validate()
    assert len(problems) == 1 and name in problems[0]


def test_defaults_are_valid():
    assert GripperConfig().validate() == []
