# Two entry points, each doing all of its own set-up from a clean clone:
#   make demo   train, deploy, serve and trace one prediction end to end
#   make test   ruff and mypy, then unit, integration, end-to-end and real-server tests on a real broker and chDB
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BROKER_JARS := deploy/local/kafka/target/lib/.resolved

.PHONY: demo test lint typecheck docs setup broker model-servers mlflow-server deploy-tools browser-tools k8s-tools image screenshots clean

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

broker: $(BROKER_JARS)

$(BROKER_JARS): deploy/local/kafka/pom.xml
	rm -rf deploy/local/kafka/target/lib
	mvn -q -B -f deploy/local/kafka/pom.xml dependency:copy-dependencies \
		-DoutputDirectory=target/lib -DincludeScope=runtime
	touch $@

# MLServer and MLflow, which tests/real_servers and bench/real_servers.py put provline in front of,
# each in a virtualenv of its own (never in .venv), from the pinned files in deploy/local/model_servers.
# The training job runs in the mlflow one, with provline installed there without its dependencies
# (the producers' own are in its requirements): re-installed when pyproject.toml changes.
# mlflow-server is full MLflow (tracking server, SQLite backend, artifact proxy) that
# tests/real_servers/test_mlflow_bridge.py starts and `provline mlflow import` reads; the mlflow venv
# is mlflow-skinny for the scoring server, which has no tracking server.
MODEL_SERVERS := deploy/local/model_servers
VENVS := build/venvs
MLSERVER_INSTALLED := $(VENVS)/mlserver/.installed
MLFLOW_INSTALLED := $(VENVS)/mlflow/.installed
MLFLOW_SERVER_INSTALLED := $(VENVS)/mlflow-server/.installed
JOB_PROVLINE_INSTALLED := $(VENVS)/mlflow/.provline-installed

model-servers: $(MLSERVER_INSTALLED) $(JOB_PROVLINE_INSTALLED) $(MLFLOW_SERVER_INSTALLED)

mlflow-server: $(MLFLOW_SERVER_INSTALLED)

$(VENVS)/%/.installed: $(MODEL_SERVERS)/requirements-%.txt
	rm -rf $(VENVS)/$*
	$(PYTHON) -m venv $(VENVS)/$*
	$(VENVS)/$*/bin/pip install --quiet --upgrade pip
	$(VENVS)/$*/bin/pip install --quiet -r $<
	touch $@

$(JOB_PROVLINE_INSTALLED): $(MLFLOW_INSTALLED) pyproject.toml
	$(VENVS)/mlflow/bin/pip install --quiet --no-deps -e .
	touch $@

# What tests/deploy checks the deploy assets with, from Debian: promtool (package prometheus) for the
# alert rules and scrape config, docker-compose (its Compose specification schema and interpolation;
# `docker-compose config` needs no Docker engine), and Alertmanager (package prometheus-alertmanager), the
# real receiver of provline's alerts in tests/deploy/test_alertmanager.py. Installed only where missing.
DEPLOY_TOOLS := build/.deploy-tools

deploy-tools: $(DEPLOY_TOOLS)

$(DEPLOY_TOOLS):
	@mkdir -p build
	@if ! command -v promtool >/dev/null || ! command -v docker-compose >/dev/null \
			|| ! command -v prometheus-alertmanager >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus docker-compose prometheus-alertmanager >/dev/null; fi
	@touch $@

# The console's browser tests (tests/console) drive Debian's headless Chromium through its chromedriver
# (packages chromium and chromium-driver) with Selenium (the [test] extra). Installed only where missing.
BROWSER_TOOLS := build/.browser-tools

browser-tools: $(BROWSER_TOOLS)

$(BROWSER_TOOLS):
	@mkdir -p build
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver fonts-dejavu-core >/dev/null; fi
	@touch $@

# deploy/kubernetes is rendered by the real kustomize, built from its Go module into build/k8s/bin, and its
# ServiceMonitor and InferenceService are checked against the CRDs of these releases, taken from their Go
# modules' sources (tests/deploy/test_kubernetes.py). kustomize v5.8.3 needs Go 1.27; v5.8.2 builds on 1.26.
KUSTOMIZE_VERSION := v5.8.2
PROMETHEUS_OPERATOR_VERSION := v0.85.0
KSERVE_VERSION := v0.15.2
K8S_TOOLS := build/k8s
KUSTOMIZE_INSTALLED := $(K8S_TOOLS)/.kustomize-$(KUSTOMIZE_VERSION)
CRDS_FETCHED := $(K8S_TOOLS)/.crds-$(PROMETHEUS_OPERATOR_VERSION)-$(KSERVE_VERSION)
GO_CHECK := command -v go >/dev/null || { echo "make k8s-tools needs Go 1.26 or newer on PATH (kustomize $(KUSTOMIZE_VERSION) is built with it)" >&2; exit 1; }
# `go mod download -json` prints the module's "Dir"; only that line is kept.
MODULE_DIR = GOFLAGS=-modcacherw go mod download -json $(1) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'

k8s-tools: $(KUSTOMIZE_INSTALLED) $(CRDS_FETCHED)

$(KUSTOMIZE_INSTALLED):
	@$(GO_CHECK)
	mkdir -p $(K8S_TOOLS)
	GOBIN=$(CURDIR)/$(K8S_TOOLS)/bin GOFLAGS=-modcacherw go install \
		sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) 2>$(K8S_TOOLS)/go-install.log \
		|| { cat $(K8S_TOOLS)/go-install.log; exit 1; }
	touch $@

$(CRDS_FETCHED):
	@$(GO_CHECK)
	rm -rf $(K8S_TOOLS)/crds && mkdir -p $(K8S_TOOLS)/crds
	operator=$$($(call MODULE_DIR,github.com/prometheus-operator/prometheus-operator@$(PROMETHEUS_OPERATOR_VERSION))) \
		&& cp $$operator/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml $(K8S_TOOLS)/crds/
	kserve=$$($(call MODULE_DIR,github.com/kserve/kserve@$(KSERVE_VERSION))) \
		&& cp $$kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml $(K8S_TOOLS)/crds/
	chmod u+w $(K8S_TOOLS)/crds/*.yaml
	touch $@

# provline's OCI image (deploy/image), built here with Debian's podman on a base made by debootstrap, from
# a wheelhouse pip makes on the host (deploy/image/build.py); everything it keeps lives under build/image.
# Rebuilt when the sources, pyproject.toml or deploy/image change; the Debian packages are installed once.
IMAGE_TOOLS := build/image/.debian-packages
IMAGE_BUILT := build/image/.image-built
IMAGE_INPUTS := pyproject.toml README.md $(addprefix deploy/image/,Containerfile Containerfile.dockerignore build.py healthcheck.py) \
	$(shell find provline schemas producers sidecar stream_processors sink -type f -not -path '*/__pycache__/*')

image: $(IMAGE_BUILT)

$(IMAGE_TOOLS):
	@mkdir -p $(@D)
	@dpkg -s podman runc debootstrap >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null; }
	touch $@

$(IMAGE_BUILT): $(IMAGE_TOOLS) $(INSTALLED) $(IMAGE_INPUTS)
	$(BIN)/python -m deploy.image.build
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck

# mypy finds modules by folder, and provline's subpackages live in folders of their own names
# (pyproject's package-dir): it checks a tree of links laid out as the installed package.
TYPECHECK_TREE := build/typecheck
typecheck: setup
	rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/provline
	ln -s $(CURDIR)/provline/*.py $(CURDIR)/provline/py.typed $(TYPECHECK_TREE)/provline/
	for folder in schemas producers sidecar stream_processors sink; do \
		ln -s $(CURDIR)/$$folder $(TYPECHECK_TREE)/provline/$$folder; done
	ln -s $(CURDIR)/deploy $(CURDIR)/bench $(CURDIR)/tests $(TYPECHECK_TREE)/
	cd $(TYPECHECK_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		provline deploy bench \
		| sed -e 's|^provline/\(schemas\|producers\|sidecar\|stream_processors\|sink\)/|\1/|'; \
		exit $${PIPESTATUS[0]}

test: setup broker model-servers deploy-tools browser-tools k8s-tools image lint
	$(BIN)/pytest -p no:cacheprovider -ra --durations=40 tests

docs: setup
	$(BIN)/python -m provline.docs README.md

# The console's screenshots in docs/console (shown in the README), taken by headless Chromium of a
# `provline serve` holding the demo's data (tests/console/screenshots.py).
screenshots: setup broker browser-tools
	$(BIN)/python -m tests.console.screenshots docs/console

demo: setup broker
	$(BIN)/python -m deploy.demo

clean:
	rm -rf $(VENV) $(VENVS) $(K8S_TOOLS) deploy/local/kafka/target .provline
