# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv from nothing but Python.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean image image-test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/quotehelper demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/quote_service.py
	$(BIN)/python bench/verify.py

# The container image, built with buildah from Debian packages (no Docker daemon, no Docker Hub), and run
# with podman as the manifests run it. IMAGE is the reference deploy/image/kustomization.yaml sets.
IMAGE ?= localhost/quotehelper:0.1.0
SGX_DCAP ?= 0
image:
	SGX_DCAP=$(SGX_DCAP) deploy/image/build.sh $(IMAGE)

image-test:
	tests/image/image_test.sh $(IMAGE)

clean:
	rm -rf $(VENV) build src/*.egg-info
