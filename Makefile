# Two entry points for a fresh machine: `make reproduce` (main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup reproduce test test-fast bench default-weights clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,brisque]'
	touch $(STAMP)

setup: $(STAMP)

# Main job: the smoke reproduction on the embedded mini dataset (corun/reproduce.py lists the steps).
reproduce: $(STAMP)
	$(BIN)/corun reproduce --profile smoke

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The edit-test loop: everything but the tests marked slow (notebooks, subprocesses, torchrun, browsers).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The recipe of weights/corun_default.safetensors (weights/README.md): depth for clean photos, pretraining on
# them with online haze, Colabator on real fog photos; every step resumable (about 1.5 h on 2 CPU cores).
# Data paths are variables (defaults: the test material beside the checkout; the product never needs it):
#   make default-weights CLEAN_DIR=my_clean_photos REAL_DIR=my_hazy_photos REAL_LIST=
# Writes runs/default_colabator/corun_default.safetensors; copy it over weights/ to replace the shipped file.
CLEAN_DIR ?= ../shared/data/clean_outdoor
DEPTH_DIR ?= data/clean_outdoor_depth
REAL_DIR ?= ../shared/data/dawn_fog/images
REAL_LIST ?= ../shared/data/dawn_fog/train.txt
RUNS ?= runs
default-weights: $(STAMP)
	$(BIN)/corun data depth $(CLEAN_DIR) $(DEPTH_DIR) --method prior
	$(BIN)/corun train --config configs/default_weights_pretrain.yaml --resume \
		data.clean_dir=$(CLEAN_DIR) data.depth_dir=$(DEPTH_DIR) train.out_dir=$(RUNS)/default_pretrain
	$(BIN)/corun train --config configs/default_weights_colabator.yaml --resume \
		data.clean_dir=$(CLEAN_DIR) data.depth_dir=$(DEPTH_DIR) colabator.init=$(RUNS)/default_pretrain \
		colabator.real_dir=$(REAL_DIR) colabator.real_list=$(if $(REAL_LIST),$(REAL_LIST),null) \
		train.out_dir=$(RUNS)/default_colabator
	$(BIN)/corun export $(RUNS)/default_colabator $(RUNS)/default_colabator/corun_default.safetensors --overwrite

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) *.egg-info
