"""
vla_record_demos: a scripted expert's demonstrations in sim_arm, one rosbag2 (MCAP) per episode.

    vla_record_demos [--episodes 10] [--task reach|lift|transfer_cube] [--seed 0] [--seconds 10]
                     [--rate 10 (transfer_cube: 25)]
                     [--out out/demos] [--keep-failures] [--after-success 1.0]
                     [--start-spread 0.08] [--sim-param NAME:=VALUE ...]
                     [--policy-model PATH [--policy reach|openvla_oft] [--unnorm-key K]
                      [--takeover P]]

It starts ``sim_arm`` and ``arm_bridge`` as their own processes with ``config/vla.yaml`` (as
the demo does) and plays the expert (``vla_ros.sim.expert``) as a ROS participant in this
process, on the interfaces a policy uses: at ``--rate`` it publishes ``vla/ee_delta`` (stamped
with the camera image it acted on), ``vla/gripper`` and ``vla/action``, exactly as vla_node does
(``messages.action_to_messages``), and ``arm_bridge`` moves the arm. Its privileged state is
``sim/task`` (the named object's pose), ``ee_pose`` and ``joint_states``.

Episode ``k`` uses seed ``--seed + k``: this sets sim_arm's ``seed`` and ``task`` parameters,
calls ``/sim_arm/reset`` and ``/arm_bridge/reset`` (the gripper starts within ``--start-spread``
of home, drawn from the seed: sim_arm's ``start_spread``), publishes the instruction on
``vla/instruction``, and records until the task succeeds (plus ``--after-success`` seconds, so
the demonstration shows the arm holding still at the goal) or ``--seconds`` pass. Each episode
is its own bag ``OUT/episode_0000`` ... with what a real robot records: ``/camera/image_raw``,
``/wrist_camera/image_raw``, ``/ee_pose``, ``/joint_states``, ``/vla/instruction``,
``/vla/action``, ``/vla/ee_delta``, ``/vla/gripper``, ``/sim/task``; log time is the
receive time on the node clock, as ``ros2 bag record`` logs it. Messages stamped before the
episode's reset are left out. Failed episodes are deleted unless ``--keep-failures``.
``OUT/episodes.json`` lists every episode (seed, instruction, success, time to success, bag).

**ALOHA** (``--task transfer_cube``): sim_arm runs ``robot: aloha`` and arm_bridge
``output_mode: joint_trajectory`` with one point per step (``trajectory_points: step``) to
ALOHA's two arm controllers, with the scene's joint ranges and ``joint_velocity`` 3 rad/s
(fingers 0.5 m/s) as limits. Once the cube has settled (``aloha_expert.SETTLE`` after the
reset) the expert plans the episode from ``sim/task``'s cube and ``joint_states``
(``aloha_expert.plan_actions``, 50 Hz), then the bag starts and at ``--rate`` (default 25 Hz,
OFT ALOHA's) it publishes the plan's targets for one period later (``plan_at``: the plan
resampled by time) on ``vla/joint_command`` (names ``PRESETS['aloha']``, the gripper
normalised, stamped with the newest ``cam_high`` image) and ``vla/action`` (14-D), as vla_node
does with ``action_space: joint_position``. The bags hold ``/cam_high/image_raw``,
``/cam_left_wrist/image_raw``, ``/cam_right_wrist/image_raw``, ``/joint_states``,
``/sim/task``, ``/vla/instruction``, ``/vla/action`` and ``/vla/joint_command``; each
``episodes.json`` entry also has ``plan_inputs`` (the cube and the arms' joints it was planned
from). Corrections are not recorded for ALOHA (the plan follows its own commands).

**Corrections** (``--policy-model``; DAgger's data): ``vla_node`` runs that checkpoint too, with
its ``vla/ee_delta``, ``vla/gripper`` and ``vla/action`` remapped to ``vla/policy_ee_delta``,
``vla/policy_gripper`` and ``vla/policy_action``, and the policy drives the arm: on each action
it publishes, the expert labels the same moment (the newest image, pose and ``sim/task``) with
what it would do, the label goes out and into the bag as ``vla/action``, and the executed
command, the policy's action (or, on a ``--takeover`` share of steps drawn from the seed, the
expert's), goes to arm_bridge on ``vla/ee_delta`` and ``vla/gripper`` and into the bag beside
it; the policy's own action is logged as ``vla/policy_action``. So the bags have the expert's
layout, ``vla_finetune`` trains on the labels unchanged, and they hold the states the policy
drifts into, which expert demonstrations never visit. Every episode is kept (a failed one is
the most useful). On a real robot the same path records corrections by teleoperation: the
policy drives, the operator's device publishes ``vla/action`` (the label), and
``ros2 bag record`` logs the topics above.
"""

import argparse
import json
from pathlib import Path
import shutil
import sys
import time

from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from vla_ros.closed_loop.demo import node_params, POLICIES, vla_node_argv
from vla_ros.closed_loop.expert_recorder import ExpertRecorder, POLICY_REMAPS
from vla_ros.closed_loop.processes import (list_param, node_argv, ProcessError, start, stop,
                                           stop_like_ctrl_c, wait_until)
from vla_ros.control.joints import ALOHA_GRIPPER
from vla_ros.sim import aloha, tasks

START_TIMEOUT = 120.0  # s for sim_arm, arm_bridge (and vla_node, loading its model) to come up
RESET_TIMEOUT = 30.0  # s for a reset to show on sim/task and the camera (a busy CPU is slow)
# s after ALOHA's last command before the next reset: arm_bridge's watchdog hold (its
# command_timeout, 0.5 s) of the old pose goes out before the reset, never after it
ALOHA_QUIET = 0.7


class RecordError(ProcessError):
    """A node did not start or answer; the text says which and where its log is."""


def run_episode(rec, args, k, procs):
    """Reset into episode ``k``, record it; return its result dict."""
    seed = args.seed + k
    episode = tasks.episode(seed, args.task)
    params = [Parameter('seed', Parameter.Type.INTEGER, seed).to_parameter_msg(),
              Parameter('task', Parameter.Type.STRING, args.task).to_parameter_msg()]
    reply = rec.call_service(SetParameters, '/sim_arm/set_parameters',
                             SetParameters.Request(parameters=params))
    refused = [r.reason for r in reply.results if not r.successful]
    if refused:
        raise RecordError(f'sim_arm refused seed {seed} / task {args.task}: {refused[0]}')
    rec.finish()
    if args.robot == 'aloha' and k:
        time.sleep(ALOHA_QUIET)
    wall_start, called_ns = time.monotonic(), rec.now_ns()
    if not rec.call_service(Trigger, '/sim_arm/reset', Trigger.Request()).success:
        raise RecordError('sim_arm refused ~/reset')
    if args.robot == 'gripper':  # the joint bridge keeps no state of an episode: no ~/reset
        rec.call_service(Trigger, '/arm_bridge/reset', Trigger.Request())
    if args.policy_model:
        reset_policy(rec)  # idle until this episode's instruction
    bag = Path(args.out) / f'episode_{k:04d}'
    rec.begin(episode, called_ns, rec.now_ns())
    wait_until(rec.ready, RESET_TIMEOUT,
               f'episode {k} (seed {seed}) on sim/task and the cameras', procs)
    if args.robot == 'aloha':  # planned once the cube lies on the table; then the bag starts
        wait_until(rec.plan_aloha, RESET_TIMEOUT, f'episode {k} (seed {seed}): the cube to '
                   'settle and the plan', procs)
    rec.start(bag)
    end = time.monotonic() + args.seconds
    success_at = None
    try:
        while time.monotonic() < end:
            if success_at is None and rec.result()[0]:
                success_at = time.monotonic()
                end = min(end, success_at + args.after_success)
            if any(p.poll() is not None for p in procs.values()):
                raise RecordError('a node exited during the episode')
            time.sleep(0.02)
        success, time_to_success = rec.result()
        actions, takeovers = rec.actions, rec.takeovers
        rec.finish()
        if args.policy_model:
            reset_policy(rec)  # the policy stops; arm_bridge's watchdog holds the arm
    except (KeyboardInterrupt, ProcessError):
        rec.finish()  # a cut episode is no demonstration: its bag would train as one
        shutil.rmtree(bag, ignore_errors=True)
        raise
    kept = success or args.keep_failures or bool(args.policy_model)
    if not kept:
        shutil.rmtree(bag, ignore_errors=True)
    return {'episode': k, 'seed': seed, 'task': args.task, 'object': episode.object,
            'instruction': episode.instruction, 'success': success,
            'time_to_success': time_to_success, 'actions': actions,
            **({'takeovers': takeovers} if args.policy_model else {}),
            **({'plan_inputs': rec.plan_inputs} if args.robot == 'aloha' else {}),
            'wall_s': round(time.monotonic() - wall_start, 3),
            'bag': str(bag) if kept else None}


def reset_policy(rec):
    """Reset vla_node to idle (no instruction, nothing queued)."""
    if not rec.call_service(Trigger, '/vla_node/reset', Trigger.Request()).success:
        raise RecordError('vla_node refused ~/reset')


def aloha_bridge_params():
    """
    Return arm_bridge's ``NAME:=VALUE`` parameters for ALOHA: joint trajectories, per step.

    Limits: the scene's joint ranges; each finger from ACT's closed to its open position (the
    MJCF's lower end is above closed: a closed gripper would be clipped at every step).
    """
    import mujoco  # the scene's ranges; only for ALOHA
    model = mujoco.MjModel.from_xml_path(str(aloha.scene_path()))
    joints = [j for names in aloha.CONTROLLERS.values() for j in names]
    fingers = set(aloha.MIRRORED)
    lower = [ALOHA_GRIPPER[0] if j in fingers else model.joint(j).range[0] for j in joints]
    upper = [ALOHA_GRIPPER[1] if j in fingers else model.joint(j).range[1] for j in joints]
    speed = [0.5 if j in fingers else 3.0 for j in joints]

    def doubles(name, values):
        return f'{name}:=[{", ".join(repr(float(v)) for v in values)}]'
    return ['output_mode:=joint_trajectory', 'trajectory_points:=step',
            list_param('controllers', aloha.CONTROLLERS),
            *(list_param(f'{c}.joints', names) for c, names in aloha.CONTROLLERS.items()),
            doubles('joint_lower', lower), doubles('joint_upper', upper),
            doubles('joint_velocity', speed)]


def node_commands(args):
    """Return {name: argv} of the nodes to start: sim_arm, arm_bridge (and vla_node)."""
    if args.robot == 'aloha':
        return {'sim_arm': node_argv('sim_arm', 'robot:=aloha', f'task:={args.task}',
                                     f'seed:={args.seed}', *args.sim_param),
                'arm_bridge': node_argv('arm_bridge', *aloha_bridge_params())}
    argvs = {'sim_arm': node_argv('sim_arm', f'task:={args.task}', f'seed:={args.seed}',
                                  f'start_spread:={args.start_spread:g}', *args.sim_param),
             'arm_bridge': node_argv('arm_bridge')}
    if args.policy_model:
        preset = POLICIES[args.policy]
        argvs['vla_node'] = vla_node_argv(
            args.policy_model, args.unnorm_key or preset['unnorm_key'], args.rate,
            node_params(args.policy, args.policy_model), remaps=POLICY_REMAPS)
    return argvs


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='vla_record_demos',
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument('--episodes', type=int, default=10, help='number of episodes')
    parser.add_argument('--task', choices=tasks.TASKS + tasks.ALOHA_TASKS, default='reach',
                        help='transfer_cube: the simulated ALOHA (joint space)')
    parser.add_argument('--seed', type=int, default=0, help='episode k uses seed SEED + k')
    parser.add_argument('--seconds', type=float, default=10.0,
                        help='longest episode, seconds (wall time = sim time)')
    parser.add_argument('--rate', type=float, help='expert actions per second (default 10; '
                        "transfer_cube 25, OFT ALOHA's)")
    parser.add_argument('--after-success', type=float, default=1.0, metavar='S',
                        help='seconds recorded after the task succeeds (the arm at rest)')
    parser.add_argument('--out', default='out/demos', help='one bag per episode in here')
    parser.add_argument('--keep-failures', action='store_true',
                        help='keep the bags of failed episodes (deleted by default)')
    parser.add_argument('--start-spread', type=float, metavar='M',
                        help="sim_arm's start_spread: each seed starts the gripper up to M "
                        'metres (per axis) from home (default 0.08; from one start the '
                        'direction to the goal is the distance travelled, and a policy learns '
                        'that instead of looking)')
    parser.add_argument('--sim-param', action='append', default=[], metavar='NAME:=VALUE',
                        help="an extra sim_arm parameter, e.g. 'camera_width:=640'")
    parser.add_argument('--policy-model', metavar='PATH',
                        help='record corrections: this checkpoint drives the arm through '
                        "vla_node, the expert labels every step (DAgger's data)")
    parser.add_argument('--policy', choices=('reach', 'openvla_oft'),
                        help="--policy-model's kind: vla_node's parameters as the demo's "
                        '(default reach: the trained demo policy and its state layout)')
    parser.add_argument('--unnorm-key', default='', metavar='K',
                        help="--policy-model's statistics key (default: --policy's)")
    parser.add_argument('--takeover', type=float, default=0.0, metavar='P',
                        help="with --policy-model: the share of steps on which the expert's "
                        "action is executed instead of the policy's (default 0)")
    args = parser.parse_args(argv)
    args.robot = 'aloha' if args.task in tasks.ALOHA_TASKS else 'gripper'
    if args.robot == 'aloha' and args.start_spread is not None:
        parser.error(f"--start-spread moves the gripper robot's start; {args.task} (ALOHA) "
                     "starts its arms at the scene's pose, the seed places the cube")
    args.start_spread = 0.08 if args.start_spread is None else args.start_spread
    if args.rate is None:
        args.rate = 25.0 if args.robot == 'aloha' else 10.0
    if args.episodes < 1 or args.seed < 0:
        parser.error('--episodes must be >= 1 and --seed >= 0')
    if not (0 < args.rate <= 50 and args.seconds > 0 and args.after_success >= 0):
        parser.error('--rate must be in (0, 50] Hz, --seconds > 0, --after-success >= 0')
    if not 0 <= args.start_spread <= tasks.START_SPREAD_MAX:
        parser.error(f'--start-spread must be in [0, {tasks.START_SPREAD_MAX}] m')
    if any(':=' not in p for p in args.sim_param):
        parser.error('--sim-param takes NAME:=VALUE')
    if not 0.0 <= args.takeover <= 1.0:
        parser.error(f'--takeover must be in [0, 1] (a share of steps), got {args.takeover}')
    if args.policy_model is None and (args.takeover or args.unnorm_key or args.policy):
        parser.error('--policy, --takeover and --unnorm-key go with --policy-model (the policy '
                     'that drives while the expert labels)')
    if args.policy_model is not None and args.task != 'reach':
        parser.error(f'--policy-model records reach corrections only: the {args.task} expert '
                     'runs phases that follow its own commands, so it cannot label steps '
                     'another policy took')
    args.policy = args.policy or 'reach'
    if args.policy_model is not None:
        if not Path(args.policy_model).is_dir():
            parser.error(f'--policy-model {args.policy_model}: no such checkpoint directory')
        args.policy_model = str(Path(args.policy_model).resolve())
        try:
            node_params(args.policy, args.policy_model)
        except ValueError as exc:
            parser.error(f'--policy-model {args.policy_model}: {exc}')
    out = Path(args.out)
    if out.is_file() or any(out.glob('episode_*')):
        parser.error(f'--out {out} already holds episodes (or is a file); pass a new folder')
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stop_like_ctrl_c()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    argvs = node_commands(args)
    who = (f'{args.policy_model} drives at {args.rate} Hz (expert takes over {args.takeover:.0%} '
           'of steps), the expert labels' if args.policy_model else
           f'expert at {args.rate} Hz')
    print(f'starting {", ".join(argvs)} (logs in {out}/); {args.episodes} {args.task} '
          f'episodes from seed {args.seed}, {who}')
    procs = {name: start(argv, out / f'{name}.log') for name, argv in argvs.items()}
    rec = ExpertRecorder(args.rate, bool(args.policy_model), args.takeover, args.robot)
    results = []
    code = 0
    try:
        wait_until(rec.bridge_listening, START_TIMEOUT,
                   f'arm_bridge to subscribe to {rec.robot.commands[0]}', procs)
        for name in ('/sim_arm/reset',) + (
                ('/arm_bridge/reset',) if args.robot == 'gripper' else ()) + (
                ('/vla_node/reset',) if args.policy_model else ()):
            client = rec.node.create_client(Trigger, name)
            wait_until(lambda c=client: c.service_is_ready(), START_TIMEOUT, name, procs)
            rec.node.destroy_client(client)
        if args.policy_model:
            wait_until(rec.policy_up, START_TIMEOUT, 'vla_node to load the policy and subscribe '
                       'to vla/instruction', procs)
        for k in range(args.episodes):
            result = run_episode(rec, args, k, procs)
            results.append(result)
            tts = result['time_to_success']
            print(f'episode {k}: seed {result["seed"]} {result["instruction"]!r}: '
                  + (f'success in {tts:.2f} s' if result['success'] else 'FAILED')
                  + f' ({result["actions"]} actions, {result["wall_s"]:.1f} s wall) -> '
                  f'{result["bag"] or "deleted"}', flush=True)
    except ProcessError as exc:
        print(f'vla_record_demos: error: {exc}; see the logs in {out}/', file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        rec.close()
        codes = {name: stop(proc) for name, proc in procs.items()}
    (out / 'episodes.json').write_text(json.dumps(results, indent=1))
    done = sum(r['success'] for r in results)
    walls = [r['wall_s'] for r in results]
    print(f'{done}/{len(results)} episodes succeeded'
          + (f' ({sum(walls) / len(walls):.1f} s wall per episode)' if walls else '')
          + f'; bags in {out}/, list in {out / "episodes.json"}; '
          + ', '.join(f'{k} exit {v}' for k, v in codes.items()))
    return code


if __name__ == '__main__':
    sys.exit(main())
