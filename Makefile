# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
# torch is installed first, pinned to the CPU wheel, so no later install can pull a CUDA build.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
INSTALLED := $(VENV)/.mmgen-installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench lint clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	@# Pin whatever torch is present so resolving the kit's dependencies never replaces it.
	@$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	@touch $@

demo: install
	$(VENV)/bin/mmgen demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# pytest exits 5 when no test is marked slow: that is not a failure.
test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || test $$? -eq 5

bench: install
	$(PY) -m bench $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check mmgen data_engine eval recipes bench tests

clean:
	rm -rf $(VENV) build *.egg-info
