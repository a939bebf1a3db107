"""The real openvla-7b architecture, built on the meta device, has the released tensor names."""

from policy_helpers import conformance_dir, read_json
import pytest
import torch

from vla_ros.policy.configuration import openvla_7b_config
from vla_ros.policy.modeling import OpenVLAModel


@pytest.fixture(scope='module')
def released():
    file = conformance_dir() / 'openvla7b_param_shapes.json'
    if not file.is_file():
        pytest.skip(f'{file} not found; set VLA_CONFORMANCE_DIR to the conformance folder')
    return read_json(file)


@pytest.fixture(scope='module')
def model():
    with torch.device('meta'):
        return OpenVLAModel(openvla_7b_config())


def test_names_and_shapes_equal_released(model, released):
    expected = {p['name']: tuple(p['shape']) for p in released['parameters']}
    built = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert len(expected) == released['num_tensors'] == 982
    missing = sorted(set(expected) - set(built))
    unexpected = sorted(set(built) - set(expected))
    assert not missing and not unexpected, (missing[:10], unexpected[:10])
    wrong = {n: (built[n], s) for n, s in expected.items() if built[n] != s}
    assert not wrong
    assert sum(t.numel() for t in model.state_dict().values()) == released['num_parameters']


def test_everything_is_on_meta(model):
    assert all(t.is_meta for t in model.state_dict().values())


def test_resolved_text_config(model, released):
    config = model.llama_config
    rope = getattr(config, 'rope_parameters', None) or {}  # transformers 5 groups the RoPE keys
    for key, value in released['resolved_text_config'].items():
        if key == 'rope_theta':
            assert rope.get('rope_theta', getattr(config, 'rope_theta', None)) == value
        elif key == 'rope_scaling':
            assert rope.get('rope_type', 'default') == 'default'
            assert getattr(config, 'rope_scaling', None) in (None, {}, rope)
        else:
            assert getattr(config, key) == value, key
    assert config._attn_implementation == 'sdpa'


def test_towers(model, released):
    vision = released['vision']
    dino = model.vision_backbone.featurizer
    siglip = model.vision_backbone.fused_featurizer
    assert (dino.embed_dim, len(dino.blocks), dino.num_prefix_tokens) == (
        vision['featurizer_embed_dim'], vision['featurizer_depth'],
        vision['featurizer_num_prefix_tokens'])
    assert (siglip.embed_dim, len(siglip.blocks), siglip.num_prefix_tokens) == (
        vision['fused_featurizer_embed_dim'], vision['fused_featurizer_depth'],
        vision['fused_featurizer_num_prefix_tokens'])
    gelus = [m for m in model.vision_backbone.modules() if isinstance(m, torch.nn.GELU)]
    assert gelus and all(m.approximate == 'none' for m in gelus)  # exact erf GELU
