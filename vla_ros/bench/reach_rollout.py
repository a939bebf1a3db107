"""
The reach task in closed loop without ROS: a policy (or the scripted expert) on ``SimArm``.

    python -m vla_ros.bench.reach_rollout --model DIR [--unnorm-key sim_reach] [--episodes 50]
        [--seed 0] [--start-spread M] [--latency-steps K] [--execute-steps N] [--seconds 10]
        [--expert] [--proprio ENTRY ...] [--device auto] [--out results.json]

Why: through the live nodes (``vla_sim_eval``) the shipped reach policy reaches its object in
about a third of 50 episodes, with some 300 ms from image to command, at about 9 Hz, executing
whole chunks of 8 open loop. This runs the same episodes (seeds S .. S+N-1 of
``tasks.episode``, as ``vla_sim_eval --seed S --task reach``) with the timing under control, so
the model's own limit (where is the named object?) can be told from the loop's (stale images,
open-loop chunks): K = 0 and N = 1 is the most closed loop there is. vla_node's open loop is
closer to K = 1 than to its 300 ms from image to command (K = 3): it asks for the next chunk at
the tick of the last row and trims the rows whose time has passed (``control.chunks``).

The loop runs in simulated time only (no wall clock: a run is deterministic), at vla_node's
10 Hz. Each period it observes the arm as vla_node would: sim_arm's cameras at its 320 x 240
(scene, then wrist: the reach policy's ``camera_topics``) and the state of the checkpoint's run
record (``data.proprio``, or ``--proprio``), built by ``StateLayout.assemble``, vla_node's own
rule. The policy sees the observation of K periods before (``--latency-steps``; for the first K
periods the arm holds, as the node has nothing to send before its first prediction) and
executes rows 0 .. N-1 of each chunk (``--execute-steps``) before it predicts again. vla_node
drops the rows whose time passed while the model worked; here none is dropped, so K stands for
stale inputs, the pessimistic case. Each action drives the arm for one period through
``expert.apply_action`` (the expert rollout's loop: a twist held for the period, success judged
at 100 Hz). ``--expert``: the scripted expert acts every period on the K-period-old state (N does
not apply), a check of the loop: with K = 0 it reaches every object.

Per episode: success and time, the fingertips' final offset from the object (``sim/task``'s
``fingertip_distance``) and the failure's category (``vla_ros.sim.outcomes``, from the path at
10 Hz and sim_arm's workspace; arm_bridge's box clamps are not modelled). The summary gives the
Wilson interval, per object and per category (``closed_loop.sim_report``); ``--out`` writes it
in vla_sim_eval's results.json shape, so ``vla_sim_eval --compare`` puts it beside a live run.
"""

import argparse
import collections
import json
from pathlib import Path
import sys
import time

import numpy as np

from vla_ros.closed_loop import sim_report
from vla_ros.control.state import StateLayout
from vla_ros.sim import outcomes, tasks
from vla_ros.sim.arm import CAMERAS, SimArm, WORKSPACE_HIGH, WORKSPACE_LOW
from vla_ros.sim.camera import SimCamera
from vla_ros.sim.expert import apply_action, expert_inputs, ScriptedExpert
from vla_ros.training.demo_policy import run_proprio

PERIOD = 0.1  # s: vla_node's control_rate_hz 10 for the OFT policies
HOLD = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # no motion, gripper open


class PolicyDriver:
    """A policy's chunks: predict from an observation, execute ``execute_steps`` rows of it."""

    def __init__(self, policy, key, camera, layout, execute_steps):
        self.policy, self.key, self.camera = policy, key, camera
        self.layout, self.execute_steps = layout, int(execute_steps)

    def start(self, episode):
        self.episode, self.rows, self.row, self.inferences = episode, None, 0, 0

    def observe(self, arm):
        """Return what the policy may see of ``arm`` now: (state snapshot, proprio or None)."""
        if not self.layout:
            return arm.snapshot(), None
        position, quat = arm.ee_pose()
        names, joints, _ = arm.joint_state()
        state = self.layout.assemble((position, quat, arm.time),
                                     (dict(zip(names, joints)), arm.time))
        if state.problem:
            raise ValueError(f'state: {state.problem}')
        return arm.snapshot(), state.values

    def act(self, seen):
        if self.rows is None or self.row >= min(self.execute_steps, len(self.rows)):
            images = self.camera.render(seen[0])
            self.rows = self.policy.predict(list(images), self.episode.instruction,
                                            proprio=seen[1], unnorm_key=self.key).rows
            self.row, self.inferences = 0, self.inferences + 1
        self.row += 1
        return self.rows[self.row - 1]


class ExpertDriver:
    """The scripted expert, acting every period on the state it is shown."""

    def start(self, episode):
        self.object, self.inferences = episode.object, 0
        self.expert = ScriptedExpert(episode.task, episode.object, period=PERIOD)

    def observe(self, arm):
        return expert_inputs(arm, self.object)

    def act(self, seen):
        self.inferences += 1
        return self.expert.act(*seen)


def run_episode(arm, driver, index, seed, latency_steps=0, seconds=10.0):
    """Run episode ``seed`` on ``arm``; return (``sim_report.Episode``, extra fields)."""
    wall = time.perf_counter()
    episode = tasks.episode(seed, 'reach')
    arm.reset(seed)
    monitor = tasks.EpisodeMonitor(episode)
    driver.start(episode)
    seen = collections.deque(maxlen=latency_steps + 1)  # observations, oldest first
    path, times, offsets = [], [], []
    for _ in range(int(round(seconds / PERIOD))):
        if monitor.succeeded:
            break
        state = arm.scene_state()
        path.append(state.ee_position)
        times.append(arm.time)
        offsets.append(tasks.reach_offset(episode.object, state))
        seen.append(driver.observe(arm))
        apply_action(arm, driver.act(seen[0]) if len(seen) > latency_steps else HOLD, monitor,
                     PERIOD)
    state = arm.scene_state()
    path.append(state.ee_position)
    times.append(arm.time)
    final = tasks.reach_offset(episode.object, state)
    offsets.append(final)
    closest = min(offsets, key=lambda o: tasks.reach_miss(*o))
    success = monitor.succeeded
    outcome = outcomes.classify(
        success=success, path=path, times=times, target=episode.object, closest=closest,
        objects=outcomes.scene_objects(seed, episode.object, state.object_positions[
            tasks.scene_object(episode.object).body]),
        workspace=(WORKSPACE_LOW, WORKSPACE_HIGH))
    result = sim_report.Episode(
        index=index, seed=seed, task=episode.task, object_name=episode.object,
        instruction=episode.instruction, success=success,
        time_to_success=monitor.time_to_success, instruction_time=0.0, duration=arm.time,
        path_length=sim_report.path_length(path),
        closest_approach=0.0 if success else tasks.reach_miss(*closest),
        actions=len(path) - 1, wall_time=time.perf_counter() - wall,
        failure=outcome.category, failure_detail=outcome.detail,
        start_position=[round(float(v), 4) for v in path[0]])
    extra = {'final_fingertip_distance': [round(v, 5) for v in final],
             'final_miss': round(tasks.reach_miss(*final), 5), 'inferences': driver.inferences}
    return result, extra


def run(args):
    """Run the episodes of ``args``; return ``{'config', 'episodes', 'summary'}``."""
    arm = SimArm(seed=args.seed, twist_timeout=PERIOD * 1.5, start_spread=args.start_spread)
    camera = entries = None
    if args.expert:
        driver = ExpertDriver()
    else:
        from vla_ros.policy.loading import load_policy
        policy, key = load_policy(args.model, 'openvla_oft', args.unnorm_key, args.device,
                                  'auto', center_crop=True, platform='libero')
        entries = args.proprio
        if entries is None and policy.proprio_dim:
            try:
                entries = run_proprio(args.model)
            except ValueError as exc:
                raise SystemExit(f'{exc}; or name it: --proprio ENTRY ...') from None
        camera = SimCamera(arm.model, arm.width, arm.height, CAMERAS[:policy.num_images])
        driver = PolicyDriver(policy, key, camera, StateLayout(entries or []), args.execute_steps)
    episodes, extras = [], []
    try:
        for index in range(args.episodes):
            result, extra = run_episode(arm, driver, index, args.seed + index,
                                        args.latency_steps, args.seconds)
            episodes.append(result)
            extras.append(extra)
            if args.verbose:
                print_episode(result, extra)
    finally:
        if camera is not None:
            camera.close()
    summary = sim_report.summarize(episodes)
    failed = [x['final_miss'] for e, x in zip(episodes, extras) if not e.success]
    summary['median_final_miss_of_failures'] = (round(float(np.median(failed)), 4) if failed
                                                else None)
    summary['mean_inferences'] = round(float(np.mean([x['inferences'] for x in extras])), 2)
    config = {'model': None if args.expert else str(args.model), 'expert': args.expert,
              'unnorm_key': args.unnorm_key, 'task': 'reach', 'seed': args.seed,
              'episodes': args.episodes, 'seconds': args.seconds,
              'start_spread': args.start_spread, 'rate': 1.0 / PERIOD,
              'latency_steps': args.latency_steps, 'execute_steps': args.execute_steps,
              'proprio': None if args.expert else (entries or [])}
    return {'config': config, 'summary': summary,
            'episodes': [dict(e.to_dict(), **x) for e, x in zip(episodes, extras)]}


def print_episode(result, extra):
    horizontal, height = extra['final_fingertip_distance']
    end = (f'reached at {result.time_to_success:4.1f} s' if result.success
           else f'failed after {result.duration:4.1f} s')
    print(f'seed {result.seed:4d}  {result.object_name:15s} {end}  final fingertips '
          f'{horizontal * 100:5.1f} cm from the axis, {height * 100:5.1f} cm over the top '
          f'(miss {extra["final_miss"] * 100:4.1f} cm)  {extra["inferences"]:3d} inferences  '
          f'{result.failure}' + (f': {result.failure_detail}' if result.failure_detail else ''),
          flush=True)


def print_summary(data, wall):
    config, summary = data['config'], data['summary']
    what = 'expert' if config['expert'] else config['model']
    print(f"{what}: latency {config['latency_steps']} periods, execute "
          f"{config['execute_steps']} rows, start spread {config['start_spread']:g} m")
    print('reached ' + sim_report.rate_cell(summary['successes'], summary['episodes'])
          + ' (95% Wilson)')
    for name, (wins, n) in summary['per_object'].items():
        print(f'  {name:15s} {sim_report.rate_cell(wins, n)}')
    print('outcomes: ' + ', '.join(f'{k} {v}' for k, v in summary['outcomes'].items()))
    miss = summary['median_final_miss_of_failures']
    print(f"median final miss of the failures: {'-' if miss is None else f'{miss * 100:.1f}'} "
          f"cm; {summary['mean_inferences']} inferences per episode; wall time {wall:.1f} s")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m vla_ros.bench.reach_rollout',
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument('--model', help='OpenVLA-OFT checkpoint (LIBERO constants)')
    parser.add_argument('--unnorm-key', default='', help="default: the checkpoint's only one")
    parser.add_argument('--expert', action='store_true',
                        help='run the scripted expert instead of a policy (a check of the loop)')
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0, help='the first episode (seed)')
    parser.add_argument('--seconds', type=float, default=10.0, help='per episode, sim time')
    parser.add_argument('--start-spread', type=float, default=0.0,
                        help="sim_arm's start_spread, m (0: every episode starts at home)")
    parser.add_argument('--latency-steps', type=int, default=0, metavar='K',
                        help='the policy sees the observation of K periods (0.1 s) before')
    parser.add_argument('--execute-steps', type=int, default=8, metavar='N',
                        help='rows of each chunk executed before the next prediction')
    parser.add_argument('--proprio', nargs='*', metavar='ENTRY',
                        help="state layout (default: the checkpoint's run record)")
    parser.add_argument('--device', default='auto')
    parser.add_argument('--out', help='write results.json (vla_sim_eval shape) here')
    parser.add_argument('--quiet', dest='verbose', action='store_false',
                        help='print the summary only')
    args = parser.parse_args(argv)
    if not args.expert and not args.model:
        parser.error('pass --model DIR (or --expert)')
    if args.latency_steps < 0 or args.execute_steps < 1 or args.episodes < 1:
        parser.error('need --latency-steps >= 0, --execute-steps >= 1 and --episodes >= 1')
    if not 0.0 <= args.start_spread <= tasks.START_SPREAD_MAX:
        parser.error(f'--start-spread must be in [0, {tasks.START_SPREAD_MAX}] m')
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    wall = time.perf_counter()
    data = run(args)
    wall = time.perf_counter() - wall
    data['summary']['wall_time'] = round(wall, 2)
    print_summary(data, wall)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
