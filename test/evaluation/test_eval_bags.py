"""vla_eval on bags in both storage formats and both image transports: it predicts as predict."""

import functools
import json
import subprocess
import sys

from bag_helpers import frames, HEIGHT, read_topic, ros_time, T0_NS, WIDTH, write_bag
from conftest import REPO
import cv2
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from rosbags.highlevel import AnyReader

from vla_ros.control import action_layout
from vla_ros.evaluation import cli
from vla_ros.evaluation.evaluate import EvalOptions, evaluate_bag
from vla_ros.nodes import messages
from vla_ros.policy import OpenVLAPolicy
from vla_ros.recordings.bags import typestore
from vla_ros.sim.scenes import scene

UNNORM_KEY = 'synth_bridge'
MS = 1_000_000
FIRST, SECOND = 'pick up the red cup', 'open the top drawer'
# Camera at 10 Hz, steps at 5 Hz: step k uses frame 2k; the instruction changes at 0.3 s.
IMAGES = frames(7, 100 * MS)
INSTRUCTIONS = [(T0_NS - MS, FIRST), (T0_NS + 300 * MS, SECOND)]
STEPS = [(0, FIRST), (2, FIRST), (4, SECOND), (6, SECOND)]  # (frame, instruction) per step


@pytest.fixture(scope='module')
def policy(tiny_checkpoint):
    return OpenVLAPolicy.from_pretrained(tiny_checkpoint, device='cpu', dtype='float32')


@pytest.fixture(scope='module')
def expected(policy):
    """``predict`` on the frames the camera sent (lossless frames are shared between cases)."""
    @functools.lru_cache(maxsize=None)
    def predict(index, text, jpeg):
        return policy.predict(camera_frame(index, 'jpeg' if jpeg else None), text,
                              unnorm_key=UNNORM_KEY)
    return predict


def camera_frame(index, fmt=None):
    """Return the RGB frame the camera sent, decoded independently of vla_ros for jpeg."""
    rgb = scene(index, WIDTH, HEIGHT)
    if fmt != 'jpeg':
        return rgb  # raw rgb8/bgr8 and png are lossless
    data = np.frombuffer(messages.rgb_to_compressed(rgb, 'jpeg').data, np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize('storage, transport, encoding, fmt', [
    ('sqlite3', 'raw', 'rgb8', None),
    ('sqlite3', 'compressed', 'rgb8', 'jpeg'),
    ('mcap', 'raw', 'bgr8', None),
    ('mcap', 'compressed', 'rgb8', 'png'),
])
def test_predictions_equal_predict(policy, expected, tmp_path, storage, transport, encoding,
                                   fmt):
    bag = write_bag(tmp_path / 'run', storage, images=IMAGES, transport=transport,
                    encoding=encoding, fmt=fmt or 'jpeg', instructions=INSTRUCTIONS)
    assert list(bag.glob('*.db3' if storage == 'sqlite3' else '*.mcap'))
    options = EvalOptions(compressed=transport == 'compressed', reference='none')
    result = evaluate_bag(bag, policy, UNNORM_KEY, options, progress=False)
    assert result.storage == storage
    assert result.status == ['ready'] * len(STEPS)
    assert result.instruction == [text for _, text in STEPS]
    for k, (index, text) in enumerate(STEPS):
        action = expected(index, text, fmt == 'jpeg')
        np.testing.assert_array_equal(result.predicted[k], action.values)
        np.testing.assert_array_equal(result.token_ids[k], action.token_ids)
        assert result.valid[k] == action.valid
        assert result.image_stamp_ns[k] == IMAGES[index][2]


def test_command_line_outputs_and_predictions_bag(expected, tiny_checkpoint, tmp_path,
                                                  capsys):
    """Regression against a recorded run of the same checkpoint: zero error, every output."""
    predicted = [expected(i, text, True) for i, text in STEPS]
    recorded = [(IMAGES[i][0] + 30 * MS, a.values) for (i, _), a in zip(STEPS, predicted)]
    bag = write_bag(tmp_path / 'recorded run', 'mcap', images=IMAGES, transport='compressed',
                    instructions=INSTRUCTIONS, actions=recorded)
    out = tmp_path / 'out'
    status = cli.main([str(bag), '--model', tiny_checkpoint, '--unnorm-key', UNNORM_KEY,
                       '--compressed', '--instruction-topic', 'vla/instruction', '--reference',
                       'action', '--rate', '5', '--out', str(out), '--write-bag',
                       '--action-frame', 'arm_base'])
    assert status == 0
    assert 'wrote' in capsys.readouterr().out
    data = json.loads((out / 'metrics.json').read_text())
    assert set(data) == {'bags', 'overall', 'config'}
    entry = data['bags']['recorded run']
    assert entry['storage'] == 'mcap'
    assert entry['counts']['steps'] == entry['counts']['predicted'] == len(STEPS)
    valid = sum(a.valid for a in predicted)
    m = data['overall']['metrics']
    assert m['steps_compared'] == valid and m['invalid_actions'] == len(STEPS) - valid
    assert all(v == 0.0 for v in m['mae'].values()) and m['gripper_agreement'] == 1.0
    assert m['translation_cosine'] == pytest.approx(1.0)
    assert data['config']['unnorm_key'] == UNNORM_KEY
    assert (out / 'recorded run.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    summary = (out / 'summary.md').read_text()
    assert '| **overall** |' in summary and '![recorded run](recorded run.png)' in summary

    # --write-bag: exactly what vla_node publishes for the valid steps, in the input's storage.
    predictions = out / 'predictions_recorded run'
    assert list(predictions.glob('*.mcap'))
    deltas = read_topic(predictions, '/vla/ee_delta')
    actions = read_topic(predictions, '/vla/action')
    grippers = read_topic(predictions, '/vla/gripper')
    valid_steps = [(k, a) for k, a in enumerate(predicted) if a.valid]
    assert len(deltas) == len(actions) == len(grippers) == len(valid_steps)
    for (k, action), (log_ns, pose), (_, raw), (_, gripper) in zip(valid_steps, deltas, actions,
                                                                   grippers):
        image_stamp = IMAGES[STEPS[k][0]][2]
        assert log_ns == T0_NS + k * 200 * MS
        assert pose.header.stamp.sec * 10**9 + pose.header.stamp.nanosec == image_stamp
        assert pose.header.frame_id == 'arm_base'  # as vla_node's action_frame
        np.testing.assert_array_equal(raw.data, action.values)
        assert raw.layout.dim[0].label == action_layout.ACTION_LABEL
        np.testing.assert_allclose(messages.messages_to_action(pose, gripper),
                                   np.r_[action.values[:6], np.clip(action.values[6], 0, 1)],
                                   atol=1e-12)


def test_actions_logged_with_their_images_are_the_reference(
        policy, tiny_checkpoint, tmp_path, capsys):
    """A dataset converted to a bag: every action shares its image's log time (MCAP)."""
    images = frames(6, 200 * MS)  # on the 5 Hz step grid
    rng = np.random.default_rng(3)
    references = rng.uniform(-0.05, 0.05, (len(images), 7))
    references[:, 6] = rng.integers(0, 2, len(images))
    bag = write_bag(tmp_path / 'dataset', 'mcap', images=images, instructions=INSTRUCTIONS[:1],
                    actions=[(log_ns, ref) for (log_ns, _, _), ref in zip(images, references)])
    out = tmp_path / 'out'
    status = cli.main([str(bag), '--model', tiny_checkpoint, '--unnorm-key', UNNORM_KEY,
                       '--rate', '5', '--out', str(out)])
    assert status == 0, capsys.readouterr().err
    m = json.loads((out / 'metrics.json').read_text())['overall']['metrics']
    predicted = [policy.predict(camera_frame(i), FIRST, unnorm_key=UNNORM_KEY) for _, i, _ in
                 images]
    valid = [k for k, a in enumerate(predicted) if a.valid]
    assert valid and m['steps_compared'] == len(valid)  # every valid step has its reference
    errors = np.abs(np.array([predicted[k].values for k in valid]) - references[valid])
    for i, name in enumerate(action_layout.ACTION_LABEL.split()):
        assert m['mae'][name] == pytest.approx(errors[:, i].mean(), abs=1e-12), name


def test_nothing_compared_or_predicted_is_not_a_result(tiny_checkpoint, tmp_path, capsys):
    late = [(T0_NS + (2000 + k) * MS, np.zeros(7)) for k in range(4)]  # long after the images
    bag = write_bag(tmp_path / 'late', 'mcap', images=frames(4, 200 * MS),
                    instructions=INSTRUCTIONS[:1], actions=late)
    status = cli.main([str(bag), '--model', tiny_checkpoint, '--unnorm-key', UNNORM_KEY,
                       '--rate', '5', '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert status == 2
    assert 'vla_eval: error: no step could be compared with a reference: /vla/action has 4 ' \
        "message(s); a step's reference is the first one logged in [its image's log time, the " \
        "next step's time) that is not an earlier step's or logged with a newer image" in err
    assert 'check --action-topic and --rate' in err

    from rosbags.typesys.stores.ros2_jazzy import builtin_interfaces__msg__Time as Time
    ts = typestore()
    bad = [('/camera/image_raw', T0_NS + k * 200 * MS, ts.types['sensor_msgs/msg/Image'](
        header=ts.types['std_msgs/msg/Header'](stamp=Time(sec=(T0_NS + k * 200 * MS) // 10**9,
                                                          nanosec=k * 200 * MS),
                                               frame_id='camera'),
        height=4, width=4, encoding='bayer_rggb8', is_bigendian=0, step=4,
        data=np.zeros(16, np.uint8))) for k in range(3)]
    refused = write_bag(tmp_path / 'refused', 'mcap', instructions=INSTRUCTIONS[:1],
                        raw_messages=bad)
    out = tmp_path / 'out2'
    status = cli.main([str(refused), '--model', tiny_checkpoint, '--unnorm-key', UNNORM_KEY,
                       '--reference', 'none', '--out', str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert 'bag refused: the image of 3 of 3 steps was refused: /camera/image_raw: unknown ' \
        "image encoding 'bayer_rggb8'" in err
    assert 'vla_eval: error: nothing was predicted in 3 steps' in err and \
        '3 with a refused image' in err
    summary = (out / 'summary.md').read_text()
    assert '| refused images |' in summary and '| refused | 3 | 0 | 0 | 0 | 3 |' in summary


# vla_eval in a Python where some packages are missing, as on a machine that has them not: a
# meta-path finder refuses every module whose top-level name matches ``pattern``, as Python does
# for a package that is not installed. (A fresh venv with only the eval extra would be closer to
# a user's machine, but installs torch and transformers again: minutes and gigabytes per run.)
WITHOUT = """
import importlib.abc, re, sys
pattern, probe, *argv = sys.argv[1:]
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if re.fullmatch(pattern, name.partition('.')[0]):
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
sys.meta_path.insert(0, Missing())
try:
    __import__(probe)
    sys.exit(f'{probe} is importable: the block does not work')
except ModuleNotFoundError:
    pass
from vla_ros.evaluation.cli import main
sys.exit(main(argv))
"""
NO_ROS = (r'rclpy|rcl_.*|rmw.*|rosidl.*|rpyutils|ament_index_python|builtin_interfaces|.*_msgs'
          r'|.*_srvs')


def run_without(pattern, probe, *args):
    """Run vla_eval ``args`` in a process that cannot import ``pattern``; return it finished."""
    return subprocess.run([sys.executable, '-c', WITHOUT, pattern, probe, *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.process
def test_write_bag_needs_no_ros(expected, tiny_checkpoint, tmp_path):
    """--write-bag with the eval extra alone: the bag holds the live node's bytes, CDR for CDR."""
    bag = write_bag(tmp_path / 'run', 'mcap', images=IMAGES, instructions=INSTRUCTIONS)
    out = tmp_path / 'out'
    proc = run_without(NO_ROS, 'sensor_msgs', bag, '--model', tiny_checkpoint, '--unnorm-key',
                       UNNORM_KEY, '--reference', 'none', '--out', out, '--write-bag')
    assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr
    predicted = [expected(i, text, False) for i, text in STEPS]
    valid = [k for k, a in enumerate(predicted) if a.valid]
    assert valid, 'the miniature checkpoint gave no valid action to write'
    with AnyReader([out / 'predictions_run'], default_typestore=typestore()) as reader:
        written = {}
        for conn, log_ns, raw in reader.messages():
            written.setdefault(conn.topic, []).append((log_ns, bytes(raw)))
    assert {t: len(m) for t, m in written.items()} == {
        '/vla/action_chunk': len(STEPS), '/vla/ee_delta': len(valid), '/vla/gripper': len(valid),
        '/vla/action': len(valid)}
    for n, k in enumerate(valid):  # what vla_node publishes for the step, serialised by rclpy
        live = messages.action_to_messages(predicted[k].values, ros_time(IMAGES[STEPS[k][0]][2]),
                                           'base_link')
        for topic, msg in zip(('/vla/ee_delta', '/vla/gripper', '/vla/action'), live):
            assert written[topic][n] == (T0_NS + k * 200 * MS, canonical(msg)), topic
    for k, (log_ns, raw) in enumerate(written['/vla/action_chunk']):
        live = messages.chunk_to_multiarray(predicted[k].values[None])
        assert (log_ns, raw) == (T0_NS + k * 200 * MS, canonical(live))


def canonical(msg):
    """Return rclpy's CDR of ``msg`` with zero padding bytes (rclpy leaves them undefined)."""
    ts, msgtype = typestore(), f'{type(msg).__module__.split(".")[0]}/msg/{type(msg).__name__}'
    return bytes(ts.serialize_cdr(ts.deserialize_cdr(serialize_message(msg), msgtype), msgtype))


COUNT_OPENS = """
import json, sys
opened = []
def audit(event, args):  # every open() of a file, as the interpreter reports it
    if event == 'open' and isinstance(args[0], str) and args[0].endswith('.mcap'):
        opened.append(args[0])
sys.addaudithook(audit)
from vla_ros.evaluation.cli import main
status = main(sys.argv[1:])
print(json.dumps(opened))
sys.exit(status)
"""


@pytest.mark.process
def test_vla_eval_opens_each_bag_once(tiny_checkpoint, tmp_path):
    """Checked before the model loads, then evaluated: one open of each bag's storage file."""
    bags = [write_bag(tmp_path / name, 'mcap', images=IMAGES, instructions=INSTRUCTIONS)
            for name in ('first', 'second')]
    proc = subprocess.run(
        [sys.executable, '-c', COUNT_OPENS, *map(str, bags), '--model', tiny_checkpoint,
         '--unnorm-key', UNNORM_KEY, '--reference', 'none', '--out', str(tmp_path / 'out')],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    opened = json.loads(proc.stdout.strip().splitlines()[-1])
    files = [str(f) for bag in bags for f in bag.glob('*.mcap')]
    assert sorted(opened) == sorted(files), opened
