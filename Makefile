# mmkt: every target creates or updates the virtual environment first (python3 is all it needs).
#   make demo    the main job on the embedded ShapeScenes data set
#   make test    notebooks clean and in sync with mmkt_lib, nbdev_test over all notebooks, then pytest
#   make lab     JupyterLab on nbs/
#   make export  clean the notebooks (nbdev_clean), then export them to mmkt_lib (nbdev_export)
#   make chapters NB="05_vit 06_clip"  execute chapters at reading size and store their outputs (all: NB unset)
# VENV=/some/dir make test uses (and caches) an environment outside the checkout, as .ci/run does.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
NBDEV_TEST_ARGS ?= --n_workers 2

.PHONY: venv demo test test-notebooks test-py check-notebooks check-outputs chapters lab export clean

venv:
	@VENV="$(VENV)" PYTHON="$(PYTHON)" bash .ci/venv.sh

demo: venv
	$(BIN)/mmkt demo $(ARGS)

check-notebooks: venv
	$(BIN)/python .ci/check_notebooks.py

# a figure in every chapter, no error outputs, no outputs older than the code and records they show
check-outputs: venv
	$(BIN)/python .ci/chapter_outputs.py check

chapters: venv
	$(BIN)/python .ci/chapter_outputs.py run $(or $(NB),$(basename $(notdir $(wildcard nbs/*.ipynb)))) && $(BIN)/nbdev_clean

# two notebooks at a time, one thread each: on a 2-core machine two 2-thread runs would fight over the cores
test-notebooks: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/nbdev_test $(NBDEV_TEST_ARGS)

test-py: venv
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

test: venv check-notebooks check-outputs test-notebooks test-py

lab: venv
	$(BIN)/jupyter lab --notebook-dir=nbs

export: venv
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export

clean:
	rm -rf runs data/shapes_tiny .pytest_cache
