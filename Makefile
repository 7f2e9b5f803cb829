# Two entry points a fresh machine needs (Python 3.11, pip, no GPU):
#   make demo   set up .venv with the package only, train + evaluate on the embedded synthetic data set
#   make test   add the test extra (pytest, scikit-learn, CPU PyTorch) to .venv, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORKDIR ?= workdir/demo

PAPER_SMOKE_WORKDIR ?= workdir/paper_smoke
PAPER_SMOKE_IMAGES ?= 24

.PHONY: demo test test-slow setup clean benchmark paper-smoke

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

# The checks that need minutes each (multi-process, crash-and-resume, resume, command lines, torchvision at
# 224 px, the ResNet-family PyTorch twins, torchattacks' APGD against ours): kept out of `make test`; CI runs
# both targets. They run their programs many times, so XLA compiles them at optimisation level 1, not the
# level 0 of `make test` (tests/conftest.py).
test-slow: $(VENV)/.installed-test
	FLAX_FLD_TEST_XLA_LEVEL=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 -m slow tests

# configs/paper.py at its own scale on a small embedded set, to trust the paper-scale path before renting an
# accelerator: 224 px RGB, the 'paper' ICFDNet, K = 10, FAWA, robust validation (PGD-20 through IC1/IC2), the
# PGD-20 test report under both threat models, every output (checkpoints, metrics.jsonl, eval.json, plots) in
# $(PAPER_SMOKE_WORKDIR); 2 epochs, the TRADES term on from the second (adv.start_epoch=1). PAPER_SMOKE_IMAGES
# synthetic images (24: 13 train, 3 steps of 4 per epoch; 4 validation; 7 test). Why so few: PGD-20 through
# the decouplers at 224 px costs minutes of CPU per image, and every validation and test image pays it;
# with 108 images (65 train, 16 validation, 27 test, batch 8) the first validation had not ended after 50
# minutes. Batch 4, not the config's 32: at 32 the CPU's step took more than the 16 GB this machine had free.
# Compilation cache off, so it measures a first run. On the 2-core CPU it takes 51 to 55 min of CPU time and
# 6.3 GB of memory (a fresh clone, setup included, 1h11m wall beside other runs on 2026-12-06: BENCHMARKS.md).
paper-smoke: setup
	rm -rf $(PAPER_SMOKE_WORKDIR)
	FLAX_FLD_COMPILATION_CACHE=0 $(PY) launch/train.py --config=configs/paper.py --workdir=$(PAPER_SMOKE_WORKDIR) \
	  --config.data.num_examples=$(PAPER_SMOKE_IMAGES) --config.train.num_epochs=2 --config.adv.start_epoch=1 \
	  --config.train.per_device_batch_size=4 --config.train.eval_batch_size=4 \
	  --config.train.log_every_steps=1 --config.train.plot_every_epochs=1

benchmark: $(VENV)/.installed-test
	$(PY) launch/benchmark.py

clean:
	rm -rf $(VENV) workdir
