"""
openpi's own client (PyPI openpi-client 0.1.2) against vla_serve's server, in its own venv.

It gets the chunk ``predict`` gives, with and without an API key; a wrong key is refused. It
pins numpy < 2, so it lives in .venv-openpi, made by ``make openpi-client-venv`` when missing
(about 15 s, once).
"""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from test_serve import expected, observation, oft, start  # noqa: F401 - fixtures

pytestmark = pytest.mark.process  # the reference client runs in its own interpreter

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / '.venv-openpi' / 'bin' / 'python'
CLIENT = """
import json, sys
import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy

port, key, obs_file, out_file = sys.argv[1], sys.argv[2] or None, sys.argv[3], sys.argv[4]
try:
    client = WebsocketClientPolicy('127.0.0.1', int(port), api_key=key)
except Exception as exc:  # websockets' InvalidStatus: the handshake was refused
    print(json.dumps({'refused': str(exc)}))
    sys.exit(0)
with np.load(obs_file) as saved:
    obs = {k.replace('|', '/'): saved[k] for k in saved.files}
obs['prompt'] = str(obs['prompt'])
reply = client.infer(obs)
np.save(out_file, reply['actions'])
print(json.dumps({'metadata': client.get_server_metadata(), 'numpy': np.__version__,
                  'timing': reply['server_timing']}, default=str))
"""


@pytest.fixture(scope='module')
def openpi_python():
    """Return the Python of .venv-openpi, made with ``make openpi-client-venv`` if missing."""
    if not (VENV_PYTHON.parent.parent / '.installed').is_file():
        done = subprocess.run(['make', '-C', str(REPO), 'openpi-client-venv',
                               f'PYTHON={sys.executable}'], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    return VENV_PYTHON


def run_client(python, tmp_path, port, key, obs):
    """Run the reference client once; return (its JSON line, the actions or None)."""
    np.savez(tmp_path / 'obs.npz', **{k.replace('/', '|'): v for k, v in obs.items()})
    (tmp_path / 'client.py').write_text(CLIENT)
    out = tmp_path / 'actions.npy'
    out.unlink(missing_ok=True)
    done = subprocess.run([str(python), str(tmp_path / 'client.py'), str(port), key or '',
                           str(tmp_path / 'obs.npz'), str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    actions = np.load(out) if out.exists() else None
    return json.loads(done.stdout.strip().splitlines()[-1]), actions


def test_openpi_client_gets_predicts_chunk(openpi_python, tmp_path, oft,  # noqa: F811
                                           observation):  # noqa: F811
    want = expected(oft, observation)
    for key in (None, 's3cret'):
        running = start(oft, api_key=key)
        try:
            said, actions = run_client(openpi_python, tmp_path, running.port, key, observation)
            assert said['numpy'].startswith('1.'), said  # the client's own environment
            assert said['metadata']['camera_keys'] == ['observation/image',
                                                       'observation/wrist_image']
            assert 'infer_ms' in said['timing']
            np.testing.assert_array_equal(actions, want)
            if key:
                said, actions = run_client(openpi_python, tmp_path, running.port, 'wrong',
                                           observation)
                assert actions is None and '401' in said['refused'], said
        finally:
            running.close()
