"""
vla_sim_eval: a checkpoint's success rate in closed loop, through the live nodes over DDS.

    vla_sim_eval --model PATH [--unnorm-key K] [--policy openvla|openvla_oft]
                 [-p NAME:=VALUE ...] --episodes N --seed S --task reach|lift --seconds T
                 [--rate HZ] [--start-spread M] [--frames F] --out DIR
    vla_sim_eval --compare A B [--out DIR]

It starts ``sim_arm``, ``vla_node`` (the model, ``control_rate_hz`` = ``--rate``, the vla_node
parameters of ``--policy`` as ``python -m vla_ros.closed_loop.demo`` uses them, then every ``-p``)
and ``arm_bridge`` as their own processes with ``config/vla.yaml`` (logs in DIR), waits until they
are up, and runs N episodes (the gripper starting at home, or with ``--start-spread M`` at a
seeded place within M of it: sim_arm's ``start_spread``). Episode k: vla_node reset (idle),
sim_arm ``seed`` = S + k and ``task`` by SetParameters, ``/sim_arm/reset``,
``/arm_bridge/reset``; the first ``sim/task`` message of that episode gives the instruction,
which goes out on ``vla/instruction``; the episode
ends at the first ``sim/task`` reporting success or after T seconds, and the policy is stopped
(``/vla_node/reset``, ``/arm_bridge/reset``) before the next one.

Per episode: success, time to success (sim time since the reset), end-effector path length from
``ee_pose``, ``vla/action`` messages, the commands arm_bridge clamped (its ``/diagnostics``
counters before and after), why it failed (``vla_ros.sim.outcomes``: from the path, the objects'
places and the closest approach) and a frame strip of ``camera/image_raw``. Files
(``sim_report``): DIR/results.json, DIR/summary.md, DIR/episode_NNNN.png,
DIR/{sim_arm,vla_node,arm_bridge}.log. ``--compare A B`` runs no episode: it prints two runs'
rates, Fisher's exact test between them, per object and per outcome (``sim_compare``).

Exit status: 0 when the episodes ran (whatever the success rate) or the runs were compared, 1 when
a node failed or died, 2 for bad input or a result file that cannot be compared (one
``vla_sim_eval: error: ...`` line).
"""

import argparse
import difflib
import math
from pathlib import Path
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import numpy as np
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from vla_ros.closed_loop import sim_compare, sim_report
from vla_ros.closed_loop.demo import node_params, POLICIES, vla_node_argv
from vla_ros.closed_loop.processes import (node_argv, Participant, ProcessError, start, stop,
                                           stop_like_ctrl_c)
from vla_ros.closed_loop.sim_recorder import Recorder
from vla_ros.control.images import image_to_rgb
from vla_ros.nodes import qos
from vla_ros.nodes.vla_node_config import PARAMS as NODE_PARAMS
from vla_ros.sim import outcomes
from vla_ros.sim.tasks import START_SPREAD_MAX, TASKS

PROG = 'vla_sim_eval'
SERVICE_TIMEOUT = 15.0
EPISODE_START_TIMEOUT = 15.0  # from the reset to the first sim/task message of the episode
DIAGNOSTICS_SETTLE = 0.2  # s after the stop before arm_bridge's counters are read
# ee_pose (50 Hz) and vla/action: every message counts (path length, actions), so reliable.
RELIABLE_DEEP = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
MAX_SEED = 2**63 - 1  # sim_arm's seed is a ROS integer parameter (int64)
RCLPY_PARAMS = ('use_sim_time', 'start_type_description_service')  # declared on every node


class RunError(ProcessError):
    """A node that failed or died, a refused service call: the run cannot go on."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')


def parse_args(argv):
    parser = Parser(prog=PROG, description=__doc__.strip().splitlines()[0],
                    epilog='Exit status: 0 the episodes ran, 1 a node failed, 2 bad input.')
    parser.add_argument('--model', metavar='PATH',
                        help='checkpoint directory vla_node loads (OpenVLA or OpenVLA-OFT)')
    parser.add_argument('--compare', nargs=2, metavar=('A', 'B'),
                        help='run no episode: compare two runs (results.json or its DIR): '
                        "rates, Fisher's exact test, per object and per outcome; with --out, "
                        f'also DIR/{sim_compare.OUT_NAME}')
    parser.add_argument('--unnorm-key', default='', metavar='K',
                        help='dataset statistics to unnormalise with (needed when the '
                        'checkpoint has several)')
    parser.add_argument('--policy', choices=sorted(POLICIES), default='openvla',
                        help="the checkpoint's kind: openvla_oft adds the demo's OFT vla_node "
                        'parameters (2 cameras, LIBERO state, center crop)')
    parser.add_argument('-p', dest='params', action='append', default=[],
                        metavar='NAME:=VALUE', help='an extra vla_node parameter (repeatable)')
    parser.add_argument('--episodes', type=int, default=10, metavar='N')
    parser.add_argument('--seed', type=int, default=0, metavar='S',
                        help='episode k uses seed S + k (default 0)')
    parser.add_argument('--task', choices=TASKS, default='reach')
    parser.add_argument('--seconds', type=float, default=20.0, metavar='T',
                        help='the longest episode, from the instruction (default 20)')
    parser.add_argument('--rate', type=float, metavar='HZ',
                        help="vla_node's control_rate_hz (default: 5 for openvla, 10 for the "
                        'OFT policies)')
    parser.add_argument('--start-spread', type=float, default=0.0, metavar='M',
                        help="sim_arm's start_spread: each seed starts the gripper up to M "
                        'metres (per axis) from home (default 0: every episode from home)')
    parser.add_argument('--frames', type=int, default=5, metavar='F',
                        help='frames per episode strip (default 5)')
    parser.add_argument('--startup-timeout', type=float, default=300.0, metavar='S',
                        help='seconds the nodes may take to come up (default 300)')
    parser.add_argument('--out', metavar='DIR',
                        help='results, frame strips and node logs (default out/sim_eval)')
    args = parser.parse_args(argv)
    if args.compare:
        if args.model is not None:
            parser.error('--compare A B runs no episode: leave out --model')
        return writable(parser, args) if args.out else args
    if args.model is None:
        parser.error('the following arguments are required: --model (or --compare A B)')
    args.out = args.out or 'out/sim_eval'
    args.rate = POLICIES[args.policy]['rate'] if args.rate is None else args.rate
    problems = []
    if not Path(args.model).is_dir():
        problems.append(f'--model {args.model}: no such checkpoint directory')
    if args.episodes < 1:
        problems.append(f'--episodes {args.episodes}: give at least 1')
    if args.seed < 0:
        problems.append(f'--seed {args.seed}: give an integer >= 0')
    for name, value in (('--seconds', args.seconds), ('--rate', args.rate),
                        ('--startup-timeout', args.startup_timeout)):
        if not 0 < value < float('inf'):
            problems.append(f'{name} {value}: give a positive number')
    if not 0 <= args.start_spread <= START_SPREAD_MAX:
        problems.append(f'--start-spread {args.start_spread}: give 0 .. {START_SPREAD_MAX} m')
    if not 1 <= args.frames <= 12:
        problems.append(f'--frames {args.frames}: give 1 .. 12')
    last_seed = args.seed + args.episodes - 1
    if args.seed >= 0 and last_seed > MAX_SEED:
        problems.append(f'--seed {args.seed} with --episodes {args.episodes}: the episode seeds '
                        f'go up to {last_seed}, but sim_arm takes seeds up to {MAX_SEED} (2**63 '
                        '- 1, a ROS integer parameter); give a smaller --seed')
    problems += [param_problem(p) for p in args.params if param_problem(p)]
    if problems:
        parser.error(problems[0])
    writable(parser, args)
    args.model = str(Path(args.model).resolve())
    try:
        args.node_params = node_params(args.policy, args.model) + args.params
    except ValueError as exc:
        parser.error(str(exc))
    return args


def writable(parser, args):
    """Return ``args`` once ``--out`` DIR exists and takes a file; a parser error otherwise."""
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / '.vla_sim_eval_write_test').write_text('')
        (Path(args.out) / '.vla_sim_eval_write_test').unlink()
    except OSError as exc:
        parser.error(f'--out {args.out}: cannot write there ({exc})')
    return args


def param_problem(param):
    """
    Return why ``-p NAME:=VALUE`` is not a vla_node parameter setting, or ''.

    vla_node takes a name it does not declare without a word (a typo such as ``chunk_mod``
    would change the experiment silently), so the name must be one of its ``PARAMS`` or a
    parameter rclpy declares on every node.
    """
    name = param.split(':=')[0].strip()
    if ':=' not in param or not name:
        return f'-p {param}: write NAME:=VALUE (a vla_node parameter)'
    known = [p.name for p in NODE_PARAMS] + list(RCLPY_PARAMS)
    if name in known or name.startswith('qos_overrides.'):
        return ''
    close = difflib.get_close_matches(name, known, n=1)
    hint = f'did you mean {close[0]}?' if close else f'its parameters: {", ".join(known)}'
    return f'-p {param}: vla_node has no parameter {name!r} ({hint})'


class Runner(Participant):
    """The runner's ROS participant: watches the topics, calls the nodes' services."""

    def __init__(self, procs, out):
        super().__init__('vla_sim_eval')
        self.procs, self.out = procs, out
        self.rec = Recorder()
        # sim_arm's own box (narrower than arm_bridge's) holds an arm that arm_bridge lets pass.
        from vla_ros.sim.arm import WORKSPACE_HIGH, WORKSPACE_LOW  # mujoco, only to run episodes
        self.workspace = (WORKSPACE_LOW, WORKSPACE_HIGH)
        node, rec = self.node, self.rec
        node.create_subscription(String, 'sim/task', rec.on_task, qos.COMMAND)
        node.create_subscription(PoseStamped, 'ee_pose', rec.on_pose, RELIABLE_DEEP)
        node.create_subscription(Float64MultiArray, 'vla/action', rec.on_action, RELIABLE_DEEP)
        node.create_subscription(Image, 'camera/image_raw', rec.on_image, qos.SENSOR)
        node.create_subscription(DiagnosticArray, '/diagnostics', rec.on_diagnostics,
                                 qos.COMMAND)
        self.instruction = node.create_publisher(String, 'vla/instruction', qos.COMMAND)
        self.clients = {
            'sim_params': node.create_client(SetParameters, '/sim_arm/set_parameters'),
            'sim_reset': node.create_client(Trigger, '/sim_arm/reset'),
            'vla_reset': node.create_client(Trigger, '/vla_node/reset'),
            'bridge_reset': node.create_client(Trigger, '/arm_bridge/reset'),
        }

    # ---------------------------------------------------------------- plumbing
    def check_alive(self):
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = self.out / f'{name}.log'
                tail = log.read_text(errors='replace').strip().splitlines()[-5:]
                raise RunError(f'{name} exited with status {proc.returncode}; see {log}:\n  '
                               + '\n  '.join(tail))

    def wait(self, predicate, timeout, what):
        """Poll ``predicate`` (nodes checked alive) until truthy; RunError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            self.check_alive()
            if time.monotonic() > deadline:
                raise RunError(f'timed out after {timeout:.0f} s waiting for {what}')
            time.sleep(0.02)

    def call(self, name, request):
        client = self.clients[name]
        future = client.call_async(request)
        self.wait(future.done, SERVICE_TIMEOUT, f'an answer from {client.srv_name}')
        response = future.result()
        if isinstance(request, Trigger.Request) and not response.success:
            raise RunError(f'{client.srv_name} refused: {response.message}')
        return response

    def reset(self, name):
        return self.call(name, Trigger.Request())

    def wait_until_up(self, timeout):
        """Wait for the three nodes: their services, vla_node's and arm_bridge's inputs, data."""
        node, rec = self.node, self.rec

        def up():
            return (all(c.service_is_ready() for c in self.clients.values())
                    and self.instruction.get_subscription_count() > 0
                    and node.count_subscribers('/vla/ee_delta') > 0
                    and rec.frames_seen > 0 and rec.task and rec.bridge[1])
        self.wait(up, timeout, 'sim_arm, vla_node and arm_bridge to come up (services, '
                  'camera frames, sim/task, arm_bridge diagnostics)')

    def bridge_counters(self, after):
        """Return arm_bridge's diagnostics counters from a message received after ``after``."""
        def fresh():
            with self.rec.lock:
                received, values = self.rec.bridge
            return values if received > after else None
        values = self.wait(fresh, 5.0, 'arm_bridge diagnostics')
        missing = [c for c in sim_report.CLAMPS if not values.get(c, '').isdigit()]
        if missing:
            raise RunError(f'arm_bridge diagnostics lack the counters {missing}')
        return {c: int(values[c]) for c in sim_report.CLAMPS}

    def set_episode(self, seed, task):
        request = SetParameters.Request(parameters=[
            Parameter('seed', Parameter.Type.INTEGER, seed).to_parameter_msg(),
            Parameter('task', Parameter.Type.STRING, task).to_parameter_msg()])
        for result in self.call('sim_params', request).results:
            if not result.successful:
                raise RunError(f'/sim_arm refused seed={seed} task={task}: {result.reason}')

    def wait_episode(self, seed, task, before, after):
        """
        Return (the first sim/task message of the new episode, its receipt time).

        ``before`` is the time_since_reset of the newest message before the reset: the new
        episode's messages have the seed and task asked for and an earlier time since reset
        (one from before the reset, delivered late, has a later one).
        """
        def new():
            with self.rec.lock:
                msg, received = self.rec.task, self.rec.task_time
            fresh = (received > after and msg.get('seed') == seed and msg.get('task') == task
                     and float(msg.get('time_since_reset', math.inf)) < before)
            return (msg, received) if fresh else None
        return self.wait(new, EPISODE_START_TIMEOUT, f'sim/task of seed {seed} task {task}')

    # ---------------------------------------------------------------- one episode
    def episode(self, index, seed, args, baseline):
        """Run episode ``index``; return (sim_report.Episode, arm_bridge counters at its end)."""
        wall0 = time.monotonic()
        self.reset('vla_reset')  # idle: no instruction, nothing queued
        self.set_episode(seed, args.task)
        with self.rec.lock:
            before = float(self.rec.task.get('time_since_reset', math.inf))
        self.reset('sim_reset')
        # sim_arm stamps on its node clock, the system clock as ours (config: publish_clock off).
        since_ns = self.node.get_clock().now().nanoseconds
        self.reset('bridge_reset')
        task, received = self.wait_episode(seed, args.task, before, time.monotonic())
        instruction = task['instruction']
        t0 = time.monotonic()
        self.rec.begin(t0, since_ns)
        self.instruction.publish(String(data=instruction))
        instruction_time = float(task['time_since_reset']) + (t0 - received)
        while self.rec.success is None and time.monotonic() - t0 < args.seconds:
            self.check_alive()
            time.sleep(0.02)
        self.reset('vla_reset')  # stop the policy
        self.reset('bridge_reset')  # and the arm (zero twist)
        stopped = time.monotonic()
        seen = self.rec.end()
        success, closest, frames = seen['success'], seen['closest'], seen['frames']
        counters = self.bridge_counters(stopped + DIAGNOSTICS_SETTLE)
        clamps = {c: counters[c] - baseline[c] for c in sim_report.CLAMPS}
        track = np.asarray(seen['poses'], dtype=np.float64).reshape(-1, 4)  # (N, t x y z)
        name = task.get('object', '')
        outcome = outcomes.classify(
            success=success is not None, path=track[:, 1:], times=track[:, 0], target=name,
            objects=outcomes.scene_objects(seed, name, seen['task'].get('object_position')),
            box_clamps=clamps['clamped_box'], workspace=self.workspace,
            closest=seen['closest_offset'] if args.task == 'reach' else None)
        tts = None
        if success is not None:
            tts = success.get('time_to_success')
            tts = float(success['time_since_reset'] if tts is None else tts)
        strip = f'episode_{index:04d}.png'
        title = (f'episode {index}, seed {seed}: "{instruction}" - ' + (
            f'success at {tts:.1f} s' if tts is not None else
            f'no success in {args.seconds:g} s'))
        picked = sim_report.pick_evenly(frames, args.frames)
        written = sim_report.frame_strip(
            [(f't={t:.1f} s', image_to_rgb(msg)) for t, msg in picked], title, self.out / strip)
        result = sim_report.Episode(
            index=index, seed=seed, task=task.get('task', args.task),
            object_name=name, instruction=instruction,
            success=success is not None, time_to_success=tts, instruction_time=instruction_time,
            duration=stopped - t0, path_length=sim_report.path_length(track[:, 1:]),
            actions=seen['actions'], closest_approach=0.0 if success is not None else (
                None if math.isinf(closest) else closest), clamps=clamps,
            frame_strip=strip if written else '', wall_time=time.monotonic() - wall0,
            failure=outcome.category, failure_detail=outcome.detail,
            start_position=[round(float(v), 4) for v in track[0, 1:]] if len(track) else None)
        return result, counters


def run(args, out):
    """Start the nodes, run the episodes, write the results; return the exit status."""
    print(f'{PROG}: starting sim_arm, vla_node (model {args.model}, {args.rate} Hz) and '
          f'arm_bridge; logs in {out}/', flush=True)
    argvs = {
        'sim_arm': node_argv('sim_arm', f'seed:={args.seed}', f'task:={args.task}',
                             'publish_clock:=false', f'start_spread:={args.start_spread:g}'),
        'vla_node': vla_node_argv(args.model, args.unnorm_key, args.rate, args.node_params),
        'arm_bridge': node_argv('arm_bridge'),
    }
    config = {'model': args.model, 'policy': args.policy, 'unnorm_key': args.unnorm_key,
              'vla_node_params': args.node_params, 'task': args.task, 'seed': args.seed,
              'episodes': args.episodes, 'seconds': args.seconds, 'rate': args.rate,
              'start_spread': args.start_spread}
    runner, procs, episodes = None, {}, []
    try:
        for name, argv in argvs.items():
            try:
                procs[name] = start(argv, out / f'{name}.log')
            except OSError as exc:
                raise RunError(f'cannot start {name} ({exc}); install the package with its sim '
                               "extra: pip install -e '.[sim]'") from exc
        runner = Runner(procs, out)
        started = time.monotonic()
        runner.wait_until_up(args.startup_timeout)
        print(f'{PROG}: nodes up after {time.monotonic() - started:.1f} s', flush=True)
        runner.reset('vla_reset')
        counters = runner.bridge_counters(time.monotonic())
        for k in range(args.episodes):
            episode, end_counters = runner.episode(k, args.seed + k, args, counters)
            counters = end_counters
            episodes.append(episode)
            sim_report.write_results(out, config, episodes)
            outcome = (f'success at {episode.time_to_success:.1f} s' if episode.success
                       else 'no success' + ('' if episode.closest_approach is None else
                                            f' (closest {episode.closest_approach * 100:.1f} '
                                            'cm from the reach region)'))
            print(f'  episode {k} seed {episode.seed} "{episode.instruction}": {outcome}, '
                  f'path {episode.path_length:.3f} m, {episode.actions} actions, clamped '
                  f'{sum(episode.clamps.values())}, {episode.wall_time:.1f} s wall'
                  + ('' if episode.success else f'; {episode.failure}: {episode.failure_detail}'),
                  flush=True)
    except RunError as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted after {len(episodes)} episode(s); results so far in {out}',
              file=sys.stderr)
        return 130
    finally:
        if runner is not None:
            runner.close()
        for proc in procs.values():
            stop(proc)
    summary = sim_report.write_results(out, config, episodes)
    low, high = summary['success_rate_interval']
    print(f"{PROG}: success {summary['successes']}/{summary['episodes']} = "
          f"{summary['success_rate'] * 100:.1f}% (95% Wilson interval {low * 100:.1f}% .. "
          f'{high * 100:.1f}%); {out / "results.json"}, {out / "summary.md"}', flush=True)
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.compare:
        return sim_compare.main(args.compare, args.out)
    stop_like_ctrl_c()
    return run(args, Path(args.out))


if __name__ == '__main__':
    sys.exit(main())
