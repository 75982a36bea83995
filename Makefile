# Two commands do everything on a fresh machine (see README):
#   make reproduce   venv + install + synthetic cohort + the paper's comparison -> runs/$(RUN)/
#                    (a grid: every method shipped for $(PROFILE) + random, every shipped seed)
#   make test        venv + install + the whole test suite (what .ci/run calls)
#   make test-fast   the same without the tests marked slow (tests/conftest.py, SLOW)
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= teaching
RUN     ?= default
JOBS    ?= 2
# what `make reproduce` runs: the comparison over the shipped weights; COMPARE= for one `dual`
# run (e.g. make reproduce PROFILE=tiny RUN=smoke COMPARE=, a profile that ships no weights)
COMPARE ?= --compare
PY      := $(VENV)/bin/python

.PHONY: install reproduce test test-fast lint clean-runs

install: $(VENV)/.installed

# Re-installs whenever pyproject.toml changes. torch==2.13.0 resolves to the CPU wheel.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

reproduce: install
	$(VENV)/bin/ecgcmr reproduce --profile $(PROFILE) --run-dir runs/$(RUN) --workers $(JOBS) \
		--jobs $(JOBS) $(COMPARE)

test: install
	$(PY) -m pytest -n $(JOBS) --dist loadgroup --durations=15

# everything but the notebook series, grids, training runs and cohort-scale statistics
test-fast: install
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m "not slow"

lint: install
	$(VENV)/bin/ruff check ecgcmr tests
