# blogstream: `make demo` runs the pipeline on the local stack; `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
STACK := stack/stack.sh

.PHONY: install lock stack-up stack-down stack-status stack-reset demo test test-unit bench worker clean

install: .venv/.installed

# Every dependency from the lock (exact versions, transitive ones too), then the project itself
# without resolving anything; `pip check` fails when pyproject.toml asks for what the lock lacks.
.venv/.installed: pyproject.toml requirements-test.lock
	@command -v python3.11 >/dev/null || { echo "python3.11 is required"; exit 1; }
	@test -x $(PY) || python3.11 -m venv .venv
	@$(PIP) install -q --upgrade pip
	@$(PIP) install -q -r requirements-test.lock
	@$(PIP) install -q --no-deps -e .
	@$(PIP) check >/dev/null || { $(PIP) check; echo "[install] the lock does not satisfy pyproject.toml: make lock"; exit 1; }
	@touch $@
	@echo "[install] python packages ready in .venv"

# Regenerate the lock files from pyproject.toml with pip-tools. Pins already in them are kept
# when they still fit; `make lock LOCK_ARGS=--upgrade` (or --upgrade-package NAME) moves them.
# requirements.lock: what the service needs (the Dockerfile); requirements-test.lock: plus the
# test extra, constrained to the same versions (make install).
LOCK := CUSTOM_COMPILE_COMMAND="make lock" $(PY) -m piptools compile -q --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links $(LOCK_ARGS)

lock:
	@command -v python3.11 >/dev/null || { echo "python3.11 is required"; exit 1; }
	@test -x $(PY) || python3.11 -m venv .venv
	@$(PIP) install -q 'pip-tools==7.6.2'
	@$(LOCK) -o requirements.lock pyproject.toml
	@$(LOCK) --extra test -c requirements.lock -o requirements-test.lock pyproject.toml
	@echo "[lock] requirements.lock, requirements-test.lock"

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

# The unit tests (on every core: pytest-xdist), then the integration tests two files at a time; both
# always run, and the target fails if either failed.
# The integration tests mostly wait (workers, provider latencies, budget windows: 270 s of CPU in 1,191 s
# one at a time) and each has its own simulators, database, topics and consumer group: two at a time
# take 590-612 s here. `--dist loadfile` keeps a module's tests in one process (test_intake shares a pair
# of workers). Two at a time once left a worker whose table recovery never ended after a rebalance at
# start (CI run of 14c9169, before Faust fix 10, which now seeks such a recovery again, then rebalances
# it, and logs both); not seen since. It also showed requests left PENDING for good after a rebalance at
# start, fixed in streams/pipeline/runner.py and Faust fix 4.
test: stack-up test-java prometheus
	@$(PY) -m pytest -q -p no:cacheprovider -n auto --durations=10 --ignore=tests/integration; unit=$$?; \
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=20 tests/integration; integration=$$?; \
	exit $$(( unit || integration ))

bench: stack-up
	@$(PY) -m stack.bench $(BENCH)

# Every fault at once on a private broker, Postgres and simulator (stack/chaos.py; about 13 minutes):
# writes docs/bench-chaos.md and its plot. Needs the stack's Kafka jars and Postgres binaries.
.PHONY: chaos
chaos: stack-up
	@$(PY) -m stack.chaos $(CHAOS_ARGS)

clean:
	rm -rf .venv .pytest_cache

.PHONY: prometheus observe observe-stop

# Prometheus and promtool from Debian (the tests in tests/ops need them; CI fails without them):
# installed once, as root; `apt-get update` only when the plain install fails.
prometheus:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "[prometheus] installing Debian's prometheus package (prometheus, promtool)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends prometheus >/dev/null \
	      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null; } \
	      || { echo "[prometheus] apt-get install prometheus failed"; exit 1; }; \
	  else \
	    echo "[prometheus] promtool not found: run 'sudo apt-get install -y prometheus' (tests/ops skip without it, fail on CI)"; \
	  fi; \
	fi

# Prometheus on 127.0.0.1:9090 scraping the local workers (BLOGSTREAM_METRICS_TARGETS, default
# 127.0.0.1:6066) with the alert rules of ops/prometheus; data in .stack/prometheus (stack/observe.py).
observe: install prometheus
	@$(PY) -m stack.observe start

observe-stop:
	@$(PY) -m stack.observe stop

# The kafbat Kafka UI serde plugin (Java 17 + Maven; see kafka-ui-serde/README.md): `make test` runs its JUnit tests.
.PHONY: serde test-java

serde:
	@command -v mvn >/dev/null || { echo "mvn (Maven) and Java 17 are required"; exit 1; }
	@mvn -q -B -f kafka-ui-serde/pom.xml package
	@echo "[serde] kafka-ui-serde/target/blogstream-kafka-ui-serde.jar"

test-java:
	@command -v mvn >/dev/null || { echo "mvn (Maven) and Java 17 are required"; exit 1; }
	@mvn -q -B -f kafka-ui-serde/pom.xml test
