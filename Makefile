# Two commands on a fresh machine:  `make demo` (the main job) and `make test`.
# Each creates the virtualenv in .venv from pyproject.toml on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (only the converter and its tests need torch).
TORCH_SPEC ?= torch==2.13.0
# The ONNX converter of tools/export.py, installed without its dependencies (pyproject.toml).
JAX2ONNX_SPEC ?= jax2onnx==0.17.1
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,convert,deploy]"
	# The export extra without jax2onnx's pins (orbax-checkpoint < 0.11.37): pyproject.toml.
	$(PY) -m pip install -q "onnx>=1.20" "onnx-ir>=0.2.1"
	$(PY) -m pip install -q --no-deps "$(JAX2ONNX_SPEC)"
	touch $@

demo: venv
	$(PY) tools/demo.py

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) workdirs data_cache
