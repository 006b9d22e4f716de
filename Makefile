# normbench: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3
DB ?= results/bench.db
REPORT ?= reports
.DEFAULT_GOAL := help

.PHONY: help install data browser test test-all test-browser demo preset report report-check bench-report bench-db lint clean test-postgres

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## virtualenv in .venv with the suite and its tools, and the default dataset (idempotent)

# PYTHONWARNINGS reaches setuptools in pip's build environment: it silences the 10-line
# "Editable installation ... folders with the same name" block, which warns about nothing here
# (the packages are imported from this checkout on purpose).
$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -e '.[dev]'
	@$(MAKE) --no-print-directory data
	@touch $@

FMNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

data: ## the default dataset, Fashion-MNIST: Debian's dataset-fashion-mnist where apt works, else says what to do
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: in /usr/share/datasets/fashion-mnist"; \
	elif [ -f data/fashion_mnist/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: in data/fashion_mnist"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)); then \
		echo "Fashion-MNIST: installed in /usr/share/datasets/fashion-mnist"; \
	else echo "Fashion-MNIST (the default dataset) is not on disk. The first run downloads it if this machine"; \
		echo "  reaches the internet. Otherwise: 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu),"; \
		echo "  or put $(FMNIST_FILES) in data/fashion_mnist/."; \
		echo "  'make demo' needs none of this (it uses scikit-learn's digits)."; fi

browser: ## Debian's Chromium, for the report's browser check (needs root; optional)
	@if command -v chromium >/dev/null; then echo "Chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null && echo "Chromium: installed"; \
	else echo "Chromium: run 'sudo apt-get install chromium' (optional)"; fi

test: install ## the fast tests (about 3.5 minutes on 2 idle cores)
	$(PY) -m pytest -m "not slow" -n 2 -q

test-all: install ## every test, the slow ones too
	$(PY) -m pytest -n 2 -q

test-postgres: install ## the PostgreSQL tests, failing instead of skipping without a server (NORMBENCH_TEST_PG=URL to pick one)
	NORMBENCH_REQUIRE_POSTGRES=1 $(PY) -m pytest -q -n 0 tests/test_postgres.py

test-browser: install ## the report rendered in headless Chromium (skipped without /usr/bin/chromium)
	$(PY) -m pytest -m slow -q tests/test_report.py -k chromium

demo: install ## a small real sweep on the offline digits dataset into results/bench.db, then its report
	$(PY) -m bench.run -m experiment=demo db.url=sqlite:///$(DB)
	$(MAKE) --no-print-directory report

preset: install ## one write-up's experiment, P=NAME (e.g. precise_bn_cpu), into results/NAME.db, then its report in reports/NAME
	@test -n "$(P)" || { echo "error: say which preset, e.g. make preset P=precise_bn_cpu (allowed: $$(ls conf/experiment | sed 's/.yaml//' | tr '\n' ' '))"; exit 2; }
	$(PY) -m bench.run -m experiment=$(P) db.url=sqlite:///results/$(P).db
	$(MAKE) --no-print-directory report DB=results/$(P).db REPORT=reports/$(P)

report: install ## tables, figures and reports/index.html from results/bench.db (DB=, REPORT= to change)
	$(PY) -m analysis.report --db sqlite:///$(DB) --out $(REPORT)

report-check: report ## open reports/index.html in headless Chromium; fails if it looks blank
	$(PY) -m analysis.browser_check $(REPORT)/index.html

bench-report: install ## time the report on 5,000 synthetic runs (2 M metric rows; target < 60 s)
	$(PY) -m analysis.benchmark

bench-db: install ## metric rows/s of 8 parallel writers, SQLite vs PostgreSQL at 127.0.0.1:5432 (PG=URL)
	$(PY) -m db.benchmark $(if $(PG),--pg $(PG))

lint: install ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove Hydra's output folders (keeps the database and the data caches)
	rm -rf outputs multirun
