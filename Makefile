# Two commands for a new user: `make demo` and `make test`. Both set up everything first
# (virtualenv, Python packages, Delta jars) and are quick when it is already there.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JARS   := .cache/jars/.resolved

.PHONY: setup demo test test-fast test-cluster clean-lakehouse

setup: $(STAMP) $(JARS)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# petastorm pins setuptools<70, which torch contradicts; its runtime deps are in pyproject.
	$(BIN)/pip install -q --no-deps petastorm==0.13.1
	touch $(STAMP)

$(JARS): $(STAMP)
	$(BIN)/python -m xrec_spark.cli setup-jars
	touch $(JARS)

demo: setup
	$(BIN)/xrec demo --config conf/local.yaml

# Everything CI runs: the local-mode suite, then the cluster tests (a standalone master and two
# workers on 127.0.0.1, jobs sent with spark-submit) in their own session, so the cluster lives
# only while they run. Both always run; either failing fails the target. `make test-cluster`
# runs only the latter, `make test-fast` skips both the slow and the cluster tests.
test: setup
	status=0; $(BIN)/pytest -m "not cluster" || status=1; $(BIN)/pytest -m cluster || status=1; exit $$status

test-cluster: setup
	$(BIN)/pytest -m cluster

test-fast: setup
	$(BIN)/pytest -m "not slow and not cluster"

clean-lakehouse:
	rm -rf lakehouse report
