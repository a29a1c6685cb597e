# Quick start: `make demo` then `make test`. Override the interpreter with `make PYTHON=python3.11 ...`.
PYTHON ?= python3
# The CPU wheel of torch; installed only when torch is missing (set TORCH_SPEC=torch for a CUDA build).
TORCH_SPEC ?= torch==2.13.0
KG_CONFIG ?= configs/kg_ba.yaml
TRAIN_CONFIG ?= configs/train_gpt_small.yaml
# The model that locate/edit use: the one TRAIN_CONFIG writes (its output_dir). For the d_ff 2048 model:
# make demo TRAIN_CONFIG=configs/train_gpt_mlp2048.yaml MODEL_DIR=outputs/models/gpt_mlp2048
MODEL_DIR ?= outputs/models/gpt_small

.PHONY: install constraints data train locate edit demo test bench clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet $(TORCH_SPEC)
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[test]"

# Re-pin every dependency but torch (TORCH_SPEC pins it): the newest releases pyproject.toml allows, in a new virtual
# environment, kept only when the test suite passes with them.
PIN_VENV ?= build/pin-venv
constraints:
	rm -rf $(PIN_VENV) && $(PYTHON) -m venv $(PIN_VENV)
	$(PIN_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(PIN_VENV)/bin/python -m pip install --quiet -e ".[test]"
	$(PIN_VENV)/bin/python -m pytest tests
	{ echo "# Every dependency of the library and its tests but torch, at versions the suite passed with on"; \
	  echo "# Python $$($(PIN_VENV)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  echo "# Used by make install (pip install -c constraints.txt); refresh with: make constraints"; \
	  $(PIN_VENV)/bin/python -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf $(PIN_VENV)

data:
	$(PYTHON) -m src.cli.make_kg --config $(KG_CONFIG)

train: data
	$(PYTHON) -m src.cli.train_lm --config $(TRAIN_CONFIG) --skip-if-trained

locate:
	PYTHON=$(PYTHON) ./run_locating.sh --model-dir $(MODEL_DIR) --num-samples 10 --output-dir outputs/locating_results

edit:
	PYTHON=$(PYTHON) ./run_editing.sh --model-dir $(MODEL_DIR) -s E_000 -r R_04 -o E_999 --output-dir outputs/editing_results

# Everything from a fresh clone: install, build the KG, train (skipped when already trained), trace, edit.
demo: install train locate edit
	@echo "demo done: KG data/kg/ba, model $(MODEL_DIR), traces outputs/locating_results, edit outputs/editing_results"

bench:
	$(PYTHON) benchmarks/bench_tracing.py
	$(PYTHON) benchmarks/bench_editing.py
	$(PYTHON) benchmarks/bench_training.py
	$(PYTHON) benchmarks/bench_fast_paths.py
	$(PYTHON) benchmarks/bench_activations.py
	$(PYTHON) benchmarks/bench_resumed_forward.py
	$(PYTHON) benchmarks/bench_floors.py

test: install
	$(PYTHON) -m pytest tests

clean:
	rm -rf outputs/* data/*
