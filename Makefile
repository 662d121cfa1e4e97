# blogstream: `make demo` runs the pipeline on the local stack; `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
STACK := stack/stack.sh

.PHONY: install stack-up stack-down stack-status stack-reset demo test test-unit bench worker clean

install: .venv/.installed

.venv/.installed: pyproject.toml
	@command -v python3.11 >/dev/null || { echo "python3.11 is required"; exit 1; }
	@test -x $(PY) || python3.11 -m venv .venv
	@$(PIP) install -q --upgrade pip
	@$(PIP) install -q -e '.[test]'
	@touch $@
	@echo "[install] python packages ready in .venv"

stack-up: install
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

stack-reset:
	@$(STACK) reset

worker: stack-up
	.venv/bin/faust -A streams worker -l info

demo: stack-up
	@$(PY) -m stack.demo

test: stack-up
	@$(PY) -m pytest -q -p no:cacheprovider

bench: stack-up
	@$(PY) -m stack.bench $(BENCH)

clean:
	rm -rf .venv .pytest_cache

# The kafbat Kafka UI serde plugin (Java 17 + Maven; see kafka-ui-serde/README.md). Not part of `install`.
.PHONY: serde test-java

serde:
	@command -v mvn >/dev/null || { echo "mvn (Maven) and Java 17 are required"; exit 1; }
	@mvn -q -B -f kafka-ui-serde/pom.xml package
	@echo "[serde] kafka-ui-serde/target/blogstream-kafka-ui-serde.jar"

test-java:
	@command -v mvn >/dev/null || { echo "mvn (Maven) and Java 17 are required"; exit 1; }
	@mvn -q -B -f kafka-ui-serde/pom.xml test
