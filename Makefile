# fhir-msc: the two commands of the README.
#   make demo   set up and run the whole job on the embedded store (no server)
#   make test   set up and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test java-check bench bench-quick fixtures clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/fhir-msc demo

# The loopback FHIR server the integration tests start (Medplum fhir-router, pinned).
server/node_modules/.installed: server/package.json server/package-lock.json
	cd server && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The Spark engine's tests start a local JVM: Java 17 or 21 must be on the machine.
java-check:
	@command -v java >/dev/null || [ -n "$$JAVA_HOME" ] || { echo "make test: the Spark engine's tests need Java 17 or 21: install it (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME" >&2; exit 1; }

test: java-check $(BIN)/.installed server/node_modules/.installed
	@$(BIN)/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$rc

# Benchmarks (peers fhiry and fhirpy are installed only here).
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(BIN)/.bench-installed server/node_modules/.installed
	$(BIN)/python -m benchmarks

bench-quick: $(BIN)/.bench-installed server/node_modules/.installed
	$(BIN)/python -m benchmarks --quick

fixtures: $(BIN)/.installed
	$(BIN)/python fixtures/generate.py

clean:
	rm -rf $(VENV) fhir-msc-demo .pytest_cache
