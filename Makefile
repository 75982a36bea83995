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
# grid cells at a time: one more than JOBS. A cell runs one thread, and with one cell per core
# the last cell of the 15-cell comparison runs alone while a core idles (~1 min here); a third
# cell on 2 cores costs ~1.5 % of throughput (benchmarks/measured/
# 2026-12-08-reproduce-comparison-3seeds-faster-cpu-2core.md)
CELLS   ?= $(shell expr $(JOBS) + 1)
# what `make reproduce` runs: the comparison over the shipped weights; COMPARE= for one `dual`
# run (e.g. make reproduce PROFILE=tiny RUN=smoke COMPARE=, a profile that ships no weights)
COMPARE ?= --compare
PY      := $(VENV)/bin/python
UV_VERSION := 0.13.10
# pip's wheel folders: the environment's, else pip's configuration's
PIP_FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

.PHONY: install reproduce test test-fast lint clean-runs

install: $(VENV)/.installed

# Re-installs whenever pyproject.toml changes. torch==2.13.0 resolves to the CPU wheel.
# uv (pinned, from PyPI) installs the same packages as pip in ~10 s instead of ~60 s
# (parallel downloads and unpacking) and byte-compiles them on every core (~30 s; Python
# never writes bytecode itself where PYTHONDONTWRITEBYTECODE is set, and without it every
# process would compile what it imports again). uv does not read pip's configuration, so the
# wheel folders pip is pointed at (PIP_FIND_LINKS: where a machine keeps its CPU build of
# torch) are passed on. benchmarks/measured/
# 2026-12-08-reproduce-comparison-3seeds-uv-cpu-2core.md
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode \
		$(foreach links,$(PIP_FIND_LINKS),--find-links $(links)) -e ".[test]"
	touch $@

reproduce: install
	$(VENV)/bin/ecgcmr reproduce --profile $(PROFILE) --run-dir runs/$(RUN) --workers $(JOBS) \
		--jobs $(CELLS) $(COMPARE)

test: install
	$(PY) -m pytest -n $(JOBS) --dist loadgroup --durations=15

# everything but the notebook series, grids, training runs and cohort-scale statistics
test-fast: install
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -m "not slow"

lint: install
	$(VENV)/bin/ruff check ecgcmr tests
