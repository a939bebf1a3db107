"""Loading OpenVLA-OFT checkpoints, and every bad input: one clear error each."""

import os
from pathlib import Path
import shutil

import numpy as np
import pytest
import torch

from vla_ros.policy import CheckpointError, ConfigError, InputError
from vla_ros.policy.oft.modeling import load_component
from vla_ros.policy.oft.policy import OpenVLAOFTPolicy

pytestmark = pytest.mark.usefixtures('torch_one_thread')
IMAGES = [np.full((224, 224, 3), 100, np.uint8), np.full((224, 224, 3), 200, np.uint8)]
STATE = np.zeros(8)
KEY = 'synth_libero_goal_nomask'


@pytest.fixture(scope='module')
def libero(oft_checkpoints):
    return OpenVLAOFTPolicy.from_pretrained(oft_checkpoints['libero'], device='cpu')


def copy(oft_checkpoints, tmp_path, platform='libero'):
    folder = tmp_path / platform
    shutil.copytree(oft_checkpoints[platform], folder)
    return folder


def test_auto_head_and_the_api(oft_checkpoints, tmp_path, libero):
    assert libero.head_kind == 'l1'
    assert (libero.chunk_len, libero.action_dim, libero.proprio_dim, libero.num_images) == \
        (8, 7, 8, 2)
    assert libero.unnorm_keys == ['synth_libero_goal_nomask', 'synth_libero_spatial_no_noops']
    chunk = libero.predict(IMAGES, 'pick up the bowl', proprio=STATE, unnorm_key=KEY)
    assert chunk.values.shape == (8, 7) and chunk.rows.shape == (8, 7) and chunk.valid
    assert set(chunk.timing) >= {'preprocess', 'total'}
    folder = copy(oft_checkpoints, tmp_path)
    for file in folder.glob('*--*_checkpoint.pt'):
        file.unlink()
    discrete = OpenVLAOFTPolicy.from_pretrained(folder, device='cpu')
    assert discrete.head_kind == 'discrete' and discrete.proprio_dim == 0
    chunk = discrete.predict(IMAGES, 'pick up the bowl', proprio=None, unnorm_key=KEY)
    assert chunk.values.shape == (8, 7) and chunk.token_ids.shape == (56,)


def test_latest_checkpoint_names_load(oft_checkpoints, tmp_path):
    folder = copy(oft_checkpoints, tmp_path)
    for file in folder.glob('*--50000_checkpoint.pt'):
        file.rename(folder / file.name.replace('50000_checkpoint', 'latest_checkpoint'))
    assert OpenVLAOFTPolicy.from_pretrained(folder, device='cpu').head_kind == 'l1'


def test_two_head_files_and_a_missing_head(oft_checkpoints, tmp_path):
    folder = copy(oft_checkpoints, tmp_path)
    shutil.copyfile(folder / 'action_head--50000_checkpoint.pt',
                    folder / 'action_head--60000_checkpoint.pt')
    with pytest.raises(CheckpointError, match='holds 2 action_head checkpoints .*50000.*60000'):
        OpenVLAOFTPolicy.from_pretrained(folder, device='cpu')
    for file in folder.glob('action_head--*'):
        file.unlink()
    with pytest.raises(CheckpointError, match="action_head='l1' but .* has no action_head--"):
        OpenVLAOFTPolicy.from_pretrained(folder, action_head='l1', device='cpu')


def test_head_shapes_that_disagree_with_the_platform(oft_checkpoints):
    with pytest.raises(CheckpointError, match=r'model\.layer_norm1\.weight has shape \[448\], '
                       r"expected \[896\] for platform 'aloha'.*'action_dim': 7"):
        OpenVLAOFTPolicy.from_pretrained(oft_checkpoints['libero'], platform='aloha',
                                         device='cpu')
    with pytest.raises(CheckpointError, match="'proprio_dim': 8"):
        OpenVLAOFTPolicy.from_pretrained(oft_checkpoints['libero'], proprio_dim=7, device='cpu')


def test_unsupported_variants_are_named(oft_checkpoints, tmp_path):
    with pytest.raises(ConfigError, match='FiLM .* is not supported'):
        OpenVLAOFTPolicy.from_pretrained(oft_checkpoints['libero'], use_film=True)
    with pytest.raises(ConfigError, match="action_head='diffusion': the diffusion head is not"):
        OpenVLAOFTPolicy.from_pretrained(oft_checkpoints['libero'], action_head='diffusion')
    with pytest.raises(ConfigError, match="platform='widowx' is not known; use one of libero"):
        OpenVLAOFTPolicy.from_pretrained(oft_checkpoints['libero'], platform='widowx')
    folder = copy(oft_checkpoints, tmp_path)
    torch.save({'x': torch.zeros(1)}, folder / 'noisy_action_projector--50000_checkpoint.pt')
    with pytest.raises(ConfigError, match='the diffusion action head .* not supported'):
        OpenVLAOFTPolicy.from_pretrained(folder, device='cpu')
    os.remove(folder / 'noisy_action_projector--50000_checkpoint.pt')
    torch.save({'x': torch.zeros(1)}, folder / 'vision_backbone--50000_checkpoint.pt')
    with pytest.raises(ConfigError, match='FiLM'):
        OpenVLAOFTPolicy.from_pretrained(folder, device='cpu')


class Payload:
    """A pickle that would run a command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ('echo pwned',))


@pytest.mark.parametrize('content, problem', [
    ({'module.model.fc1.weight': Payload()}, 'not a plain tensor state dict'),
    ({'module.model.fc1.weight': 3}, 'not a dict of tensors'),
    ([torch.zeros(1)], 'holds list, not a dict of tensors'),
])
def test_only_plain_tensor_state_dicts_are_read(oft_checkpoints, tmp_path, content, problem):
    folder = copy(oft_checkpoints, tmp_path)
    torch.save(content, folder / 'action_head--50000_checkpoint.pt')
    with pytest.raises(CheckpointError, match=problem):
        OpenVLAOFTPolicy.from_pretrained(folder, device='cpu')


@pytest.mark.parametrize('data, problem', [
    (b'', r'is empty \(0 bytes\): .* copy the file again'),
    (b'\x80\x02', r'is refused: .* \(EOFError: \); re-save it'),
    (b'\x80', r'is refused: .* \(IndexError: index out of range\)'),
], ids=['empty', 'cut-short', 'one-byte'])
def test_a_cut_or_empty_component_file_is_named(tmp_path, data, problem):
    path = tmp_path / 'action_head--50000_checkpoint.pt'
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=problem):
        load_component(path)


def test_bad_inputs_to_predict(libero):
    with pytest.raises(ConfigError, match="unnorm_key='bridge_orig' is not .* valid keys: "
                                          'synth_libero_goal_nomask, synth_libero_spatial'):
        libero.predict(IMAGES, 'pick', proprio=STATE, unnorm_key='bridge_orig')
    with pytest.raises(ConfigError, match='unnorm_key is required: this checkpoint has 2'):
        libero.predict(IMAGES, 'pick', proprio=STATE)
    with pytest.raises(InputError, match='proprio has 7 values; this checkpoint expects 8'):
        libero.predict(IMAGES, 'pick', proprio=np.zeros(7), unnorm_key=KEY)
    with pytest.raises(InputError, match=r'non-finite values at \[2\]'):
        libero.predict(IMAGES, 'pick', proprio=[0, 0, np.nan, 0, 0, 0, 0, 0], unnorm_key=KEY)
    with pytest.raises(InputError, match='has a proprio projector: pass proprio'):
        libero.predict(IMAGES, 'pick', unnorm_key=KEY)
    with pytest.raises(InputError, match='a list of 2 images .* got 1 image'):
        libero.predict(IMAGES[:1], 'pick', proprio=STATE, unnorm_key=KEY)
    with pytest.raises(InputError, match='a list of 2 images .* got no list'):
        libero.predict(IMAGES[0], 'pick', proprio=STATE, unnorm_key=KEY)
    with pytest.raises(InputError, match='image 1 must be .* uint8 numpy array'):
        libero.predict([IMAGES[0], IMAGES[1].astype(np.float32)], 'pick', proprio=STATE,
                       unnorm_key=KEY)
    with pytest.raises(InputError, match='instruction is empty'):
        libero.predict(IMAGES, '  ', proprio=STATE, unnorm_key=KEY)


def test_the_checkpoint_folder_must_exist():
    with pytest.raises(CheckpointError, match='does not exist'):
        OpenVLAOFTPolicy.from_pretrained(Path('/nonexistent/oft'))
