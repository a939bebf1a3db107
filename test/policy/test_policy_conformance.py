"""
Conformance of ``OpenVLAPolicy`` with the golden vectors of the reference OpenVLA code.

Every case of ``conformance/openvla_tiny`` on CPU float32: tokenizer ids, the bicubic resize,
pixel values, tower patches, projector output, LLM input embeddings, first-step logits,
generated ids, actions (exact in float64) and ``valid``.
"""

import numpy as np
from PIL import Image
from policy_helpers import read_json
import pytest
from vla_ros.policy import OpenVLAPolicy
from vla_ros.policy.actions import action_token_range, ActionStats, bin_centers, decode_tokens
from vla_ros.policy.backbone.processing import build_prompt, SPACE_TOKEN_ID

CASES = [f'c{i:02d}' for i in range(9)]
RELATIVE = ('featurizer_patches', 'fused_featurizer_patches', 'projector_out',
            'llm_inputs_embeds')


pytestmark = pytest.mark.usefixtures('torch_one_thread')


@pytest.fixture(scope='module')
def policy(conformance_root):
    return OpenVLAPolicy.from_pretrained(conformance_root / 'checkpoints' / 'tiny', device='cpu',
                                         dtype='float32')


@pytest.fixture(scope='module')
def run(policy, conformance_root):
    """Per case: (case.json, golden result.json, intermediates, Action), computed once."""
    cache = {}

    def get(case):
        if case not in cache:
            spec = read_json(conformance_root / 'cases' / case / 'case.json')
            golden = read_json(conformance_root / 'golden' / 'tiny' / case / 'result.json')
            image = Image.open(conformance_root / 'cases' / case / spec['image_file'])
            image.load()
            inter = policy.intermediates(image, spec['prompt'])
            action = policy.predict_prompt(image, spec['prompt'], spec['unnorm_key'])
            cache[case] = spec, golden, image, inter, action
        return cache[case]
    return get


def test_cases_present(conformance_root):
    assert sorted(p.name for p in (conformance_root / 'cases').iterdir()) == CASES


def test_tokenizer_golden_strings(policy, conformance_root):
    golden = read_json(conformance_root / 'tokenizer_golden.json')
    assert len(golden['cases']) == 25
    for entry in golden['cases']:
        assert policy.tokenizer.encode(entry['text']) == entry['input_ids'], entry['text']


def test_bin_centers_exact(conformance_root):
    assert np.array_equal(bin_centers(), np.load(conformance_root / 'action_bin_centers.npy'))


@pytest.mark.parametrize('case', CASES)
def test_tokenizer_ids(case, run, policy):
    spec, golden, _, inter, _ = run(case)
    if case != 'c07':  # c07 passes c02's prompt + ' ', not a prompt built from an instruction
        assert build_prompt(spec['instruction']) == spec['prompt']
    assert policy.tokenizer.encode(spec['prompt']) == spec['input_ids']
    assert inter['input_ids'].tolist() == golden['generate_input_ids']
    assert golden['generate_input_ids'][-1] == SPACE_TOKEN_ID
    assert golden['appended_29871'] == (spec['input_ids'][-1] != SPACE_TOKEN_ID)


@pytest.mark.parametrize('case', CASES)
def test_resize_exact(case, run, policy, conformance_root):
    _, _, image, _, _ = run(case)
    resized = np.asarray(policy.image_processor.resize(image))
    golden = Image.open(conformance_root / 'cases' / case / 'resized_224.png').convert('RGB')
    golden = np.asarray(golden)
    assert resized.shape == (224, 224, 3)
    assert np.array_equal(resized, golden)


@pytest.mark.parametrize('case', CASES)
def test_pixel_values(case, run, conformance_root):
    _, _, _, inter, _ = run(case)
    golden = np.load(conformance_root / 'cases' / case / 'pixel_values.npy')
    assert inter['pixel_values'].shape == golden.shape == (1, 6, 224, 224)
    assert np.abs(inter['pixel_values'] - golden).max() <= 1e-6


@pytest.mark.parametrize('case', CASES)
def test_intermediates(case, run, conformance_root):
    _, _, _, inter, _ = run(case)
    for name in RELATIVE:
        golden = np.load(conformance_root / 'golden' / 'tiny' / case / f'{name}.npy')
        assert inter[name].shape == golden.shape, name
        relative = np.abs(inter[name] - golden).max() / np.abs(golden).max()
        assert relative <= 1e-4, (name, relative)
    golden = np.load(conformance_root / 'golden' / 'tiny' / case / 'first_step_logits.npy')
    assert inter['first_step_logits'].shape == golden.shape == (32064,)
    assert np.abs(inter['first_step_logits'] - golden).max() <= 1e-4


@pytest.mark.parametrize('case', CASES)
def test_generation_and_actions(case, run, conformance_root):
    _, golden, _, _, action = run(case)
    gdir = conformance_root / 'golden' / 'tiny' / case
    assert list(action.generated_ids) == golden['generated_ids']
    assert action.token_ids.tolist() == golden['action_token_ids_used']
    assert action.values.dtype == np.float64
    assert np.array_equal(action.values, np.load(gdir / 'actions.npy'))
    assert np.array_equal(action.normalized, np.load(gdir / 'normalized_actions.npy'))
    low, high = action_token_range()
    expected_valid = (not golden['hit_eos']
                      and all(low <= t <= high for t in golden['action_token_ids_used']))
    assert action.valid == expected_valid
    assert action.valid or action.reason


def test_eos_case_is_invalid(run):
    _, golden, _, _, action = run('c08')
    assert golden['hit_eos'] and golden['num_generated'] < 7
    assert action.valid is False
    assert 'EOS' in action.reason
    assert action.generated_ids[-1] == 2


def test_c07_equals_c02(run):
    *_, inter02, action02 = run('c02')
    *_, inter07, action07 = run('c07')
    assert np.array_equal(inter02['input_ids'], inter07['input_ids'])
    assert np.array_equal(action02.values, action07.values)
    assert action02.generated_ids == action07.generated_ids


@pytest.mark.parametrize('case', ['c00', 'c01', 'c08'])
def test_predict_from_instruction(case, run, policy):
    spec, _, image, _, action = run(case)
    again = policy.predict(image, spec['instruction'], unnorm_key=spec['unnorm_key'])
    assert again.generated_ids == action.generated_ids
    assert np.array_equal(again.values, action.values)
    assert set(policy.last_timing) >= {'preprocess', 'vision', 'prefill', 'decode', 'total'}


def test_decode_edges():
    stats = ActionStats.from_norm_stats({'q01': [-1.0] * 4, 'q99': [1.0] * 4})
    normalized, values, valid = decode_tokens([31999, 31745, 31744, 2], stats)
    top = bin_centers()[254]
    assert np.array_equal(normalized, [-top, top, top, top])
    assert np.array_equal(values, normalized)  # q01 -1, q99 1: the identity
    assert not valid
    normalized, _, valid = decode_tokens([32000, 32063, 31744, 31999], stats)
    assert np.array_equal(normalized, [-top, -top, top, -top]) and not valid
    assert decode_tokens([31744, 31800, 31900, 31999], stats)[2]
