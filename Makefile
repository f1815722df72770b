# movrec — the two commands a newcomer needs are `make demo` and `make test`.
# PGXS part: `make install` puts movrec.control and the install script into
# PostgreSQL's share dir so that `CREATE EXTENSION movrec CASCADE` works.

EXTENSION_NAME = movrec
# The version lives in one place, the movrec package (pyproject.toml reads it from there too).
EXTVERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' plpython/movrec/__init__.py)
SCRIPT = extension/$(EXTENSION_NAME)--$(EXTVERSION).sql
CONTROL = extension/$(EXTENSION_NAME).control
# One upgrade script per older release, from it straight to this one (sql/upgrade/ has the steps).
OLD_VERSIONS = $(patsubst sql/upgrade/movrec--%.sql,%,$(wildcard sql/upgrade/movrec--*.sql))
UPGRADES = $(foreach step,$(OLD_VERSIONS),extension/movrec--$(firstword $(subst --, ,$(step)))--$(EXTVERSION).sql)
DATA_built = $(CONTROL) $(SCRIPT) $(UPGRADES)
MODULEDIR = extension
PG_CONFIG ?= $(shell ls -d /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -1)
VENV = .venv
PY = $(VENV)/bin/python

.PHONY: all setup demo test lint extension regress-db FORCE
all: extension

# The extension scripts are built from sql/, never edited by hand
# (installer/movrec_cli/sqlfiles.py: the same text `movrec install` runs).  They pin the venv
# that backends load movrec from (MOVREC_VENV, default this checkout's .venv): a file in the
# server's share directory is something only root could change.
MOVREC_VENV ?= $(realpath $(VENV))
extension: $(DATA_built)
$(SCRIPT) $(UPGRADES) &: sql/*.sql sql/upgrade/*.sql installer/movrec_cli/sqlfiles.py FORCE
	python3 installer/movrec_cli/sqlfiles.py extension $(EXTVERSION) '$(MOVREC_VENV)' . >/dev/null
FORCE:
$(CONTROL): $(CONTROL).in plpython/movrec/__init__.py
	sed 's/@VERSION@/$(EXTVERSION)/' $< > $@

# Citus (the scale-out install and its tests): a packaged Citus where one is installed, else
# a build from this source tarball (installer/citus.sh); the shared copy beside the checkout
# when there is one.  Unset and no package: the Citus tests skip.
CITUS_SRC ?= $(firstword $(wildcard $(abspath $(CURDIR)/../shared/vendor/citus/citus-13.2.2.tar.gz)))
export CITUS_SRC

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

# SQL regression suite (pg_regress): test/sql/NN_*.sql run in name order in one database,
# their output compared with test/expected/NN_*.out.  `make installcheck` runs it against a
# running server: PGHOST/PGPORT/PGUSER when set, else the embedded cluster (`movrec db up`).
# It first recreates the database movrec_regress there (regress-db): `movrec install` and the
# demo data (fixed users and seed, so the expected outputs hold).  tests/test_regress.py runs
# the same target against the test harness's cluster, so `make test` runs the suite too.
REGRESS = $(sort $(basename $(notdir $(wildcard test/sql/*.sql))))
REGRESS_DB = movrec_regress
REGRESS_OUTPUTDIR ?= test
REGRESS_OPTS = --inputdir=test --outputdir=$(REGRESS_OUTPUTDIR) --use-existing
REGRESS_PREP = regress-db
EXTRA_CLEAN = test/results test/regression.diffs test/regression.out
MOVREC = $(VENV)/bin/movrec
PSQL = $(shell $(PG_CONFIG) --bindir)/psql

ifeq ($(PGHOST),)
ifneq ($(filter installcheck regress-db,$(MAKECMDGOALS)),)
EMBEDDED_DSN := $(shell $(MOVREC) db dsn)
export PGHOST := $(patsubst host=%,%,$(filter host=%,$(EMBEDDED_DSN)))
export PGPORT := $(patsubst port=%,%,$(filter port=%,$(EMBEDDED_DSN)))
export PGUSER := $(patsubst user=%,%,$(filter user=%,$(EMBEDDED_DSN)))
endif
endif

regress-db:
	@echo "regress-db: recreating $(REGRESS_DB) on $${PGHOST:-localhost}:$${PGPORT:-5432}"
	$(PSQL) -X -q -v ON_ERROR_STOP=1 -d postgres -c 'SET client_min_messages = warning' \
		-c 'DROP DATABASE IF EXISTS $(REGRESS_DB) WITH (FORCE)' -c 'CREATE DATABASE $(REGRESS_DB)'
	$(MOVREC) install --dsn 'dbname=$(REGRESS_DB)'
	$(MOVREC) load demo --dsn 'dbname=$(REGRESS_DB)' --users 300 --seed 7

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# (after PGXS, which sets the database pg_regress is pointed at)
CONTRIB_TESTDB = $(REGRESS_DB)
