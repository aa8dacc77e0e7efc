# rfm: one command to serve, one to test. Both install first, so each works on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APT_PKGS := libosmesa6 libgl1 libegl1

export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install serve wheel test test-unit test-integration test-all lint bench clean default-checkpoint base-checkpoint

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
	  missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

serve: install
	$(BIN)/rfm serve --host $${HOST:-0.0.0.0} --port $${PORT:-8000}

# A wheel to install rfm where there is no checkout (a robot, an edge device): dist/rfm-VERSION-py3-none-any.whl.
# rfm is not on PyPI (the name `rfm` there is another project), so `pip install "WHEEL[edge]"` installs it.
wheel: install
	rm -rf build dist/rfm-*.whl
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .
	@ls dist/rfm-*.whl

# Tiers: unit (in-process, fast: under 3 min on 2 cores) and integration (real servers, subprocess CLI runs,
# MuJoCo rollouts, notebooks, training runs). `make test` lints, then runs both; slow and compat tests only in
# test-all.
# Test files run in parallel, one worker per core up to 4 (each holds ~1.5 GB); TEST_WORKERS=0 runs them in this
# process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install lint
	$(PYTEST) --durations=15

test-unit: install
	$(PYTEST) -m "not integration and not slow and not compat"

test-integration: install
	$(PYTEST) -m "integration and not slow and not compat"

test-all: install
	$(PYTEST) -m ""

lint: install
	$(BIN)/ruff check rfm serving tests bench
	$(BIN)/vermin -q -t=3.10- --violations --no-tips --eval-annotations rfm serving

bench: install
	$(BIN)/python bench/latency.py

# The bundled default checkpoint, reproducible from one command (CPU: about 3 h on 2 cores, plus ~1 h of evaluation):
# 50 scripted demos per MT10 task, the relative-points chain of three 6,000 x 8 cycles, one DAgger round on all ten
# tasks and one on reach, all through the server (examples/default_checkpoint.sh says each stage; docs/RESULTS.md
# has its numbers). Evaluated on 50 unseen seeds per task re-planning every step and executing
# 8 actions per request, and with paraphrased instructions.
DEFAULT_RUNS ?= runs/default-recipe

default-checkpoint: install
	RFM=$(BIN)/rfm examples/default_checkpoint.sh $(DEFAULT_RUNS)
	$(BIN)/rfm eval --checkpoint checkpoints/default --tasks mt10 --episodes 50 --workers 2 --action-steps 1 \
	  --out docs/results/default-action-steps-1-mt10.json --update-card
	$(BIN)/rfm eval --checkpoint checkpoints/default --tasks mt10 --episodes 50 --workers 2 --action-steps 8 \
	  --out docs/results/default-action-steps-8-mt10.json --update-card
	$(BIN)/rfm eval --checkpoint checkpoints/default --tasks mt10 --episodes 50 --workers 2 --action-steps 1 \
	  --paraphrase --out docs/results/default-action-steps-1-mt10-paraphrase.json --update-card

# checkpoints/base, the checkpoint to adapt to a new task, sized for 2 CPU cores (about 40 min of training, 40 min of
# evaluation): checkpoints/default (MT10 only) continued 10,000 x 8 steps on 20 scripted demos of each of the 38
# pretraining tasks (rfm.sim.metaworld.BASE38_TASKS), data and init checked against the 38 and the check recorded in
# its card, then evaluated on 20 unseen episodes per task. On a GPU, examples/pretrain_base.sh's defaults pretrain
# the small preset from scratch instead.
BASE_RUNS ?= runs/base-recipe

base-checkpoint: install
	RFM=$(BIN)/rfm INIT=checkpoints/default STEPS=10000 BATCH=8 LR=5e-4 WORKERS=2 CACHE_GB=8 \
	  TRAIN_ARGS="--num-workers 1 --threads 2" examples/pretrain_base.sh 20 $(BASE_RUNS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
