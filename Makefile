# NeuROK: `make help` lists the targets. Every target sets up .venv on first use.
SHELL := /bin/bash
PY := .venv/bin/python
NEUROK := .venv/bin/neurok
STAMP := .venv/.installed
# three.js for `neurok serve`'s playground: npm's build, vendored into the package (git-ignored)
THREE_JS := platform/neurok/serve/vendor/three.module.min.js

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@echo "compiling the latent simulator's loop (numba, cached: about a minute, once)"
	$(PY) -c "from neurok.dynamics.simulator import warm_up; warm_up()"
	touch $(STAMP)

setup: $(STAMP) $(THREE_JS) ## create .venv and install the project with its dev extra (and three.js)

three: $(THREE_JS) ## vendor three.js for `neurok serve`'s playground (npm pack of the pinned release)

$(THREE_JS): scripts/build_three.py
	python3 scripts/build_three.py

demo: $(STAMP) ## generate the default dataset, check it, train the base model on it, evaluate it (table, video, viewer)
	$(NEUROK) data generate datasets/default.yaml --out datasets/out/default.zarr
	$(NEUROK) data validate datasets/out/default.zarr
	$(NEUROK) data inspect datasets/out/default.zarr
	$(NEUROK) train pipelines/train.yaml data.store=datasets/out/default.zarr run_name=demo \
		trainer.max_steps=300 trainer.max_minutes=0
	$(NEUROK) eval --model outputs/runs/demo/checkpoints/last.ckpt --data datasets/out/default.zarr \
		split=test objects=1 rollouts=1 dynamics.simulator.frames=8 dynamics.ik.iterations=50 \
		out_dir=outputs/eval/demo

eval: $(STAMP) ## evaluate a checkpoint: make eval model=outputs/runs/NAME/checkpoints/last.ckpt [args="objects=2"]
	$(NEUROK) eval --model $(model) --data $(or $(data),datasets/out/default.zarr) $(args)

train: $(STAMP) ## train in one process: make train args="preset=tiny trainer.max_steps=100"
	$(NEUROK) train pipelines/train.yaml $(args)

mlflow-ui: $(STAMP) ## browse the local runs (outputs/mlflow.db) at http://127.0.0.1:5000
	.venv/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --host 127.0.0.1 --port 5000

test: $(STAMP) $(THREE_JS) ## fast test suite and lint (what CI runs)
	$(PY) -m pytest -q
	.venv/bin/ruff check platform tests benchmarks k8s scripts

test-full: $(STAMP) $(THREE_JS) ## every test, slow end-to-end ones included
	$(PY) -m pytest -q -m ''

test-unit: $(STAMP) ## unit tests only (a module or a function against known answers; about 3 min here)
	$(PY) -m pytest -q -m 'not slow and not e2e'

test-e2e: $(STAMP) $(THREE_JS) ## end-to-end tests only: commands, Ray clusters and services through the real stack
	$(PY) -m pytest -q -m 'e2e'

lint: $(STAMP) ## ruff
	.venv/bin/ruff check platform tests benchmarks k8s scripts

faults: $(STAMP) ## the fault campaign: plant every fault, write its scoreboard to docs/reliability.md
	mkdir -p outputs
	$(PY) -m pytest -q tests/faults -m '' --junitxml=outputs/faults.xml -o junit_family=xunit1; \
		$(PY) scripts/fault_scoreboard.py outputs/faults.xml docs/reliability.md

bench: $(STAMP) ## benchmarks: JSON + markdown table under benchmarks/results/
	$(PY) benchmarks/run.py

.PHONY: help setup three demo train eval mlflow-ui test test-full test-unit test-e2e lint faults bench

# ---- deployment (issue 7): image, Kubernetes manifests, MLflow server -------------------------
image: $(STAMP) ## container image: variant=gpu|cpu (needs a Docker engine; linted offline by make test)
	@tag=neurok:0.1.0-$(or $(variant),gpu); \
	if timeout 20 docker info >/dev/null 2>&1; then \
		docker build --build-arg VARIANT=$(or $(variant),gpu) -t $$tag . ; \
	else \
		echo "make image: no Docker engine reachable (docker info failed), nothing built."; \
		echo "  Build where one runs: docker build --build-arg VARIANT=$(or $(variant),gpu) -t $$tag ."; \
		echo "  Here the Dockerfile is checked by hadolint in tests/test_k8s.py."; \
		exit 1; \
	fi

k8s-validate: $(STAMP) ## render every k8s/ overlay and validate it strictly (schemas + policy), offline
	$(PY) k8s/validate.py

k8s-render: $(STAMP) ## print an overlay's manifests: make k8s-render overlay=gpu | kubectl apply -f -
	@$(PY) k8s/validate.py --render $(or $(overlay),cpu-dev)

mlflow-server: $(STAMP) ## local MLflow server: db=sqlite|postgres (a real PostgreSQL on 127.0.0.1)
	$(PY) scripts/mlflow_server.py --db $(or $(db),sqlite) --port $(or $(port),5000)

.PHONY: image k8s-validate k8s-render mlflow-server

# ---- distributed training (issue 5): Ray Train DDP on a local Ray cluster, or on RAY_ADDRESS -------
train-cluster: $(STAMP) $(if $(or $(RAY_ADDRESS),$(findstring data.store=,$(args))),,datasets/out/default.zarr) ## DDP on Ray (local 2-node cluster, or RAY_ADDRESS): make train-cluster args="trainer.max_steps=100"
	$(PY) scripts/train_cluster.py --config $(or $(config),pipelines/cluster-local.yaml) $(args)

datasets/out/default.zarr: | $(STAMP)
	$(NEUROK) data generate datasets/default.yaml --out $@

.PHONY: train-cluster

# ---- sweeps and the registry (issue 6) ---------------------------------------------------------
tune: $(STAMP) datasets/out/default.zarr ## Ray Tune sweep, best trial registered: make tune args="search.num_samples=4 search.algorithm=random"
	$(NEUROK) tune tune/latent_arch.yaml $(args)

.PHONY: tune

# ---- the science table (issue 14): NeuROK against PCA and retrieval on unseen objects and categories ----
# A fixed number of steps, not minutes (pipelines/train-science.yaml), so the table does not depend on the
# machine's speed or load.
science: $(STAMP) datasets/out/science.zarr ## train on the science recipe (4000 steps x 64) and write outputs/science/summary.md
	$(NEUROK) train pipelines/train-science.yaml $(if $(threads),trainer.threads=$(threads)) $(args)
	$(NEUROK) eval --config pipelines/science.yaml --model outputs/runs/science/checkpoints/last.ckpt \
		--data datasets/out/science.zarr

datasets/out/science.zarr: | $(STAMP)
	$(NEUROK) data generate datasets/science.yaml --out $@

.PHONY: science
