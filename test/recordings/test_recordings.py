"""
The recordings room on its own: the recorded-action pairing, step times, damaged bags.

What vla_eval and vla_finetune both read, tested without either of them.
"""

from bag_helpers import corruptions, frames, NS, T0_NS, write_bag
import numpy as np
import pytest

from vla_ros.recordings import steps
from vla_ros.recordings.actions import recorded_actions
from vla_ros.recordings.bags import Bag, RecordingError
from vla_ros.recordings.options import check_bag, DataOptions
from vla_ros.recordings.steps import StepReader

MS = 1_000_000


def good_bag(path, storage):
    return write_bag(path, storage, images=frames(3, 200 * MS),
                     instructions=[(T0_NS, 'pick up the red cup')])


def test_recorded_actions_pair_by_log_time():
    actions = np.arange(6)[:, None] * np.ones(7)  # action i has value i everywhere
    ref = recorded_actions(
        image_log_ns=np.array([0, 150, 400]) * MS, next_step_ns=np.array([200, 400, 600]) * MS,
        action_times=np.array([0, 50, 120, 390, 400, 650]) * MS, actions=actions)
    # The window is [image log time, next step time): an action logged with its image counts
    # (a dataset converted to a bag), as does one logged later but before the next step.
    np.testing.assert_array_equal(ref, [np.full(7, 0.0), np.full(7, 3.0), np.full(7, 4.0)])
    late = recorded_actions(np.array([0]), np.array([200 * MS]), np.array([200 * MS]),
                            actions[:1])
    assert np.isnan(late).all()  # logged at the next step time: that step's, not this one's


def test_each_recorded_action_is_the_reference_of_at_most_one_step():
    actions = np.arange(8)[:, None] * np.ones(7)
    # Camera 10 Hz, steps 20 Hz: steps 2j and 2j + 1 use image j; a live node logs each
    # step's action 5 ms after its tick.
    step_ns = np.arange(8) * 50 * MS
    image_ns = step_ns // (100 * MS) * (100 * MS)
    live = recorded_actions(image_ns, step_ns + 50 * MS, step_ns + 5 * MS, actions)
    np.testing.assert_array_equal(live, actions)  # not 0, 0, 2, 2, ...
    # A 10 Hz dataset (each action logged with its image, 1 ms before the step) at --rate 20:
    # a step that reuses an image has no action of its own.
    image_ns = np.maximum(image_ns - MS, 0)
    dataset = recorded_actions(image_ns, step_ns + 50 * MS, image_ns[::2], actions[:4])
    np.testing.assert_array_equal(dataset[::2], actions[:4])
    assert np.isnan(dataset[1::2]).all()


@pytest.mark.parametrize('storage, suffix', [('sqlite3', '.db3'), ('mcap', '.mcap')])
def test_a_damaged_bag_is_a_recording_error_wherever_it_is_damaged(tmp_path, storage, suffix):
    """Opening, checking and reading every step of a damaged bag: a RecordingError, or it works."""
    bag = good_bag(tmp_path / 'bag', storage)
    (file,) = bag.glob('*' + suffix)
    data = file.read_bytes()
    options = DataOptions()
    escaped = []
    for what, damaged in corruptions(data, storage):
        file.write_bytes(damaged)
        try:
            with Bag(bag) as opened:
                check_bag(opened, options)
            with Bag(bag) as opened:
                for _ in StepReader(opened, options.cameras(), options.topics(), options.rate):
                    pass
        except RecordingError as exc:
            assert '\n' not in str(exc), what
        except Exception as exc:  # noqa: B902 - what the test is for: nothing else escapes
            escaped.append(f'{what}: {type(exc).__name__}')
    assert not escaped, f'{len(escaped)} damaged bags gave a traceback: {escaped[:6]}'


def test_step_time():
    assert steps.step_time(T0_NS, 3, 3.0) == T0_NS + NS
