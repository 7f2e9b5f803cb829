# Two entry points a fresh machine needs (Python 3.11, pip, no GPU):
#   make demo   set up .venv with the package only, train + evaluate on the embedded synthetic data set
#   make test   add the test extra (pytest, scikit-learn, CPU PyTorch) to .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORKDIR ?= workdir/demo

.PHONY: demo test test-slow setup clean benchmark

# Two stamps in one venv: the demo needs only the package; the tests add pytest, scikit-learn and the CPU
# build of PyTorch (the twin and the cross-checks), which the demo never downloads.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) launch/train.py --config=configs/default.py --workdir=$(WORKDIR)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 -m "not slow" tests

# The end-to-end checks that need minutes each (multi-process, crash-and-resume, resume, command lines,
# torchvision at 224 px): kept out of `make test`; CI runs both targets.
test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 -m slow tests

benchmark: $(VENV)/.installed-test
	$(PY) launch/benchmark.py

clean:
	rm -rf $(VENV) workdir
