"""
OpenVLA-OFT's two extra modules and how its checkpoints store them.

``L1RegressionHead`` (OFT's ``L1RegressionActionHead`` around ``MLPResNet``) maps the K action
hidden states to a chunk of normalised actions; ``ProprioProjector`` maps the normalised state to
one LLM token. Submodule names equal OFT's state-dict keys (``model.fc1.weight``...), so its files
load with no renaming.

OFT saves each module with ``torch.save(ddp_module.state_dict(), f'{name}--{step}_checkpoint.pt')``
(keys prefixed ``module.``; ``--latest_checkpoint.pt`` when only the latest was kept).
``load_component`` reads exactly that: the single file whose name contains the component and
``checkpoint``, with ``torch.load(weights_only=True)`` (tensors only: any other pickle is
refused), the ``module.`` prefix stripped.
"""

from pathlib import Path

import torch
from torch import nn

from vla_ros.policy.errors import CheckpointError, ConfigError

ACTION_HEAD = 'action_head'
PROPRIO_PROJECTOR = 'proprio_projector'
# Files of OFT variants this package does not run: the message says so instead of failing later.
UNSUPPORTED = {'vision_backbone': 'FiLM (use_film=True: a FiLM-ed vision backbone)',
               'noisy_action_projector': 'the diffusion action head (DDIM)'}


class MLPResNetBlock(nn.Module):
    """x + ReLU(Linear(LayerNorm(x)))."""

    def __init__(self, dim):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x):
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    """LayerNorm -> fc1 -> ReLU -> blocks -> LayerNorm -> fc2 (OFT's action MLP)."""

    def __init__(self, num_blocks, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden_dim)
                                               for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x):  # (B, chunk, A * D)
        x = self.relu(self.fc1(self.layer_norm1(x)))  # (B, chunk, D)
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))  # (B, chunk, A)


class L1RegressionHead(nn.Module):
    """The K action hidden states (1, K, D) -> normalised actions (1, chunk, A)."""

    def __init__(self, llm_dim, action_dim, chunk_len, num_blocks=2):
        super().__init__()
        self.action_dim, self.chunk_len = action_dim, chunk_len
        self.model = MLPResNet(num_blocks, llm_dim * action_dim, llm_dim, action_dim)

    def forward(self, hidden):  # (1, K, D)
        # Row-major: chunk step i concatenates the hidden states of slots i*A .. i*A + A - 1.
        return self.model(hidden.reshape(hidden.shape[0], self.chunk_len, -1))  # (1, chunk, A)


class ProprioProjector(nn.Module):
    """Normalised state (1, P) -> one LLM token (1, D): fc2(GELU(fc1(x))), exact GELU."""

    def __init__(self, llm_dim, proprio_dim):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, proprio):  # (1, P)
        return self.fc2(self.act_fn1(self.fc1(proprio)))  # (1, D)


def find_component(folder, name):
    """Return the single ``*{name}*checkpoint*.pt`` in ``folder``, None if there is none."""
    found = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and name in p.name and 'checkpoint' in p.name)
    if len(found) > 1:
        raise CheckpointError(f'{folder} holds {len(found)} {name} checkpoints '
                              f'({", ".join(p.name for p in found)}); keep the one of the step '
                              'you want (OFT loads exactly one).')
    return found[0] if found else None


def refuse_unsupported(folder):
    """Raise ``ConfigError`` when ``folder`` holds the files of an OFT variant not supported."""
    for name, what in UNSUPPORTED.items():
        if find_component(folder, name) is not None:
            raise ConfigError(f'{folder} is a checkpoint with {what} ({name}--*checkpoint.pt): '
                              'not supported here; use an OFT checkpoint with the L1 regression '
                              'or the discrete action head.')


def load_component(path):
    """
    Read an OFT component state dict: plain tensors only, ``module.`` prefixes stripped.

    Any pickle that is not a dict of tensors is refused (``weights_only`` allows nothing else).
    """
    if Path(path).stat().st_size == 0:
        raise CheckpointError(f'{path} is empty (0 bytes): the copy did not finish or the disk '
                              'was full; copy the file again from the fine-tuning run.')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: B902 - cut or corrupt bytes make torch's unpickler raise
        # anything: UnpicklingError, EOFError (with no text), IndexError, struct.error...
        first_line = (str(err).splitlines() or [''])[0][:200]
        raise CheckpointError(f'{path} is refused: it is not a plain tensor state dict that '
                              f'torch.load(weights_only=True) can read ({type(err).__name__}: '
                              f'{first_line}); re-save it with '
                              'torch.save(module.state_dict(), path).') from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f'{path} is refused: it holds {type(state).__name__}, not a dict '
                              'of tensors (a state dict); re-save it with '
                              'torch.save(module.state_dict(), path).')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


def implied_constants(head_state, projector_state, llm_dim):
    """Return {constant: value} the head and projector weights imply (for error messages)."""
    implied = {}
    fc2 = head_state.get('model.fc2.weight') if head_state else None
    if fc2 is not None and fc2.ndim == 2:
        implied['action_dim'] = int(fc2.shape[0])
    norm = head_state.get('model.layer_norm1.weight') if head_state else None
    if norm is not None and norm.ndim == 1 and llm_dim:
        implied['action_dim x llm_dim'] = int(norm.shape[0])
    fc1 = projector_state.get('fc1.weight') if projector_state else None
    if fc1 is not None and fc1.ndim == 2:
        implied['proprio_dim'] = int(fc1.shape[1])
    return implied


def load_into(module, state, path, constants, llm_dim):
    """Load ``state`` into ``module`` strictly; shape errors name the constant that disagrees."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f'{path}: missing tensors {missing[:6]}, unexpected tensors '
                              f'{unexpected[:6]}; this is not an OFT L1-regression head / proprio '
                              'projector file (FiLM and diffusion heads are not supported).')
    wrong = [(k, list(state[k].shape), list(v.shape)) for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        name, got, want = wrong[0]
        implied = implied_constants(state if 'model.fc2.weight' in state else {},
                                    state if 'fc1.weight' in state else {}, llm_dim)
        raise CheckpointError(
            f'{path}: {name} has shape {got}, expected {want} for platform '
            f'{constants.platform!r} (chunk_len {constants.chunk_len}, action_dim '
            f'{constants.action_dim}, proprio_dim {constants.proprio_dim}, LLM width {llm_dim}). '
            f'The weights imply {implied}: pick the platform the checkpoint was trained for, or '
            'override that constant.')
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return module
