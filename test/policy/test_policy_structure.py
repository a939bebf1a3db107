"""The real openvla-7b architecture, built on the meta device, has the released tensor names."""

from policy_helpers import conformance_dir, read_json
import pytest
import torch

from vla_ros.policy.backbone.configuration import openvla_7b_config
from vla_ros.policy.backbone.modeling import OpenVLAModel


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


# ---- OpenVLA-OFT-7B: the same backbone, plus its heads at D = 4096 ----------------------------
def oft_head_shapes(action_dim, proprio_dim, width=4096, blocks=2):
    """Return the tensor names and shapes OFT's fine-tuning writes (openvla_oft_tiny README)."""
    head = {'model.layer_norm1.weight': (width * action_dim,),
            'model.layer_norm1.bias': (width * action_dim,),
            'model.fc1.weight': (width, width * action_dim), 'model.fc1.bias': (width,),
            'model.layer_norm2.weight': (width,), 'model.layer_norm2.bias': (width,),
            'model.fc2.weight': (action_dim, width), 'model.fc2.bias': (action_dim,)}
    for i in range(blocks):
        head.update({f'model.mlp_resnet_blocks.{i}.ffn.0.weight': (width,),
                     f'model.mlp_resnet_blocks.{i}.ffn.0.bias': (width,),
                     f'model.mlp_resnet_blocks.{i}.ffn.1.weight': (width, width),
                     f'model.mlp_resnet_blocks.{i}.ffn.1.bias': (width,)})
    projector = {'fc1.weight': (width, proprio_dim), 'fc1.bias': (width,),
                 'fc2.weight': (width, width), 'fc2.bias': (width,)}
    return head, projector


@pytest.mark.parametrize('platform', ['libero', 'aloha'])
def test_oft_7b_heads_load_every_released_tensor_name(platform, model, released):
    from vla_ros.policy.oft.configuration import OFTConstants
    from vla_ros.policy.oft.modeling import L1RegressionHead, load_into, ProprioProjector

    constants = OFTConstants.for_platform(platform)
    width = model.llama_config.hidden_size
    assert width == 4096
    head_shapes, projector_shapes = oft_head_shapes(constants.action_dim, constants.proprio_dim)
    with torch.device('meta'):
        head = L1RegressionHead(width, constants.action_dim, constants.chunk_len)
        projector = ProprioProjector(width, constants.proprio_dim)
    for module, shapes in ((head, head_shapes), (projector, projector_shapes)):
        state = {f'module.{name}': torch.empty(shape, device='meta')
                 for name, shape in shapes.items()}  # as OFT saves them: DDP's prefix
        state = {k[len('module.'):]: v for k, v in state.items()}
        load_into(module, state, f'{platform} (meta)', constants, width)
        assert {n: tuple(t.shape) for n, t in module.state_dict().items()} == shapes
    # The backbone is openvla-7b's, unchanged (LoRA is merged into the same keys).
    assert len(model.state_dict()) == released['num_tensors']
