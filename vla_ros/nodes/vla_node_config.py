"""
vla_node's parameters (config/vla.yaml holds the defaults) and the checks that need the policy.

``PARAMS`` declares every parameter once, with its type, default, description and allowed
values; ``layout_problems`` checks the camera topics, the ``proprio`` entries and the
``action_joints`` (resolving an empty list to the platform's preset) before the model loads;
``policy_problems`` words what only the loaded policy can tell (``vla_ros.policy.base.mismatches``,
the check vla_eval shares): the number of cameras against its images, the state layout against
its proprio dimension, its action dimension against the end-effector delta convention or the
joint list.
"""

from vla_ros.control.action_layout import ACTION_DIM, ACTION_SPACES
from vla_ros.control.chunks import MODES
from vla_ros.control.core import repeated_cameras
from vla_ros.control.joints import JointError, parse_action_joints, PRESETS
from vla_ros.control.state import StateLayout
from vla_ros.nodes.params import NodeParam

POLICIES = ('openvla', 'openvla_oft', 'remote')
REMOTE_PRESETS = ('vla_serve', 'openpi_libero', 'openpi_droid')
MODEL_PATH_PROBLEM = ("parameter 'model_path' is ''; allowed: a local checkpoint directory; it is "
                      'required: -p model_path:=/models/openvla-7b')
PARAMS = (
    NodeParam('model_path', '', 'Local directory of an HF-format OpenVLA checkpoint (unused '
              'with policy remote).'),
    NodeParam('unnorm_key', '', 'Dataset statistics to unnormalise with; empty only when the '
              'checkpoint has exactly one.'),
    NodeParam('device', 'auto', "'auto' (first CUDA device, else CPU), 'cpu', 'cuda', 'cuda:N'."),
    NodeParam('dtype', 'auto', "'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', "
              "'bfloat16', 'float16'."),
    NodeParam('quantization', '', 'Weight quantization (bitsandbytes, CUDA only).',
              check=lambda v: v in ('', '8bit', '4bit'), allowed="'', '8bit' or '4bit'"),
    NodeParam('control_rate_hz', 5.0, 'Fixed rate of the control loop, Hz.',
              check=lambda v: v > 0, allowed='a finite number > 0, e.g. 5.0'),
    NodeParam('max_image_age', 0.5, 'Seconds; an older newest image means no action this tick.',
              check=lambda v: v > 0, allowed='a number of seconds > 0', runtime=True),
    NodeParam('image_transport', 'raw', 'sensor_msgs/Image or CompressedImage input.',
              check=lambda v: v in ('raw', 'compressed'), allowed="'raw' or 'compressed'"),
    NodeParam('center_crop', False, 'Center crop (0.9 area) used by fine-tunes trained with '
              'image augmentation (OpenVLA-OFT LIBERO and ALOHA checkpoints: true).'),
    NodeParam('action_frame', 'base_link', 'frame_id of the published deltas; with proprio, '
              'ee_pose must be in this frame.',
              check=lambda v: bool(v.strip('/')), allowed='a frame name, e.g. base_link'),
    NodeParam('gripper_open_is_one', True, 'Publish vla/gripper with 1 = open (OpenVLA); false '
              'publishes 1 - g.'),
    NodeParam('instruction', '', 'Current instruction; empty = idle.', runtime=True),
    NodeParam('autostart', True, 'Configure and activate at start, so plain ros2 run works.',
              runtime=True),
    NodeParam('policy', 'openvla', "'openvla', 'openvla_oft', 'remote' (a server of openpi's "
              "websocket protocol at server_uri), or 'module:callable' returning a policy "
              'object (custom policies and tests).',
              check=lambda v: v in POLICIES or (':' in v and all(v.split(':', 1))),
              allowed="'openvla', 'openvla_oft', 'remote' or 'package.module:callable'"),
    NodeParam('platform', 'libero', 'OpenVLA-OFT: the constants preset.',
              check=lambda v: v in ('libero', 'aloha', 'bridge'),
              allowed="'libero', 'aloha' or 'bridge'"),
    NodeParam('action_head', 'auto', 'OpenVLA-OFT: the action head.',
              check=lambda v: v in ('auto', 'l1', 'discrete'), allowed="'auto', 'l1' or "
              "'discrete'"),
    NodeParam('camera_topics', ['camera/image_raw'], 'One image topic per policy image, primary '
              "first; with image_transport 'compressed', /compressed is appended to each.",
              check=lambda v: len(v) > 0 and all(t.strip('/') for t in v),
              allowed='a non-empty list of topic names'),
    NodeParam('max_camera_skew', 0.05, 'Seconds the cameras of one observation may be stamped '
              'apart; a camera ahead of the others uses its previous frame when that one fits.',
              check=lambda v: v >= 0, allowed='a number of seconds >= 0'),
    NodeParam('proprio', [], "The state vector's layout: ee_position, ee_axis_angle, ee_rpy, "
              'ee_quaternion (from ee_pose), joint:NAME, gripper:NAME (0 closed .. 1 open) '
              "(from joint_states), aloha (ALOHA's 14 joints and grippers).", item=str),
    NodeParam('max_proprio_age', 0.2, 'Seconds; an older state means no action this tick.',
              check=lambda v: v > 0, allowed='a number of seconds > 0'),
    NodeParam('chunk_mode', 'open_loop', 'How chunks are executed: open_loop, receding, '
              'ensemble.', check=lambda v: v in MODES, allowed=', '.join(MODES)),
    NodeParam('execute_steps', 0, 'Actions of each chunk to execute; 0 = the whole chunk.',
              check=lambda v: v >= 0, allowed='an integer >= 0'),
    NodeParam('ensemble_decay', 0.01, 'ensemble: weight exp(-decay * j) of the j-th oldest '
              "chunk's prediction (ACT's k).", check=lambda v: v >= 0,
              allowed='a number >= 0'),
    NodeParam('action_space', 'ee_delta', "What the policy's actions are: 'ee_delta' "
              '(vla/ee_delta and vla/gripper) or joint_position (absolute joint targets on '
              'vla/joint_command and vla/joint_chunk).', check=lambda v: v in ACTION_SPACES,
              allowed="'ee_delta' or 'joint_position'"),
    NodeParam('action_joints', [], 'joint_position: the joint each action dimension commands, '
              'NAME or gripper:NAME (0 closed .. 1 open); empty = the platform preset (OFT '
              'aloha).', item=str),
    NodeParam('server_uri', 'ws://127.0.0.1:8000', 'policy remote: the policy server.',
              check=lambda v: v.startswith(('ws://', 'wss://')) and len(v) > 5,
              allowed='ws://HOST:PORT or wss://HOST:PORT, e.g. ws://gpu-box:8000'),
    NodeParam('remote_preset', 'vla_serve', 'policy remote: the observation and response keys: '
              "vla_serve (from the server's metadata), openpi_libero, openpi_droid (openpi's "
              'examples).', check=lambda v: v in REMOTE_PRESETS,
              allowed=', '.join(REMOTE_PRESETS)),
    NodeParam('remote_camera_keys', [], 'policy remote: one observation key per camera topic, '
              "in order; empty = the preset's.", item=str),
    NodeParam('remote_state_keys', [], 'policy remote: KEY:N entries taking the proprio vector '
              "in order, N values each; empty = the preset's.", item=str,
              check=lambda v: all(_state_key(e) for e in v),
              allowed='entries KEY:N with N >= 1, e.g. [observation/state:8]'),
    NodeParam('remote_prompt_key', '', "policy remote: the instruction's key; empty = the "
              "preset's (prompt)."),
    NodeParam('remote_response_key', '', "policy remote: the reply's actions key; empty = the "
              "preset's (actions)."),
    NodeParam('remote_chunk_len', 0, 'policy remote, openpi presets: rows each reply must have; '
              '0 = any.', check=lambda v: v >= 0, allowed='an integer >= 0'),
    NodeParam('request_timeout', 1.0, 'policy remote: seconds a request (connection included) '
              'may take; later = no action this time.', check=lambda v: v > 0,
              allowed='a number of seconds > 0'),
    NodeParam('api_key_file', '', 'policy remote: a file holding the API key; empty = none '
              '(the key itself is never a parameter).'),
    NodeParam('api_key_env', '', 'policy remote: an environment variable holding the API key; '
              'empty = none.'),
)
PARAM = {p.name: p for p in PARAMS}


def _state_key(entry):
    """Return ``(key, n)`` of a ``remote_state_keys`` entry, None when malformed."""
    key, _, n = entry.rpartition(':')
    return (key, int(n)) if key and n.isdigit() and int(n) >= 1 else None


def load(cfg, environ):
    """
    Return ``(policy, resolved unnorm key)`` for ``cfg``: a checkpoint, or a server (remote).

    Raises ``PolicyError`` (and ``OSError`` for a key file) with the problem and the fix.
    """
    from vla_ros.policy.loading import load_policy
    if cfg.policy != 'remote':
        return load_policy(cfg.model_path, cfg.policy, cfg.unnorm_key, cfg.device, cfg.dtype,
                           cfg.center_crop, cfg.quantization or None, cfg.platform,
                           cfg.action_head)
    from vla_ros.policy.errors import ConfigError
    from vla_ros.remote.policy import RemotePolicy
    key = None
    if cfg.api_key_file:
        with open(cfg.api_key_file, encoding='utf-8') as f:
            key = f.read().strip() or None
        if key is None:
            raise ConfigError(f"parameter 'api_key_file': {cfg.api_key_file} is empty")
    elif cfg.api_key_env:
        key = environ.get(cfg.api_key_env, '').strip() or None
        if key is None:
            raise ConfigError(f"parameter 'api_key_env': ${cfg.api_key_env} is not set or "
                              'empty; export the key in it')
    policy = RemotePolicy.connect(
        cfg.server_uri, cfg.remote_preset, api_key=key, timeout=cfg.request_timeout,
        action_dim=len(cfg.action_joints) if cfg.action_space == 'joint_position' else ACTION_DIM,
        chunk_len=cfg.remote_chunk_len, camera_keys=cfg.remote_camera_keys,
        state_keys=[_state_key(e) for e in cfg.remote_state_keys],
        prompt_key=cfg.remote_prompt_key, response_key=cfg.remote_response_key)
    try:
        return policy, policy.resolve_unnorm_key(cfg.unnorm_key or None)
    except ConfigError:
        policy.close()
        raise


def layout_problems(cfg, resolve):
    """
    Return the problems of the cameras and the ``proprio`` layout (before the policy loads).

    ``resolve`` is the node's ``resolve_topic_name``: a camera topic must be a valid name, and
    each camera listed once after resolving (``camera/image_raw`` is ``/camera/image_raw`` in the
    root namespace).
    """
    problems, topics = [], []
    if cfg.policy != 'remote' and not cfg.model_path:
        problems.append(MODEL_PATH_PROBLEM)
    for topic in cfg.camera_topics:
        try:
            topics.append(resolve(topic))
        except RuntimeError as exc:  # rclpy's RCLError: the name's fault, said by rcl
            reason = str(exc).split(', at ')[0]
            problems.append(f"parameter 'camera_topics': {topic!r} is not a topic name "
                            f'({reason}); e.g. camera/image_raw')
    repeated = repeated_cameras(topics)
    if repeated:
        problems.append(f"parameter 'camera_topics' {repeated}")
    try:
        StateLayout(cfg.proprio)
    except ValueError as exc:
        problems.append(f"parameter 'proprio': {exc}")
    cfg.action_joints, problem = action_joints(cfg)
    return problems + ([problem] if problem else [])


def action_joints(cfg):
    """
    Return ``(entries, problem)``: the ``action_joints`` of a joint-space node, checked.

    Empty means the preset of the policy's platform (OFT ``aloha``). The entries are kept
    verbatim (stripped): they are vla/joint_command's names. ``ee_delta`` has none.
    """
    entries = tuple(str(e).strip() for e in cfg.action_joints)
    if cfg.action_space != 'joint_position':
        if entries:
            return (), ("parameter 'action_joints' is set, but action_space is "
                        f'{cfg.action_space!r}; set action_space:=joint_position, or clear '
                        'action_joints')
        return (), ''
    preset = cfg.platform if cfg.policy == 'openvla_oft' else None
    if not entries:
        if preset not in PRESETS:
            where = f'platform {preset!r}' if preset else f'policy {cfg.policy!r}'
            return (), ("parameter 'action_joints' is empty and the "
                        f'{where} has no joint preset (presets: OpenVLA-OFT platform '
                        f"{', '.join(PRESETS)}); with action_space 'joint_position' name the "
                        'joint of each action dimension in order, e.g. action_joints:='
                        '[shoulder, elbow, wrist, gripper:finger]')
        entries = PRESETS[preset]
    try:
        parse_action_joints(entries)
    except JointError as exc:
        return (), f"parameter 'action_joints': {exc}"
    return entries, ''


def policy_problems(cfg, policy):
    """
    Return the problems of the configuration that only the loaded ``policy`` reveals.

    ``vla_ros.policy.base.mismatches`` finds them (as for vla_eval) and says the policy's side;
    here each gets the parameter's side and the fix.
    """
    # Here, not at the top: vla_ros.policy imports torch, which the parameter checks do without.
    from vla_ros.policy.base import mismatches
    problems = []
    joints = cfg.action_space == 'joint_position'
    for mismatch in mismatches(policy, len(cfg.camera_topics), StateLayout(cfg.proprio).dim,
                               len(cfg.action_joints) if joints else ACTION_DIM):
        if mismatch.kind == 'cameras':
            problems.append(f"parameter 'camera_topics' has {len(cfg.camera_topics)} topic(s) "
                            f'{list(cfg.camera_topics)}, but {mismatch.sentence}: list one '
                            'topic per image, the primary camera first')
        elif mismatch.kind == 'state':
            problems.append(f"parameter 'proprio' {list(cfg.proprio)} gives {mismatch.given} "
                            f'values, but {mismatch.sentence}; for a LIBERO-style arm: '
                            '[ee_position, ee_axis_angle, joint:<left finger>, joint:<right '
                            'finger>], for ALOHA: [aloha]')
        elif joints:
            problems.append(f"{mismatch.sentence}, but parameter 'action_joints' names "
                            f'{mismatch.given} joint(s) {list(cfg.action_joints)}; give one '
                            "entry per action dimension, in the policy's order (empty: the "
                            "platform's preset)")
        else:
            problems.append(f"{mismatch.sentence}; with action_space 'ee_delta' vla_node "
                            f'publishes end-effector deltas [{ACTION_DIM} values: dx dy dz '
                            'droll dpitch dyaw gripper] (LIBERO and Bridge platforms); for '
                            'joint positions (ALOHA) set action_space:=joint_position')
    return problems
