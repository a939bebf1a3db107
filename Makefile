# The two commands of the README, on a bare Debian/Ubuntu machine with Python 3.11 and no ROS:
#   make demo   set everything up, then run the main job
#   make test   set everything up, then run every test
# Both create .venv in the repository root and install the package and its dependencies there
# (ROS 2 Jazzy comes from the ros-jazzy-* wheels on PyPI). Re-runs reuse .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# sim_arm's ALOHA scene (robot: aloha) is gym-aloha's MJCF and meshes, read from its package
# folder and never imported: --no-deps, as its pins (mujoco < 3.9, dm-control) are not ours.
ALOHA_ASSETS := 'gym-aloha==0.1.5'
FAST_WORKERS ?= 2
# Isolated, localhost-only DDS for everything make starts.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-fast test-python demo demo-policy demo-policy-short sim-eval aloha-expert \
  aloha-demos gpu-check gpu-wheels openpi-client-venv clean

setup: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-sim.txt requirements-eval.txt requirements-train.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[ros,dev,sim,eval,train]'
	$(PY) -m pip install --quiet --no-deps $(ALOHA_ASSETS)
	touch $(STAMP)

# Every test, in two runs: those that stay in this process on both cores (as test-fast, with the
# slow and gpu ones), then those that talk DDS or start processes one at a time (their timing is
# the product's: rates, watchdogs). PYTEST_ARGS go to both; a run that collects nothing (exit 5)
# is fine only when the other ran tests.
test: $(STAMP)
	@OMP_NUM_THREADS=1 $(PY) -m pytest test -m 'not dds and not process' -ra -n $(FAST_WORKERS) \
	  --dist loadscope $(PYTEST_ARGS); a=$$?; \
	$(PY) -m pytest test -m 'dds or process' -ra $(PYTEST_ARGS); b=$$?; \
	if [ $$a -eq 5 ] && [ $$b -eq 5 ]; then echo 'make test: pytest collected no tests; that is a failure here'; exit 1; fi; \
	for rc in $$a $$b; do if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi; done

# The tests that stay in this process and are quick (under a minute on 2 cores): not the ones
# that talk DDS or start processes (test/marker_rules.py keeps those marked), nor slow or gpu.
# One pytest-xdist worker per core, each with one torch thread (two threads each oversubscribe
# the cores), a test module per worker (its module fixtures load once).
test-fast: $(STAMP)
	@OMP_NUM_THREADS=1 $(PY) -m pytest test -m 'not dds and not process and not slow and not gpu' \
	  -q -p no:cacheprovider -n $(FAST_WORKERS) --dist loadscope $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'make test-fast: pytest collected no tests; that is a failure here'; exit 1; fi; \
	exit $$rc

# The tests that need no DDS (pytest -m 'not dds') on another Python, in a venv of its own:
#   make test-python PYVER=3.12   (Jazzy's Python; PYVER=3.10 for Humble's)
# The interpreter is pyenv's ~/.pyenv/versions/$(PYVER).*/bin/python, or PYVER_PYTHON=/path. The
# venv installs what `make setup` does; on Pythons other than 3.11 torch comes from PyPI (its CUDA
# build, several GB of wheels, downloaded once per venv).
PYVER ?= 3.12
PYVER_PYTHON ?= $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/$(PYVER).*/bin/python)))
PYVER_VENV := .venv-py$(PYVER)
PYVER_STAMP := $(PYVER_VENV)/.installed

$(PYVER_STAMP): setup.py requirements.txt requirements-sim.txt requirements-eval.txt requirements-train.txt
	@test -n '$(PYVER_PYTHON)' || { echo 'make test-python: no Python $(PYVER) in ~/.pyenv/versions;' \
	  'pyenv install $(PYVER), or pass PYVER_PYTHON=/path/to/python$(PYVER)'; exit 1; }
	$(PYVER_PYTHON) -m venv $(PYVER_VENV)
	$(PYVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYVER_VENV)/bin/python -m pip install --quiet -e '.[ros,dev,sim,eval,train]'
	$(PYVER_VENV)/bin/python -m pip install --quiet --no-deps $(ALOHA_ASSETS)
	touch $(PYVER_STAMP)

test-python: $(PYVER_STAMP)
	@$(PYVER_VENV)/bin/python --version
	@$(PYVER_VENV)/bin/python -m pytest test -m 'not dds' -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'make test-python: pytest collected no tests; that is a failure here'; exit 1; fi; \
	exit $$rc

# openpi's reference client (PyPI openpi-client) in a venv of its own: it pins numpy < 2. The
# vla_serve tests drive the server with it (they run this target when the venv is missing).
# typing_extensions: its websocket client imports it without declaring it.
OPENPI_VENV := .venv-openpi
openpi-client-venv: $(OPENPI_VENV)/.installed

$(OPENPI_VENV)/.installed:
	$(PYTHON) -m venv $(OPENPI_VENV)
	$(OPENPI_VENV)/bin/python -m pip install --quiet 'openpi-client==0.1.2' typing_extensions
	touch $@

# ROBOT=aloha: the simulated ALOHA driven by the OpenVLA-OFT ALOHA miniature at 25 Hz
# (config/aloha.yaml); DEMO_ARGS go to the demo (--seconds, --seed, --model, ...).
ROBOT ?= gripper
demo: $(STAMP)
	$(PY) -m vla_ros.closed_loop.demo --robot $(ROBOT) $(DEMO_ARGS)

# The demo's trained policy from scratch, in six rounds (DAgger; docs/closed_loop.md has each
# stage's wall time on 2 CPU cores):
# 1. demonstrations: 1080 expert reach episodes (360 layouts x the 3 objects, seeded starts),
#    recorded as bags by two recorders side by side (own ROS domains);
# 2. round 1: the miniature OpenVLA-OFT fully fine-tuned on 1050 of them (the last 30 of the
#    first recorder, 10 unseen layouts, validate), statistics under sim_reach_demos;
# 3. corrections: round 1 drives the arm through vla_node in 300 new episodes (about 100 more
#    layouts), the expert labels every step and takes over 30% of them;
# 4. round 2: from round 1, on 600 of the demonstrations and the corrections, with OFT's image
#    augmentation, statistics under sim_reach;
# 5. round 3: round 2 drives 150 more corrected episodes while a recorder beside it takes 390
#    demonstrations on 130 new layouts; from round 2, on those alone (17 365 samples), 6000
#    steps, statistics under sim_reach_round3;
# 6. round 4: round 3 drives 300 corrected episodes; from round 3 on those, the 150 round 2
#    drove and round 3's demonstrations (31 502 samples), 6000 steps;
# 7. round 5: round 4 drives 300 more; from round 4 on those, the 300 round 3 drove and the same
#    demonstrations (37 628 samples; the 150 round 2 drove are left out, for memory), 6000
#    steps;
# 8. round 6: round 5 drives 240 episodes that the expert only labels (no takeover, failures
#    kept); from round 5 on all 840 corrections and the same demonstrations (50 547 samples,
#    about 17 GB in use), 3000 steps. Its trained parameters are copied into
#    vla_ros/training/assets/reach/ (what `make demo` rebuilds it from), its statistics under
#    sim_reach.
# The state layout is the shipped run record's (the one place it is written; the demo reads it
# too): where the gripper is (its position twice, from ee_pose and from the virtual joints:
# OFT's LIBERO state has 8 values) and the fingers; the orientation, constant in the
# demonstrations, would only feed noise stretched to [-1, 1].
DEMO_POLICY_OUT ?= out/demo-policy
RECORD = ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST $(CURDIR)/$(VENV)/bin/vla_record_demos \
  --task reach --seconds 10
CORRECT = $(RECORD) --episodes 150 --policy reach --takeover 0.3
# Checkpoint $(1) (statistics key $(2)) drives corrected episodes (CORRECT's 2 x 150 unless
# $(6) says otherwise), two recorders side by side: seeds $(3) and $(3) + 150 on, into
# corrections-$(4) and corrections-$(5); $(6): more recorder options (the later of a repeated
# option wins).
define CORRECTIONS
	cd $(DEMO_POLICY_OUT) && \
	{ ROS_DOMAIN_ID=41 $(CORRECT) --policy-model $(1) --unnorm-key $(2) --seed $(3) \
	    --out corrections-$(4) $(6) & a=$$!; \
	  ROS_DOMAIN_ID=42 $(CORRECT) --policy-model $(1) --unnorm-key $(2) --seed $$(($(3) + 150)) \
	    --out corrections-$(5) $(6) & b=$$!; \
	  wait $$a && wait $$b; }
endef
# Rounds 4 to 6, one call each: round $(1) drives corrected episodes (seeds $(2) on, into
# corrections-$(3) and -$(4); $(9): recorder options); then from round $(1), on the corrections
# $(5) and round 3's demonstrations, into $(6), statistics under sim_reach_round$(7), for the
# schedule $(8).
define CORRECTION_ROUND
	$(call CORRECTIONS,round$(1),sim_reach_round$(1),$(2),$(3),$(4),$(9))
	proprio=$$($(PY) -m vla_ros.closed_loop.demo --print-proprio) && cd $(DEMO_POLICY_OUT) && \
	$(FINETUNE_ARGS) corrections-[$(5)]/episode_* demos-c/episode_0[0-2]* \
	  demos-c/episode_03[0-5]* --val-bags demos-c/episode_03[6-8]* --warmup-steps 100 \
	  --base round$(1) --out $(6) --unnorm-key sim_reach_round$(7) --proprio $$proprio \
	  --image-aug $(8)
endef
# Round 6's corrections: 240 episodes, the expert only labels (no takeover), and the failures
# are kept: round 5 comes to rest with a finger over the red cube, and those states need labels.
PURE_DAGGER = --episodes 120 --takeover 0 --keep-failures
FINETUNE_ARGS = $(CURDIR)/$(VENV)/bin/vla_finetune \
  --camera-topics camera/image_raw wrist_camera/image_raw --rate 10 --center-crop --full \
  --batch-size 8 --val-every 1000 --save-every 1000
FINETUNE = $(FINETUNE_ARGS) --val-bags demos-a/episode_05[1-3]* --warmup-steps 200
DEMOS = demos-a/episode_0[0-4]* demos-a/episode_050* demos-b/episode_*
# Round 2 keeps the frames of every bag in memory (150 kB a camera image): all the demonstrations
# and the corrections would take more than the 24 GB of the 2-core machine, so it takes the first
# 300 of each recorder (200 layouts; round 1 has learned all 350).
HALF_DEMOS = demos-a/episode_0[0-2]* demos-b/episode_0[0-2]*
demo-policy: $(STAMP)
	rm -rf $(DEMO_POLICY_OUT)
	mkdir -p $(DEMO_POLICY_OUT)
	cd $(DEMO_POLICY_OUT) && \
	{ ROS_DOMAIN_ID=41 $(RECORD) --episodes 540 --seed 1239 --out demos-a & a=$$!; \
	  ROS_DOMAIN_ID=42 $(RECORD) --episodes 540 --seed 1779 --out demos-b & b=$$!; \
	  wait $$a && wait $$b; }
	$(VENV)/bin/vla_tiny_model --oft libero $(DEMO_POLICY_OUT)/base
	proprio=$$($(PY) -m vla_ros.closed_loop.demo --print-proprio) && cd $(DEMO_POLICY_OUT) && \
	$(FINETUNE) $(DEMOS) --base base --out round1 --unnorm-key sim_reach_demos \
	  --proprio $$proprio --steps 10000 --decay-after 8000
	$(call CORRECTIONS,round1,sim_reach_demos,5000,a,b)
	proprio=$$($(PY) -m vla_ros.closed_loop.demo --print-proprio) && cd $(DEMO_POLICY_OUT) && \
	$(FINETUNE) $(HALF_DEMOS) corrections-a/episode_* corrections-b/episode_* --base round1 \
	  --out round2 --unnorm-key sim_reach --proprio $$proprio --image-aug \
	  --steps 5000 --decay-after 3800
	cd $(DEMO_POLICY_OUT) && \
	{ ROS_DOMAIN_ID=41 $(CORRECT) --policy-model round2 --unnorm-key sim_reach --seed 6000 \
	    --out corrections-c & a=$$!; \
	  ROS_DOMAIN_ID=42 $(RECORD) --episodes 390 --seed 9000 --out demos-c & b=$$!; \
	  wait $$a && wait $$b; }
	proprio=$$($(PY) -m vla_ros.closed_loop.demo --print-proprio) && cd $(DEMO_POLICY_OUT) && \
	$(FINETUNE_ARGS) corrections-c/episode_* demos-c/episode_0[0-2]* demos-c/episode_03[0-5]* \
	  --val-bags demos-c/episode_03[6-8]* --warmup-steps 100 --base round2 --out round3 \
	  --unnorm-key sim_reach_round3 --proprio $$proprio --image-aug --steps 6000 \
	  --decay-after 4500
	$(call CORRECTION_ROUND,3,7000,d,e,cde,round4,4,--steps 6000 --decay-after 4500)
	$(call CORRECTION_ROUND,4,7300,f,g,defg,round5,5,--steps 6000 --decay-after 4500)
	$(call CORRECTION_ROUND,5,7600,h,i,defghi,trained,6,--steps 3000 --decay-after 2000,$(PURE_DAGGER))
	$(PY) -m vla_ros.training.demo_policy --ship $(DEMO_POLICY_OUT)/trained

SHORT_POLICY_OUT ?= out/demo-policy-short
# A two-hour recipe for the same policy, run end to end once (issue 21's sixth session: 112 min
# on 2 idle cores; docs/closed_loop.md has each stage's wall time): it misses the goal, its
# rounds driving alone reach 6-8% of their episodes, so nothing is shipped from it and
# demo-policy stays the recipe of the shipped policy. Kept to measure cheaper recipes against.
# 1. demonstrations: 360 expert reach episodes (120 layouts x the 3 objects, seeded starts),
#    two recorders side by side (own ROS domains); the last 10 of each recorder validate;
# 2. round 1: the miniature OpenVLA-OFT (random weights) fully fine-tuned on the other 340,
#    with OFT's image augmentation, 3000 steps;
# 3. rounds 2 to 4: the round before drives 180 new episodes through vla_node and arm_bridge
#    while the expert labels every step (on round 1's episodes it also takes over 30% of the
#    steps; later rounds drive alone), failures kept; then `vla_finetune` from the round before
#    on every correction so far and the demonstrations, 2000 steps.
# Two recorders side by side, $(1) episodes each: seeds $(2) on into $(3)-a and $(2) + $(1) on
# into $(3)-b; $(4): more recorder options.
define RECORD_PAIR
	cd $(SHORT_POLICY_OUT) && \
	{ ROS_DOMAIN_ID=41 $(RECORD) --episodes $(1) --seed $(2) --out $(3)-a $(4) & a=$$!; \
	  ROS_DOMAIN_ID=42 $(RECORD) --episodes $(1) --seed $$(($(2) + $(1))) --out $(3)-b $(4) & \
	  b=$$!; wait $$a && wait $$b; }
endef
# Round $(1) drives 2 x 90 episodes from seed $(2) on, the expert taking over a share $(3) of
# the steps; the failures are kept (their states are the ones the policy needs labels for).
SHORT_CORRECTIONS = $(call RECORD_PAIR,90,$(2),corrections-$(1),--policy reach \
  --policy-model round$(1) --unnorm-key sim_reach_round$(1) --takeover $(3) --keep-failures)
# Round $(2) from $(1) on the demonstrations and the bags $(3), $(4) steps (the learning rate
# falls tenfold after $(5)), statistics under sim_reach_round$(2).
define SHORT_ROUND
	proprio=$$($(PY) -m vla_ros.closed_loop.demo --print-proprio) && cd $(SHORT_POLICY_OUT) && \
	$(FINETUNE_ARGS) demos-[ab]/episode_00* demos-[ab]/episode_01[0-6]* $(3) \
	  --val-bags demos-[ab]/episode_017* --image-aug --warmup-steps 100 --base $(1) \
	  --out round$(2) --unnorm-key sim_reach_round$(2) --proprio $$proprio --steps $(4) \
	  --decay-after $(5)
endef
demo-policy-short: $(STAMP)
	rm -rf $(SHORT_POLICY_OUT)
	mkdir -p $(SHORT_POLICY_OUT)
	$(call RECORD_PAIR,180,9000,demos)
	$(VENV)/bin/vla_tiny_model --oft libero $(SHORT_POLICY_OUT)/base
	$(call SHORT_ROUND,base,1,,3000,2400)
	$(call SHORT_CORRECTIONS,1,5000,0.3)
	$(call SHORT_ROUND,round1,2,corrections-1-[ab]/episode_*,2000,1500)
	$(call SHORT_CORRECTIONS,2,6000,0)
	$(call SHORT_ROUND,round2,3,corrections-[12]-[ab]/episode_*,2000,1500)
	$(call SHORT_CORRECTIONS,3,7000,0)
	$(call SHORT_ROUND,round3,4,corrections-[123]-[ab]/episode_*,2000,1500)

# The success rates in docs/closed_loop.md: the trained and the random miniature, 50 seeded reach
# episodes each through the live nodes (seeds 0-49: layouts no training or correction episode
# used), from home and from seeded starts (up to 8 cm per axis, as the demonstrations), each
# pair compared with Fisher's exact test (about 4 x 10 min).
SIM_EVAL = $(VENV)/bin/vla_sim_eval --episodes 50 --seed 0 --task reach --seconds 10
sim-eval: $(STAMP)
	$(PY) -m vla_ros.training.demo_policy out/sim-eval/trained --force
	$(VENV)/bin/vla_tiny_model --oft libero out/sim-eval/random --force
	for start in home spread; do spread=$$([ $$start = spread ] && echo 0.08 || echo 0); \
	  $(SIM_EVAL) --model out/sim-eval/trained --unnorm-key sim_reach --policy reach \
	    --start-spread $$spread --out out/sim-eval/trained-$$start && \
	  $(SIM_EVAL) --model out/sim-eval/random --unnorm-key synth_oft_libero \
	    --policy openvla_oft --start-spread $$spread --out out/sim-eval/random-$$start && \
	  $(VENV)/bin/vla_sim_eval --compare out/sim-eval/trained-$$start \
	    out/sim-eval/random-$$start --out out/sim-eval/$$start || exit 1; done

# The simulated ALOHA's scripted expert on 20 seeded transfer_cube episodes (ROS-free, < 1 min):
# it prints each episode and the success count.
aloha-expert: $(STAMP)
	$(PY) -m vla_ros.sim.aloha_expert --episodes 20

# The same expert recorded as bags through the live nodes (sim_arm robot aloha, arm_bridge's joint
# trajectories, 25 Hz, three 224x224 cameras at 25 Hz), 20 seeded episodes into
# ALOHA_DEMOS_OUT; it prints each episode and the success count (docs/vla_eval.md has the
# numbers).
ALOHA_DEMOS_OUT ?= out/aloha-demos
aloha-demos: $(STAMP)
	rm -rf $(ALOHA_DEMOS_OUT)
	$(VENV)/bin/vla_record_demos --task transfer_cube --episodes 20 --seed 0 \
	  --out $(ALOHA_DEMOS_OUT) --sim-param camera_width:=224 --sim-param camera_height:=224 \
	  --sim-param camera_rate_hz:=25.0

# On the lent GPU machine as it is: its own python3 (no venv, no network, no ROS), the working tree
# and the wheels in .whl/ (`make gpu-wheels`, here): GPU tests, decode-step profile, OpenVLA-7B and
# OpenVLA-OFT-7B benchmarks, all into GPU_OUT (vla_ros/bench/gpu_check.py, docs/benchmarks.md).
GPU_PY ?= python3
GPU_OUT ?= out/gpu-check
gpu-check:
	$(GPU_PY) -m vla_ros.bench.gpu_check --out $(GPU_OUT) --wheels .whl $(GPU_ARGS)

# What the GPU machine's Python 3.12 lacks, as wheels for x86-64 Linux in .whl/ (git ignores it).
GPU_WHEELS := simplejpeg==1.9.0
gpu-wheels: $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) .venv-py* $(OPENPI_VENV) build *.egg-info .pytest_cache .hypothesis
