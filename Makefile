# The README's commands. `make test` and `make run` install first, so each is one command on a
# fresh machine.
PYTHON ?= python3

.PHONY: install test

install:
	bash scripts/install.sh

# Two workers (pytest-xdist), each test module whole on one of them (its module fixtures built once):
# the launches' imports and waits overlap, about 1.6x faster on 2 cores than one process.
test: install
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

# The built-in default run: tiny model, arithmetic task, warm start, then GVM-RAFT++ (CPU, minutes).
.PHONY: run
run: install
	$(PYTHON) gvm/train.py
