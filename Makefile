# fhir-msc: the commands of the README.
#   make demo      set up and run the whole job on the embedded store (no server)
#   make test      set up and run the whole test suite
#   make schemas   rewrite the study file's JSON Schema and reference page from its model
#   make interop   build SMART's reference Bulk Data server (a peer) and run fhir-msc against it (not in make test)
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test java-check chromium-check bench bench-quick fixtures schemas clean interop

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

# The report's tests render its HTML in headless Chromium.
chromium-check:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { echo "make test: the report's tests render the HTML in headless Chromium: install it (Debian: apt-get install -y chromium)" >&2; exit 1; }

test: java-check chromium-check $(BIN)/.installed server/node_modules/.installed
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

# Interoperability with SMART's reference Bulk Data server: its copy in $(PEERS) is copied into
# .interop/ and built there once (Node 20+, a C toolchain: sqlite3 builds from source, ~3-5 min),
# its R4 data imported (~1.5-8 min), then tests/interop/ start it on a free loopback port.
PEERS ?= ../shared/peers
INTEROP = .interop
PEER = $(INTEROP)/bulk-data-server

$(INTEROP)/.built:
	@node -e 'process.exit(parseInt(process.versions.node) < 20 ? 1 : 0)' 2>/dev/null || { echo "make interop: needs Node 20 or later (node --version)" >&2; exit 1; }
	@test -d $(PEERS)/bulk-data-server && test -d $(PEERS)/fhir-filter || { echo "make interop: no bulk-data-server and fhir-filter in $(PEERS): pass PEERS=DIR" >&2; exit 1; }
	@chmod -R u+w $(INTEROP) 2>/dev/null; rm -rf $(INTEROP) && mkdir -p $(INTEROP)
	cp -r $(PEERS)/bulk-data-server $(PEERS)/fhir-filter $(INTEROP)/ && chmod -R u+w $(INTEROP)
	@echo "make interop: building the Bulk Data server (npm install, sqlite3 from source; log in $(INTEROP)/npm.log)"
	@start=$$(date +%s); cd $(PEER) && npm install --build-from-source --install-links --no-audit --no-fund > ../npm.log 2>&1 \
		|| { tail -20 ../npm.log >&2; exit 1; }; echo "make interop: built in $$(( $$(date +%s) - start )) s"
	touch $@

$(INTEROP)/.imported: $(INTEROP)/.built
	@echo "make interop: importing its R4 data (log in $(INTEROP)/import.log)"
	@rm -f $(PEER)/database.r4.db; start=$$(date +%s); cd $(PEER) && node_modules/.bin/ts-node ./data/import.ts -d ./data/fhir/ > ../import.log 2>&1 \
		|| { tail -c 2000 ../import.log >&2; exit 1; }; echo "make interop: imported in $$(( $$(date +%s) - start )) s"
	touch $@

interop: $(BIN)/.installed $(INTEROP)/.imported
	FHIR_MSC_PEER=$(abspath $(PEER)) $(BIN)/pytest tests/interop

fixtures: $(BIN)/.installed
	$(BIN)/python fixtures/generate.py

# The study file's JSON Schema (fhir_msc/schemas/study.schema.json) and reference page (docs/study-file.md), from its
# model: run after changing fhir_msc/study/ (tests/study/test_schema.py fails while they are stale).
schemas: $(BIN)/.installed
	$(BIN)/python -m fhir_msc.study.schema

clean:
	rm -rf $(VENV) fhir-msc-demo .pytest_cache
