# movrec — the two commands a newcomer needs are `make demo` and `make test`.
# PGXS part: `make install` puts movrec.control and the install script into
# PostgreSQL's share dir so that `CREATE EXTENSION movrec CASCADE` works.

EXTENSION_NAME = movrec
EXTVERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
SCRIPT = extension/$(EXTENSION_NAME)--$(EXTVERSION).sql
CONTROL = extension/$(EXTENSION_NAME).control
DATA_built = $(CONTROL) $(SCRIPT)
MODULEDIR = extension
PG_CONFIG ?= $(shell ls -d /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -1)
VENV = .venv
PY = $(VENV)/bin/python

.PHONY: all setup demo test lint extension
all: extension

# The extension script is the ordered sql/ files, built, never edited by hand.
extension: $(DATA_built)
$(SCRIPT): sql/*.sql
	printf -- '-- Generated from sql/*.sql by `make extension`; do not edit.\n\\echo Use "CREATE EXTENSION movrec CASCADE" to load this file. \\quit\n' > $@
	for f in sql/*.sql; do printf '\n-- %s\n' "$$f"; cat $$f; done >> $@
$(CONTROL): $(CONTROL).in pyproject.toml
	sed 's/@VERSION@/$(EXTVERSION)/' $< > $@

setup:
	bash installer/setup.sh

demo: setup
	$(VENV)/bin/movrec demo

test: setup
	$(PY) -m pytest -q tests

# ruff (lint and format) on all Python; mypy on plpython/ and installer/ (pyproject's [tool.mypy]).
lint:
	$(VENV)/bin/ruff check plpython installer tests
	$(VENV)/bin/ruff format --check plpython installer tests
	$(VENV)/bin/mypy

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
