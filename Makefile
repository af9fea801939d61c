# qmml — the two set-up commands: `make demo` and `make test` (both create .venv if missing).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
EXTRAS ?= test,workflow
# test processes (pytest-xdist): one more than the cores, so that tests waiting on a
# subprocess or the SLURM queue leave no core idle (docs/performance.md, "Test suite");
# files sharing module fixtures stay on one (tests/conftest.py)
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
XDIST  := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

.PHONY: install demo test test-fast bench clean-demo

install: $(VENV)/.installed

# CC=g++: the GPAW sdist compiles its C sources as C++ (docs/engines.md).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	CC=g++ $(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -c "import qmml.lmp"
	scripts/install-profile.sh slurm
	scripts/install-system-packages.sh
	touch $@

# the full suite, as CI runs it; first the free DFT programs (CP2K, Quantum ESPRESSO) for
# the real-engine tests (without root it says why, and those tests are skipped with the reason)
test: install
	scripts/install-system-packages.sh
	$(BIN)/python -m pytest -q -ra $(XDIST) tests

# the edit loop: everything but the runs marked slow, the SLURM cluster and GPAW
test-fast: install
	$(BIN)/python -m pytest -q -ra $(XDIST) -m "not slow and not slurm and not gpaw" tests

demo: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml

bench: install
	$(BIN)/python benchmarks/bench_core.py calculator --repeats 4
	$(BIN)/python benchmarks/bench_core.py retrain --workers 1 2
	$(BIN)/python benchmarks/bench_accelerated.py --kind screw111 --optimizers accelerated FIRE LBFGS PreconLBFGS
	$(BIN)/python benchmarks/bench_accelerated.py --kind edge100_110 --optimizers accelerated FIRE LBFGS PreconLBFGS
