"""The policy contract (vla_ros.policy.base): one check for vla_node and vla_eval, no probing."""

import types

import numpy as np
from policy_helpers import scene
import pytest

from vla_ros.evaluation.options import check_policy, EvalOptions
from vla_ros.evaluation.options import EvalError
from vla_ros.nodes.vla_node_config import policy_problems
from vla_ros.policy import ConfigError, InputError, OpenVLAPolicy, Policy
from vla_ros.policy.loading import load_policy


class TwoCameras(Policy):
    """Two images and an 8-D state in (as OFT's LIBERO platform), ``action_dim`` out."""

    num_images, proprio_dim, unnorm_keys = 2, 8, ('k',)

    def __init__(self, action_dim=7):
        self._action_dim = action_dim

    @property
    def action_dim(self):
        return self._action_dim

    def predict(self, images, instruction, proprio=None, unnorm_key=None):
        raise AssertionError('the check needs no prediction')


STATE = ['ee_position', 'ee_axis_angle', 'joint:a', 'joint:b']  # 8 values


@pytest.mark.parametrize('cameras, proprio, sentence', [
    (['front'], STATE, 'the policy (TwoCameras) takes 2 image(s)'),
    (['front', 'wrist'], ['ee_position'], 'the policy (TwoCameras) needs 8 state values'),
], ids=['cameras', 'state'])
def test_vla_node_and_vla_eval_state_a_mismatch_in_the_same_sentence(cameras, proprio, sentence):
    """One check, two front ends: each says the configuration's side in its own terms."""
    policy = TwoCameras()
    node = policy_problems(types.SimpleNamespace(camera_topics=cameras, proprio=proprio,
                                                 action_space='ee_delta'), policy)
    with pytest.raises(EvalError) as raised:
        check_policy(policy, EvalOptions(camera_topics=cameras, proprio=proprio))
    assert len(node) == 1 and sentence in node[0], node
    assert sentence in str(raised.value)


def test_a_14_d_policy_is_refused_by_vla_node_for_deltas_and_taken_by_vla_eval():
    # vla_node's action space says what an action must be; vla_eval compares a policy with the
    # recorded vla/action of its bags, of any size (a bag of another size is refused there).
    policy = TwoCameras(14)
    node = policy_problems(types.SimpleNamespace(camera_topics=['front', 'wrist'], proprio=STATE,
                                                 action_space='ee_delta'), policy)
    assert len(node) == 1 and 'the policy (TwoCameras) predicts 14-D actions' in node[0], node
    check_policy(policy, EvalOptions(camera_topics=['front', 'wrist'], proprio=STATE))


def test_a_module_callable_returning_no_policy_is_refused_with_the_fix(tiny_checkpoint):
    with pytest.raises(ConfigError, match=r"policy 'policies:duck' returned a _Duck, not a "
                       r'vla_ros\.policy\.Policy; make it return an instance of a subclass'):
        load_policy(tiny_checkpoint, 'policies:duck', unnorm_key='synth_bridge', device='cpu')


def test_openvla_takes_the_image_or_a_list_of_one_and_no_state(tiny_checkpoint):
    policy = OpenVLAPolicy.from_pretrained(tiny_checkpoint, device='cpu')
    image = scene(3)
    alone = policy.predict(image, 'pick', unnorm_key='synth_bridge')
    listed = policy.predict([image], 'pick', unnorm_key='synth_bridge')
    assert alone.values.shape == (7,) and alone.rows.shape == (1, 7)  # DESIGN.md's [7]
    np.testing.assert_array_equal(alone.values, listed.values)
    with pytest.raises(InputError, match='OpenVLA takes no state.*unnorm_key=...'):
        policy.predict(image, 'pick', 'synth_bridge')  # the old positional unnorm key
    with pytest.raises(InputError, match='one image .or a list of one., got a list of 2'):
        policy.predict([image, image], 'pick', unnorm_key='synth_bridge')
