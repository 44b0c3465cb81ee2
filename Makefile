# The two commands a newcomer needs (see README.md):
#   make run    install, then run the main job (distillation pipeline on real SciFact data)
#   make test   install, then run the test suite
PY ?= python3
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install run test

install:
	# torch first and pinned: 2.13.0 is the local CPU wheel; an unpinned torch pulls a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"

run: install
	densekd run configs/scifact-quick.yaml

test: install
	$(PY) -m pytest -q
