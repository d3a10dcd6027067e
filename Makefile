# MNIST Architecture Lab. `make app` and `make test` set everything up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= $(or $(MNIST_DATA_DIR),data)
ARCH ?= cnn
EPOCHS ?=
PRETRAINED_ARCHS := dense cnn se_cnn mobilenetv2 efficientnet shufflenetv2 ghostnet convnext vit capsnet cnn_best
BUDGET := 68k
# Epochs per shipped model at the 68k budget; cnn_best takes its recipe's 25 epochs with augmentation.
EPOCHS_dense := 10
EPOCHS_cnn := 6
EPOCHS_se_cnn := 6
EPOCHS_mobilenetv2 := 8
EPOCHS_efficientnet := 8
EPOCHS_shufflenetv2 := 6
EPOCHS_ghostnet := 6
EPOCHS_convnext := 8
EPOCHS_vit := 12
EPOCHS_capsnet := 6
PRETRAINED := $(foreach arch,$(PRETRAINED_ARCHS),checkpoints/$(arch).safetensors)

.PHONY: setup app test train bench pretrained results clean

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

app: setup
	MNIST_DATA_DIR=$(DATA_DIR) $(PY) -m streamlit run app/main.py

test: setup
	MNIST_DATA_DIR=$(DATA_DIR) $(PY) -m pytest

train: setup
	$(PY) -m core train --data-dir $(DATA_DIR) --arch $(ARCH) $(if $(EPOCHS),--epochs $(EPOCHS))

# The full benchmark (about 10 minutes on 2 cores) rewrites the results in docs/benchmarks.md;
# `make bench BENCH_ARGS=--quick` checks that every figure comes out, in about a minute.
BENCH_ARGS ?=
bench: setup
	$(PY) -m core bench --data-dir $(DATA_DIR) $(BENCH_ARGS) $(if $(BENCH_ARGS),,--markdown docs/benchmarks.md)

# Trains each missing shipped model with the project's own CLI on full MNIST (seed 0, 68k budget),
# in a separate store. `make pretrained` retrains all of them; `make results` trains the missing
# ones and writes their table into docs/results.md.
train_shipped = $(PY) -m core train --data-dir $(DATA_DIR) --store runs/pretrained --arch $(1) --budget $(BUDGET) \
	$(if $(EPOCHS_$(1)),--epochs $(EPOCHS_$(1))) --seed 0 --name pretrained-$(1) --progress \
	--export checkpoints/$(1).safetensors

checkpoints/%.safetensors: | setup
	$(call train_shipped,$*)

pretrained: setup
	$(foreach arch,$(PRETRAINED_ARCHS),$(call train_shipped,$(arch)) &&) true

results: $(PRETRAINED)
	$(PY) -m core results

clean:
	rm -rf $(VENV) .pytest_cache
