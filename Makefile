# The two commands a new user runs: `make demo` and `make test`. Both create .venv when missing.
VENV      := .venv
PYTHON    := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
BOOTSTRAP ?= python3
# Pin the CPU build of torch where no GPU is present.
CONSTRAINTS := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "-c constraints/cpu.txt")
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint lint-imports format bench clean length-bias overoptimization

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	@test -x $(PYTHON) || $(BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check $(CONSTRAINTS) -e ".[test]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/rlhf-lens train training/sentiment_default.toml --out runs/demo --overwrite
	$(VENV)/bin/rlhf-lens inspect runs/demo
	$(VENV)/bin/rlhf-lens report runs/demo
	@echo "Open runs/demo/report.html in a browser: what was trained, the headline numbers and every verdict come first."

# The length-bias study (analyses/README.md): planted against control labelers, about 12 minutes on 2 cores.
length-bias: setup
	$(PYTHON) analyses/length_bias.py --out runs/length_bias

# The over-optimisation study (analyses/README.md): Gao et al. (2023) with two proxy sizes, PPO and best-of-n.
overoptimization: setup
	$(PYTHON) analyses/overoptimization.py --out runs/overoptimization

lint-imports: setup
	$(VENV)/bin/lint-imports

# ruff: lint and formatting check (`make format` rewrites the files).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exits 5 when it collects no tests; make treats every non-zero exit as failure.
test: setup lint lint-imports
	$(PYTHON) -m pytest

test-fast: setup
	$(PYTHON) -m pytest -m "not slow"

bench: setup
	$(PYTHON) -m pip install --quiet $(CONSTRAINTS) -e ".[bench]"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
