# The two set-up commands: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench table lint clean venv mutation

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a plain `torch` requirement could pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[torch,test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bitsub-demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-only --benchmark-columns=min,median,mean,rounds

# The README's results table: 5 scenarios x 9 methods x 3 seeds, each task trained to convergence
# (135 runs, many hours on 2 shared cores: see the README; a subset with SCENARIOS=..., STRATEGIES=...,
# SEEDS=...).
# Resumable: run it again after an interruption. Needs Fashion-MNIST in
# /usr/share/datasets/fashion-mnist (Debian: apt-get install dataset-fashion-mnist) or DATA_DIR.
table: $(STAMP)
	@start=$$(date +%s); \
	$(PY) -m bitsub_torch.experiments --out runs/table $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
		$(if $(SCENARIOS),--scenarios $(SCENARIOS)) $(if $(STRATEGIES),--strategies $(STRATEGIES)) \
		$(if $(SEEDS),--seeds $(SEEDS)); status=$$?; \
	echo "make table: wall time $$(( $$(date +%s) - start )) s"; exit $$status

# Sampled mutation run (bench/mutation.py; needs the mutation extra): about 30-60 min on 2 cores.
mutation: $(STAMP)
	$(PY) -m pip install --quiet -e ".[mutation]"
	NUMBA_DISABLE_JIT=1 $(PY) bench/mutation.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks build *.egg-info mutants
