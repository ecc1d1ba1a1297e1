# The README's commands. `make test` and `make run` install first, so each is one command on a
# fresh machine.
PYTHON ?= python3

.PHONY: install test

install:
	bash scripts/install.sh

test: install
	$(PYTHON) -m pytest -q --durations=25 tests

# The built-in default run: tiny model, arithmetic task, warm start, then GVM-RAFT++ (CPU, minutes).
.PHONY: run
run: install
	$(PYTHON) gvm/train.py
