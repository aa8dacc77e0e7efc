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

.PHONY: install serve test test-all lint bench clean default-checkpoint

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
	  missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

serve: install
	$(BIN)/rfm serve --host $${HOST:-0.0.0.0} --port $${PORT:-8000}

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

lint: install
	$(BIN)/ruff check rfm serving tests bench

bench: install
	$(BIN)/python bench/latency.py

# The bundled default checkpoint, reproducible from one command (CPU: about 3-4 h on 2 cores, evaluations included).
# MT10, 50 demos/task from jittered starts (seeds 0.. and 1000..), 2 x 128 px (corner, topview), lossless, with the
# simulator's object/goal positions and camera projections; tiny + 16 keypoints per camera trained onto the objects
# and the goal (--keypoint-loss, heatmaps on their own channels), 3 of them triangulated into world-frame points
# (vision_points), 6,000 steps (session 9, mt10-50-kppoints); then one DAgger round through the server
# (examples/dagger_round.sh: 4 simulated robots, 20 expert-labelled episodes per task, a 2,000-step fine-tune on the
# demos + the recording with instruction variants; session 10, ft-s10-dagger1). Evaluated on 50 unseen seeds per
# task, and with paraphrased instructions on the first 10. docs/RESULTS.md has every step's numbers.
DEFAULT_DATA   ?= data/mt10-20-128ct-j15-env
DEFAULT_DATA2  ?= data/mt10-30-128ct-j15-s1000-env
DEFAULT_SCRATCH ?= runs/mt10-50-kppoints
DEFAULT_RUN    ?= runs/ft-s10-dagger1

default-checkpoint: install
	test -d $(DEFAULT_DATA) || $(BIN)/rfm data generate metaworld --tasks mt10 --episodes 20 \
	  --cameras corner,topview --size 128 --start-jitter 15 --out $(DEFAULT_DATA)
	test -d $(DEFAULT_DATA2) || $(BIN)/rfm data generate metaworld --tasks mt10 --episodes 30 --seed 1000 \
	  --cameras corner,topview --size 128 --start-jitter 15 --out $(DEFAULT_DATA2)
	$(BIN)/rfm train --dataset $(DEFAULT_DATA),$(DEFAULT_DATA2) --out $(DEFAULT_SCRATCH) --preset tiny --head chunk \
	  --steps 6000 --batch-size 32 --lr 5e-4 --warmup-steps 200 --ema-decay 0.995 --chunk-size 16 --save-every 250 \
	  --balance tasks --keypoint-loss 1 --model '{"vision_keypoint_source": "branch", "vision_points": 3}' \
	  --num-workers 1 --frame-cache-gb 5 --resume
	RFM=$(BIN)/rfm TRAIN_ARGS="--instruction-variants metaworld --keypoint-loss 1 --num-workers 1 --frame-cache-gb 9" \
	  examples/dagger_round.sh \
	  $(DEFAULT_SCRATCH)/checkpoint $(DEFAULT_DATA),$(DEFAULT_DATA2) $(DEFAULT_RUN)
	rm -rf checkpoints/default.new && cp -r $(DEFAULT_RUN)/checkpoint checkpoints/default.new
	rm -rf checkpoints/default.new/training_state checkpoints/default && mv checkpoints/default.new checkpoints/default
	$(BIN)/rfm eval --checkpoint checkpoints/default --tasks mt10 --episodes 50 --workers 2 \
	  --out docs/results/default-mt10.json --update-card
	$(BIN)/rfm eval --checkpoint checkpoints/default --tasks mt10 --episodes 10 --paraphrase --workers 2 \
	  --out docs/results/default-mt10-paraphrase.json --update-card

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
