# Two entry points for a fresh machine: `make reproduce` (main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup reproduce test bench default-weights clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Main job: the smoke reproduction on the embedded mini dataset (corun/reproduce.py lists the steps).
reproduce: $(STAMP)
	$(BIN)/corun reproduce --profile smoke

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The recipe of weights/corun_default.safetensors (weights/README.md); resumable, about 45 min on 2 CPU cores.
# Writes runs/default_colabator/corun_default.safetensors; copy it over weights/ to replace the shipped file.
default-weights: $(STAMP)
	$(BIN)/corun data mini data/synth400 --train-scenes 400
	$(BIN)/corun train --config configs/default_weights_pretrain.yaml --resume
	$(BIN)/corun train --config configs/default_weights_colabator.yaml --resume
	$(BIN)/corun export runs/default_colabator runs/default_colabator/corun_default.safetensors --overwrite

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) *.egg-info
