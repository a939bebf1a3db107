"""vla_eval on bad input: one clear line naming the problem and the fix, and exit status 2."""

import os
from pathlib import Path
import subprocess
import sys

from bag_helpers import frames, mcap_records, T0_NS, write_bag
from conftest import REPO
import pytest
from test_eval_bags import run_without

from vla_ros.evaluation import cli
from vla_ros.recordings.bags import typestore

MS = 1_000_000
INSTRUCTION = [(T0_NS, 'pick up the red cup')]


def good_bag(path, storage='sqlite3', **kwargs):
    kwargs.setdefault('instructions', INSTRUCTION)
    return write_bag(path, storage, images=frames(3, 200 * MS), **kwargs)


def run_eval(capsys, *args, model='unused-model-dir', out=None):
    """Run vla_eval in this process; return (exit status, stderr)."""
    argv = [*map(str, args), '--model', model, '--out', str(out or Path('/tmp/vla_eval_x'))]
    status = cli.main(argv)
    err = capsys.readouterr().err
    return status, err


def assert_error(status, err, *needles):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('vla_eval: error: '), err
    for needle in needles:
        assert needle in lines[0], f'{needle!r} not in {lines[0]!r}'


def test_missing_topic_lists_the_bags_topics(capsys, tmp_path):
    bag = good_bag(tmp_path / 'bag', image_topic='/front/image_raw')
    status, err = run_eval(capsys, bag, out=tmp_path / 'out')
    assert_error(status, err, 'image topic /camera/image_raw is not in bag',
                 '/front/image_raw (sensor_msgs/msg/Image, 3 msgs)',
                 '/vla/instruction (std_msgs/msg/String, 1 msgs)', '--image-topic')
    status, err = run_eval(capsys, bag, '--image-topic', 'front/image_raw', '--reference',
                           'action', out=tmp_path / 'out')
    assert_error(status, err, 'reference action topic /vla/action is not in bag',
                 '--reference ee_pose / none')


def test_wrong_transport_says_which_flag(capsys, tmp_path):
    bag = good_bag(tmp_path / 'bag', transport='compressed')
    status, err = run_eval(capsys, bag, '--image-topic', 'camera/image_raw/compressed',
                           out=tmp_path / 'out')
    assert_error(status, err, 'has type sensor_msgs/msg/CompressedImage', 'add --compressed')


def test_empty_bag_and_directory_without_bag(capsys, tmp_path):
    empty = write_bag(tmp_path / 'empty', 'mcap', empty_topics=[
        ('/camera/image_raw', 'sensor_msgs/msg/Image'),
        ('/vla/instruction', 'std_msgs/msg/String')])
    status, err = run_eval(capsys, empty, out=tmp_path / 'out')
    assert_error(status, err, 'is empty: it has no messages', '/camera/image_raw')
    folder = tmp_path / 'not_a_bag'
    folder.mkdir()
    (folder / 'notes.txt').write_text('x')
    status, err = run_eval(capsys, folder, out=tmp_path / 'out')
    assert_error(status, err, 'is not a rosbag2 directory: it has no metadata.yaml', 'notes.txt')
    status, err = run_eval(capsys, tmp_path / 'missing', out=tmp_path / 'out')
    assert_error(status, err, 'does not exist')


def test_unknown_message_type_on_the_image_topic(capsys, tmp_path):
    string = typestore().types['std_msgs/msg/String']
    bag = write_bag(tmp_path / 'bag', instructions=INSTRUCTION,
                    raw_messages=[('/camera/image_raw', T0_NS, string(data='not an image'))])
    status, err = run_eval(capsys, bag, out=tmp_path / 'out')
    assert_error(status, err, 'image topic /camera/image_raw', 'has type std_msgs/msg/String',
                 'expected sensor_msgs/msg/Image')


@pytest.mark.parametrize('storage, suffix', [('sqlite3', '.db3'), ('mcap', '.mcap')])
def test_truncated_bag_file(capsys, tmp_path, storage, suffix):
    bag = good_bag(tmp_path / 'bag', storage)
    (data,) = bag.glob('*' + suffix)
    with open(data, 'r+b') as f:
        f.truncate(os.path.getsize(data) // 2)
    status, err = run_eval(capsys, bag, out=tmp_path / 'out')
    assert_error(status, err, f'cannot read bag {str(bag)!r} ({storage})',
                 'truncated or corrupt')


def test_no_instruction_topic_and_no_instruction(capsys, tmp_path):
    bag = good_bag(tmp_path / 'bag', instructions=())
    status, err = run_eval(capsys, bag, '--reference', 'none', out=tmp_path / 'out')
    assert_error(status, err, 'has no instruction: topic /vla/instruction is not in it',
                 '--instruction TEXT')


def test_unwritable_output_directory(capsys, tmp_path):
    bag = good_bag(tmp_path / 'bag')
    blocker = tmp_path / 'file'
    blocker.write_text('a regular file, so nothing can be created under it (even by root)')
    status, err = run_eval(capsys, bag, '--reference', 'none', out=blocker / 'out')
    assert_error(status, err, 'cannot write to output directory', str(blocker / 'out'),
                 '--out')


def test_unknown_unnorm_key_lists_the_valid_ones(capsys, tmp_path, tiny_checkpoint):
    bag = good_bag(tmp_path / 'bag')
    status, err = run_eval(capsys, bag, '--reference', 'none', '--unnorm-key', 'bridge_orig',
                           model=tiny_checkpoint, out=tmp_path / 'out')
    assert_error(status, err, "unnorm_key='bridge_orig'", 'synth_bridge, synth_kitchen')


@pytest.mark.process
def test_exit_status_and_message_from_the_command(tmp_path):
    """As a user runs it: a separate process, status 2, one line on stderr, no traceback."""
    bag = good_bag(tmp_path / 'bag', image_topic='/front/image_raw')
    proc = subprocess.run(
        [sys.executable, '-m', 'vla_ros.evaluation.cli', str(bag), '--model', 'm', '--out',
         str(tmp_path / 'out')], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith('vla_eval: error: image topic /camera/image_raw is not in ')
    assert 'Traceback' not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    usage = subprocess.run([sys.executable, '-m', 'vla_ros.evaluation.cli', str(bag)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and 'the following arguments are required: --model' in \
        usage.stderr


def test_rate_beyond_any_camera_or_bag_is_refused_with_the_figures(capsys, tmp_path):
    bag = good_bag(tmp_path / 'bag')
    status, err = run_eval(capsys, bag, '--rate', '1e9', out=tmp_path / 'out')
    assert_error(status, err, '--rate 1e+09 Hz', 'must be in (0, 1000] Hz', '--rate 5')
    # Within the rate limit, but a bag of 300 s at 1000 Hz is too many steps to be meant.
    long = write_bag(tmp_path / 'long', images=[(T0_NS, 0, T0_NS),
                                                (T0_NS + 300 * 10**9, 1, T0_NS + 300 * 10**9)],
                     instructions=INSTRUCTION)
    status, err = run_eval(capsys, long, '--rate', '1000', out=tmp_path / 'out')
    assert_error(status, err, 'spans 300.000 s of log time', 'at --rate 1000 Hz that is 3e+05 '
                 'steps, more than the 200000', 'e.g. --rate 5')


def test_damaged_metadata_yaml_is_one_line(capsys, tmp_path):
    bag = good_bag(tmp_path / 'bag')
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: [unclosed\n  version: {')
    status, err = run_eval(capsys, bag, '--reference', 'none', out=tmp_path / 'out')
    assert_error(status, err, 'its metadata.yaml is damaged', 'ros2 bag reindex')


@pytest.mark.process
def test_what_the_outputs_need_is_checked_before_the_run(capsys, tmp_path):
    """A predictions path taken by something else, or no matplotlib: refused before the model."""
    bag = good_bag(tmp_path / 'bag')
    out = tmp_path / 'out'
    (out / 'predictions_bag').mkdir(parents=True)
    (out / 'predictions_bag' / 'notes.txt').write_text('mine')
    # The model does not exist: reaching it would be a different error.
    status, err = run_eval(capsys, bag, '--reference', 'none', '--write-bag', out=out)
    assert_error(status, err, f"{str(out / 'predictions_bag')!r} exists and is not a bag")
    assert (out / 'predictions_bag' / 'notes.txt').read_text() == 'mine'
    proc = run_without('matplotlib', 'matplotlib', bag, '--reference', 'none', '--model',
                       'unused-model-dir', '--out', tmp_path / 'out2')
    assert_error(proc.returncode, proc.stderr, 'the plots need matplotlib',
                 "pip install 'vla_ros[eval]'")


@pytest.mark.process
@pytest.mark.parametrize('where', ['header', 'message'])
def test_a_damaged_mcap_bag_is_one_line_from_the_command(where, tmp_path, tiny_checkpoint):
    """As a user runs it: the header is read before the model loads, a message after."""
    bag = good_bag(tmp_path / 'bag', 'mcap')
    (file,) = bag.glob('*.mcap')
    data = file.read_bytes()
    at = max(at for opcode, at in mcap_records(data) if opcode == 0x05) if where == 'message' \
        else 8
    file.write_bytes(data[:at + 1] + b'\xff' * 8 + data[at + 9:])  # a length of 2**64 - 1
    proc = subprocess.run(
        [sys.executable, '-m', 'vla_ros.evaluation.cli', str(bag), '--model', tiny_checkpoint,
         '--unnorm-key', 'synth_bridge', '--reference', 'none', '--out', str(tmp_path / 'out')],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert_error(proc.returncode, proc.stderr, f'cannot read bag {str(bag)!r} (mcap): ',
                 'truncated or corrupt')
