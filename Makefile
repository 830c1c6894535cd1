# Two commands for a fresh machine: `make run` (set up, then the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench docs system-deps

$(PY):
	python3 -m venv $(VENV)

# torch is pinned to the CPU build that lies on this disk; a plain `torch` would pull a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/trainlab recipe

system-deps:
	bash scripts/system-deps.sh

# The architecture's contracts (pyproject.toml, [tool.importlinter]) first, then the whole suite.
test: $(STAMP) system-deps
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or a page left out of the nav.
$(VENV)/.docs-installed: pyproject.toml | $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	$(VENV)/bin/mkdocs build --strict --site-dir site
