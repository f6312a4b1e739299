# Every target runs inside .venv, which `make setup` creates and fills.
# GPU machines: install your CUDA torch + torchvision into .venv first and run
#   make setup TORCH=
# so that the CPU/local pin below is skipped.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# torch 2.14.1 + torchvision 0.29.1 install together from this machine's local wheels and import on a CPU
# (torch 2.13.0's only torchvision, 0.28.0, fails to import: "operator torchvision::nms does not exist").
TORCH ?= torch==2.14.1 torchvision==0.29.1
APT_PACKAGES := libosmesa6
PIP := set -o pipefail; $(PY) -m pip install -q
# pip warns about every package missing from this machine's extra local indexes; keep real messages.
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
CACHES := caches

.PHONY: setup test test-slow demo bench-chunks clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH)" ]; then echo "installing $(TORCH)"; $(PIP) $(TORCH) $(QUIET); fi
	@echo "installing teacher-cache[all,test] (editable)"
	@$(PIP) -e ".[all,test]" $(QUIET)
	@touch $(STAMP)

test: setup
	$(VENV)/bin/pytest -q -m "not slow"

test-slow: setup
	$(VENV)/bin/pytest -q -m slow

# The main job on built-in data. It grows with the project: today it writes the
# synthetic example caches through the cache contract and inspects them.
demo: setup
	@mkdir -p $(CACHES)
	$(VENV)/bin/cache example $(CACHES)/example-objects.zarr --kind objects --overwrite
	$(VENV)/bin/cache example $(CACHES)/example-scenes.zarr --kind scenes --overwrite
	$(VENV)/bin/cache info $(CACHES)/example-objects.zarr
	$(VENV)/bin/cache validate $(CACHES)/example-objects.zarr
	$(VENV)/bin/cache info $(CACHES)/example-scenes.zarr
	$(VENV)/bin/cache validate $(CACHES)/example-scenes.zarr

bench-chunks: setup
	$(PY) scripts/bench_chunks.py

clean:
	rm -rf $(VENV) $(CACHES) .pytest_cache
