# Chorus developer commands. `make test` on a fresh machine creates .venv, installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch; GPU users install a CUDA build of torch first and it is kept (pyproject asks torch>=2.4).
TORCH_PIN ?= torch==2.13.0

.PHONY: install postgres test lint format bench gpu-check loadtest clean serve image-smoke client browser-test screenshots demo-corpus demo-model demo-model-more demo-adapters demo-classifiers
HOST ?= 127.0.0.1
PORT ?= 8000

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# (PYTHONWARNINGS: setuptools warns on every editable install that a folder named like a package could shadow it;
# Chorus imports only chorus_* names, none of them a folder here.)
# Two distributions: the torch-free client (clients/, chorus-client) and the server that depends on it (chorus-asr).
$(VENV)/.installed: $(BIN)/python pyproject.toml clients/pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_PIN)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e ./clients -e ".[test,lint]"
	touch $@

# Runtime only (plus PyAV for m4a/mp4/webm uploads): what `make serve` needs.
$(VENV)/.installed-serve: $(BIN)/python pyproject.toml clients/pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH_PIN)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e ./clients -e ".[av,lm]"
	touch $@

# Starts Chorus on the embedded default (./data/store; the bundled demo model) at http://$(HOST):$(PORT).
serve: $(VENV)/.installed-serve
	@echo "chorus: the \`chorus\` command is in $(VENV)/bin; in another terminal run: . $(VENV)/bin/activate"
	$(BIN)/chorus serve --host $(HOST) --port $(PORT)

install: $(VENV)/.installed

# PostgreSQL's server binaries (Debian's package; root or sudo) for the tests that start throwaway PostgreSQL
# servers; without them those tests skip and say so. CI (.ci/run) runs this first.
postgres:
	tools/install-postgres.sh

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

# Every comparison of docs/benchmarks.md in one run (tens of minutes on a 2-core CPU); rewrites that file and its plot.
# DEVICE=cuda (or cuda:N) runs them on a GPU: `make bench DEVICE=cuda`.
DEVICE ?= auto
bench: install
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks --device $(DEVICE)

# First look at a GPU (a few minutes): the CUDA tests, `chorus serve` on the GPU (/readyz device and dtype, one
# transcription), the backbone, mixed-batch and served-path benchmarks. Needs a CUDA build of torch in .venv.
gpu-check: install
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e ".[bench]"
	tools/gpu-check.sh

# Tenants sharing one server: capacity, noisy neighbour, 3x overload, idle connections (a few minutes;
# BEFORE=<another checkout> measures it first, side by side). Figures go to docs/reliability.md.
loadtest: install
	$(BIN)/python -m benchmarks.loadtest --json build/loadtest.json $(if $(BEFORE),--before $(BEFORE))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Builds the Dockerfile for real with podman from a locally made Debian base and a wheelhouse, then serves /readyz
# and one transcription from the image's file system (root and Debian needed; tools/image-smoke.sh, docs/deploy.md).
image-smoke:
	tools/image-smoke.sh

# The browser console in Debian's chromium driven by Playwright, a WAV as the fake microphone (about a minute).
# Installs chromium with apt when it is missing (root), and the `browser` extra. Screenshots go to a temporary
# directory: the tracked docs/console-*.png change only with `make screenshots`.
browser-test: install
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e ".[browser]"
	env -u CHORUS_CONSOLE_SCREENSHOTS $(BIN)/pytest -q -m browser tests/console

# The same tests, writing their screenshots over docs/console-*.png (commit them when the console changed).
screenshots: install
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e ".[browser]"
	CHORUS_CONSOLE_SCREENSHOTS=docs $(BIN)/pytest -q -m browser tests/console

# The blocking client (clients/chorus_client/client.py) from the asyncio one; run after editing async_client.py.
client: install
	$(BIN)/python tools/unasync_client.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .bench build *.egg-info

# The bundled demo model (server/chorus_server/demo_model/) from scratch: system packages, synthetic corpus (data/demo/, not in
# git), backbone, four adapters trained side by side, samples, CER report. About 4.5 h on 2 CPU cores (corpus
# 7 min, backbone 220 min, adapters 35 min, report 5 min). `make demo-model-more` instead continues the shipped
# backbone for DEMO_MORE_MINUTES (how the shipped one was last trained) and retrains the adapters on it.
# See docs/demo-model.md.
DEMO_DATA ?= data/demo
DEMO_DIR := server/chorus_server/demo_model
DEMO_LANGS := fr de es it
DEMO_MORE_MINUTES ?= 75
CHORUS := $(BIN)/chorus
BACKBONE_ARGS = --train $(DEMO_DATA)/en/train.jsonl --valid $(DEMO_DATA)/en/valid.jsonl --out $(DEMO_DIR)/backbone \
	--threads 2 --batch-seconds 30 --eval-every 100

demo-corpus: install
	tools/install-demo-deps.sh
	$(CHORUS) dev make-corpus --out $(DEMO_DATA) --langs en --train-minutes 1200 --valid-minutes 10 --test-minutes 10
	$(CHORUS) dev make-corpus --out $(DEMO_DATA) --langs fr,de,es,it --train-minutes 60 --valid-minutes 8 --test-minutes 8

demo-model: demo-corpus
	$(CHORUS) dev train-backbone $(BACKBONE_ARGS) --run-dir $(DEMO_DATA)/runs/backbone --max-minutes 220
	$(MAKE) demo-adapters

demo-model-more: demo-corpus
	rm -rf $(DEMO_DATA)/runs/backbone-more
	$(CHORUS) dev train-backbone $(BACKBONE_ARGS) --init $(DEMO_DIR)/backbone --run-dir $(DEMO_DATA)/runs/backbone-more \
		--max-minutes $(DEMO_MORE_MINUTES) --lr 1e-3
	rm -rf $(addprefix $(DEMO_DATA)/runs/adapter-,$(DEMO_LANGS))
	$(MAKE) demo-adapters

demo-adapters:
	for lang in $(DEMO_LANGS); do \
		$(CHORUS) train-adapter --backbone $(DEMO_DIR)/backbone --lang $$lang \
			--train $(DEMO_DATA)/$$lang/train.jsonl --valid $(DEMO_DATA)/$$lang/valid.jsonl \
			--test $(DEMO_DATA)/$$lang/test.jsonl --out $(DEMO_DIR)/adapters/$$lang.safetensors \
			--run-dir $(DEMO_DATA)/runs/adapter-$$lang --threads 1 --max-minutes 35 --steps 4000 \
			--lr 2e-3 --warmup 30 --batch-seconds 20 --eval-every 40 & \
	done; wait
	$(CHORUS) dev demo-samples --data $(DEMO_DATA) --per-lang 5
	$(CHORUS) dev demo-report --data $(DEMO_DATA)

# The demo model's classifier adapters (docs/demo-model.md, "Classifier adapters"): `lid` (language ID over
# en/fr/de/es/it, bottlenecks in all 6 layers, attentive pooling) and `speakers` (speaker ID over 20 espeak-ng voices,
# with CHAPTER CNN adapters), and beside it the same speaker classifier without CNN adapters for the comparison.
# Language ID splits words and voices; speaker ID keeps the voices and splits the words. Three runs side by side
# (lid: 35 min, half its training utterances cut to random windows of at least 1 s, checkpoints chosen on a
# 1082-utterance validation split; speakers: 18 min each). The shipped lid was chosen among several runs by its
# accuracy on that split (docs/demo-model.md).
SPEAKER_VOICES := m1,m2,m3,m4,m5,m6,m7,m8,f1,f2,f3,f4,f5,croak,klatt,klatt2,klatt3,klatt4,klatt5,klatt6
LID_DATA ?= data/lid
LID_VALID_DATA ?= data/lidv
SPEAKER_DATA ?= data/speakers
LID_ARGS = --backbone $(DEMO_DIR)/backbone --label-field lang --name lid --task language-id --steps 6000 \
	$(foreach l,en $(DEMO_LANGS),--manifest $(LID_DATA)/$(l)/train.jsonl --valid $(LID_VALID_DATA)/$(l)/valid.jsonl \
	--test $(LID_DATA)/$(l)/test.jsonl) --eval-every 500 --batch-seconds 30 --threads 1 \
	--out $(DEMO_DIR)/adapters/lid.safetensors
demo-classifiers: install
	tools/install-demo-deps.sh
	$(CHORUS) dev make-corpus --out $(LID_DATA) --train-minutes 40 --valid-minutes 2 --test-minutes 3
	$(CHORUS) dev make-corpus --out $(LID_VALID_DATA) --train-minutes 0 --valid-minutes 10 --test-minutes 0
	$(CHORUS) dev make-corpus --out $(SPEAKER_DATA) --langs en --voices $(SPEAKER_VOICES) \
		--train-minutes 90 --valid-minutes 6 --test-minutes 8
	$(CHORUS) train-classifier $(LID_ARGS) --bottleneck-dim 32 --pooling attentive --lr 2e-3 --max-minutes 35 \
		--crop-seconds 1.0 --seed 1 & \
	for cnn in "" "--cnn-adapters"; do \
		$(CHORUS) train-classifier --backbone $(DEMO_DIR)/backbone --label-field variant --name speakers \
			--task speaker-id --manifest $(SPEAKER_DATA)/en/train.jsonl --valid $(SPEAKER_DATA)/en/valid.jsonl \
			--test $(SPEAKER_DATA)/en/test.jsonl --bottleneck-dim 16 $$cnn --cnn-dim 16 --steps 6000 \
			--max-minutes 18 --eval-every 150 --batch-seconds 30 --threads 1 \
			--out $$( [ -n "$$cnn" ] && echo $(DEMO_DIR)/adapters/speakers.safetensors || echo $(SPEAKER_DATA)/speakers-no-cnn.safetensors ) & \
	done; wait
