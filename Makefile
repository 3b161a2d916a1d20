# Two entry points, each doing all of its own set-up from a clean clone:
#   make demo   train, deploy, serve and trace one prediction end to end
#   make test   lint, then unit, integration and end-to-end tests on a real broker and chDB
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BROKER_JARS := deploy/local/kafka/target/lib/.resolved

.PHONY: demo test lint docs setup broker clean

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

test: setup broker lint
	$(BIN)/pytest -p no:cacheprovider -ra tests

docs: setup
	$(BIN)/python -m provline.docs README.md

demo: setup broker
	$(BIN)/python -m deploy.demo

clean:
	rm -rf $(VENV) deploy/local/kafka/target .provline
