# The two commands of the README, on a bare Debian/Ubuntu machine with Python 3.11 and no ROS:
#   make demo   set everything up, then run the main job
#   make test   set everything up, then run every test
# Both create .venv in the repository root and install the package and its dependencies there
# (ROS 2 Jazzy comes from the ros-jazzy-* wheels on PyPI). Re-runs reuse .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Isolated, localhost-only DDS for everything make starts.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo gpu-check clean

setup: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-sim.txt requirements-eval.txt requirements-train.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[ros,dev,sim,eval,train]'
	touch $(STAMP)

test: $(STAMP)
	@$(PY) -m pytest test -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'make test: pytest collected no tests; that is a failure here'; exit 1; fi; \
	exit $$rc

demo: $(STAMP)
	$(PY) -m vla_ros.nodes.demo $(DEMO_ARGS)

# On a GPU machine: GPU tests, decode-step profile, OpenVLA-7B benchmark into docs/perf/, and the
# GPU table of docs/PERFORMANCE.md regenerated (see vla_ros/bench/gpu_check.py).
gpu-check: $(STAMP)
	$(PY) -m vla_ros.bench.gpu_check $(GPU_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
