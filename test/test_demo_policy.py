"""The demo's trained reach policy, rebuilt from the shipped assets (training.demo_policy)."""

import numpy as np
import pytest

from vla_ros.sim.scenes import scene
from vla_ros.training import demo_policy

STATE = np.array([0.3, 0.0, 0.2, 0.3, 0.0, 0.2, 0.04, 0.04])  # home; the x, y, z joints; open


@pytest.fixture(scope='module')
def rebuilt(tmp_path_factory):
    return demo_policy.write_demo_policy(tmp_path_factory.mktemp('demo') / 'reach')


def test_the_rebuilt_policy_loads_as_vla_node_does_and_differs_from_its_base(rebuilt, tmp_path):
    from vla_ros.policy.loading import load_policy
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    policy, key = load_policy(rebuilt, 'openvla_oft', demo_policy.UNNORM_KEY, 'cpu', 'float32',
                              center_crop=True)
    assert key == 'sim_reach' and policy.unnorm_keys == ['sim_reach']
    images = [scene(0, 320, 240), scene(1, 320, 240)]
    chunk = policy.predict(images, 'reach the green cylinder', proprio=STATE,
                           unnorm_key=key).values
    assert chunk.shape == (8, 7) and np.all(np.isfinite(chunk))
    # Inside the demonstrations' range: steps of at most a few centimetres, gripper open.
    assert np.all(np.abs(chunk[:, :3]) < 0.05) and np.all(chunk[:, 6] > 0.5)
    base = write_tiny_oft_checkpoint(tmp_path / 'base', 'libero', seed=demo_policy.BASE_SEED)
    random_policy, _ = load_policy(base, 'openvla_oft', 'synth_oft_libero', 'cpu', 'float32',
                                   center_crop=True)
    random_chunk = random_policy.predict(images, 'reach the green cylinder', proprio=STATE,
                                         unnorm_key='synth_oft_libero').values
    assert not np.allclose(chunk, random_chunk, atol=1e-3)  # the trained weights took effect


def test_the_instruction_changes_where_the_policy_goes(rebuilt):
    from vla_ros.policy.loading import load_policy
    policy, key = load_policy(rebuilt, 'openvla_oft', demo_policy.UNNORM_KEY, 'cpu', 'float32',
                              center_crop=True)
    images = [scene(0, 320, 240), scene(1, 320, 240)]
    chunks = [policy.predict(images, f'reach the {name}', proprio=STATE, unnorm_key=key).values
              for name in ('red cube', 'green cylinder', 'blue block')]
    assert not np.allclose(chunks[0][:, :2], chunks[1][:, :2], atol=1e-3)
    assert not np.allclose(chunks[1][:, :2], chunks[2][:, :2], atol=1e-3)


def test_a_missing_asset_is_a_clear_error(monkeypatch, tmp_path):
    from vla_ros.policy.errors import PolicyError
    monkeypatch.setattr(demo_policy, 'ASSETS', tmp_path / 'nothing')
    with pytest.raises(PolicyError, match='make demo-policy'):
        demo_policy.write_demo_policy(tmp_path / 'out')
