# Two entry points a fresh machine needs (Python 3.11, pip, no GPU):
#   make demo   set up .venv, train + evaluate on the embedded synthetic data set
#   make test   set up .venv with the test extra, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORKDIR ?= workdir/demo

.PHONY: demo test setup clean benchmark

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) launch/train.py --config=configs/default.py --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests

benchmark: setup
	$(PY) launch/benchmark.py

clean:
	rm -rf $(VENV) workdir
