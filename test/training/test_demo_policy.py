"""The demo's trained reach policy, rebuilt from the shipped assets (training.demo_policy)."""

import json
import math

from conftest import REPO
import numpy as np
import pytest

from vla_ros.sim.scenes import scene
from vla_ros.training import demo_policy
from vla_ros.training.demo_policy import run_proprio

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


def test_the_demo_runs_the_state_layout_of_the_policys_run_record(rebuilt, tmp_path, capsys):
    """The run record is the one source: the checkpoint carries it, demo and Makefile read it."""
    from vla_ros.closed_loop import demo
    shipped = json.loads((demo_policy.ASSETS / 'run.json').read_text())['config']['data.proprio']
    assert run_proprio(rebuilt) == run_proprio() == shipped
    assert demo.node_params('reach', rebuilt)[-1] == \
        'proprio:=[' + ', '.join(f"'{entry}'" for entry in shipped) + ']'
    assert demo.main(['--print-proprio']) == 0 and capsys.readouterr().out.split() == shipped
    makefile = (REPO / 'Makefile').read_text()
    assert '--proprio $$proprio' in makefile and 'joint:gripper_x' not in makefile
    # Another record, another layout; no record, a clear error.
    record = tmp_path / 'other' / 'training_state' / 'run.json'
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({'config': {'data.proprio': ['ee_position', 'ee_axis_angle']}}))
    assert demo.node_params('reach', tmp_path / 'other')[-1] == \
        "proprio:=['ee_position', 'ee_axis_angle']"
    with pytest.raises(ValueError, match='vla_finetune run record'):
        demo.node_params('reach', tmp_path)


def test_a_missing_asset_is_a_clear_error(monkeypatch, tmp_path):
    from vla_ros.policy.errors import PolicyError
    monkeypatch.setattr(demo_policy, 'ASSETS', tmp_path / 'nothing')
    with pytest.raises(PolicyError, match='make demo-policy'):
        demo_policy.write_demo_policy(tmp_path / 'out')


# Seeds of sim_arm's reach task (start at home) on which the shipped policy's first steps head
# for the named object: round 5's did on 24 of seeds 0-29 (its untrained base: 12, chance is 1
# in 3), and these are the first twelve of them; round 6, shipped now, also heads right on 24
# of the 30 and on all twelve. (Issue 21's round 2 headed right on 12 of 30 and found the
# object on the way.) They pin what the demo shows; a rebuild that loads the wrong weights,
# feeds other images or ignores the instruction loses them.
HEADING_SEEDS = (0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 15)
HEADING_STEPS = 4     # the first steps of the first chunk: their summed xy motion is the heading
HEADING_HITS = 10     # of the 12; the untrained base: 5 (seeds 0, 5, 7, 10, 12)


def heading_hits(policy, key, layout):
    """
    Return, per seed of ``HEADING_SEEDS``, whether the first chunk heads for the named object.

    As the demo runs it: sim_arm's two cameras rendered at 320 x 240 in the seed's start scene,
    the state layout of the policy's run record (ee position, then joints: the gripper's x, y, z
    joints, the two fingers) and the seed's instruction. The heading is the xy sum of the first
    ``HEADING_STEPS`` rows; it heads for the object whose direction from the gripper makes the
    smallest angle with it.
    """
    from vla_ros.sim import arm as arm_module, camera as camera_module, tasks

    arm = arm_module.SimArm(320, 240)
    camera = camera_module.SimCamera(arm.model, 320, 240,
                                     (arm_module.SCENE_CAMERA, arm_module.WRIST_CAMERA))
    assert layout[0] == 'ee_position' and all(e.startswith('joint:') for e in layout[1:]), layout
    hits = []
    try:
        for seed in HEADING_SEEDS:
            arm.reset(seed)
            episode = tasks.episode(seed, 'reach')
            names, positions, _ = arm.joint_state()
            joint = dict(zip(names, positions))
            ee, _ = arm.ee_pose()
            state = np.array([*ee, *(joint[e.removeprefix('joint:')] for e in layout[1:])])
            chunk = policy.predict(list(camera.render(arm.snapshot())), episode.instruction,
                                   proprio=state, unnorm_key=key).values
            heading = chunk[:HEADING_STEPS, :2].sum(axis=0)  # (2,)

            def angle(xyz):
                to = xyz[:2] - ee[:2]
                return abs(math.atan2(heading[0] * to[1] - heading[1] * to[0], heading @ to))
            objects = arm.object_positions()
            target = tasks.scene_object(episode.object).body
            hits.append(min(objects, key=lambda body: angle(objects[body])) == target)
    finally:
        camera.close()
        arm.close()
    return hits


@pytest.mark.slow  # 12 simulated reach rollouts of two policies
def test_the_first_steps_head_for_the_named_object_unlike_the_untrained_base(rebuilt, tmp_path):
    from vla_ros.policy.loading import load_policy
    from vla_ros.policy.tiny import write_tiny_oft_checkpoint
    policy, key = load_policy(rebuilt, 'openvla_oft', demo_policy.UNNORM_KEY, 'cpu', 'float32',
                              center_crop=True)
    layout = run_proprio(rebuilt)
    hits = heading_hits(policy, key, layout)
    assert sum(hits) >= HEADING_HITS, f'heads for the named object on {sum(hits)} of 12: {hits}'
    # The same check fails the policy's untrained base: the check can tell.
    base = write_tiny_oft_checkpoint(tmp_path / 'base', 'libero', seed=demo_policy.BASE_SEED)
    untrained, key = load_policy(base, 'openvla_oft', 'synth_oft_libero', 'cpu', 'float32',
                                 center_crop=True)
    assert sum(heading_hits(untrained, key, layout)) < HEADING_HITS
