# Two entry points, each doing all of its own set-up from a clean clone:
#   make demo   train, deploy, serve and trace one prediction end to end
#   make test   ruff and mypy, then unit, integration and end-to-end tests on a real broker and chDB
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BROKER_JARS := deploy/local/kafka/target/lib/.resolved

.PHONY: demo test lint typecheck docs setup broker clean

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

test: setup broker lint
	$(BIN)/pytest -p no:cacheprovider -ra tests

docs: setup
	$(BIN)/python -m provline.docs README.md

demo: setup broker
	$(BIN)/python -m deploy.demo

clean:
	rm -rf $(VENV) deploy/local/kafka/target .provline
