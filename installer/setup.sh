#!/usr/bin/env bash
# movrec setup: PostgreSQL + PL/Python 3 + pgvector + pg_cron, and the virtualenv
# that the backends load movrec from.  Idempotent: a rerun only checks.
#
#   PG_MAJOR   PostgreSQL major version (default: newest installed server, else 15)
#   MOVREC_VENV_HOME  where to put the venv when the postgres OS user cannot read
#                     this checkout (default /var/lib/movrec/<hash of checkout>)
#   CITUS_SRC  a Citus source tarball to build when no Citus is installed (installer/citus.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
# Run quietly; show the output only when the command fails.
quiet() {
    local log; log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then cat "$log" >&2; rm -f "$log"; return 1; fi
    rm -f "$log"
}
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

if [ -z "${PG_MAJOR:-}" ]; then
    PG_MAJOR=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)
    PG_MAJOR=${PG_MAJOR:-15}
fi
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config

# 1. Distro packages -------------------------------------------------------
PKGS=(postgresql-$PG_MAJOR postgresql-plpython3-$PG_MAJOR postgresql-server-dev-$PG_MAJOR
      postgresql-$PG_MAJOR-cron python3-venv python3-dev make gcc)
missing=()
for p in "${PKGS[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    step "apt: PostgreSQL $PG_MAJOR, PL/Python 3, pg_cron present"
fi

# 1b. A headless browser for the report's test (tests/test_report.py opens the page in
# Chromium through selenium).  Debian's packages, never a browser download: these machines
# reach package registries only.  Not fatal: without it that one test skips, saying why.
BROWSER_PKGS=(chromium chromium-driver)
missing=()
for p in "${BROWSER_PKGS[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    step "apt: installing ${missing[*]} (headless browser for the report test)"
    { $SUDO apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
             "${missing[@]}" >/dev/null; } \
        || echo "setup: could not install ${missing[*]}; tests/test_report.py will skip" >&2
else
    step "apt: chromium and chromium-driver present"
fi

# 2. pgvector: the distro package when there is one, else Debian's source package.
SHAREDIR=$($PG_CONFIG --sharedir)
if [ -f "$SHAREDIR/extension/vector.control" ]; then
    step "pgvector: $(sed -n "s/^default_version = '\(.*\)'/\1/p" "$SHAREDIR/extension/vector.control") present"
elif apt-cache show "postgresql-$PG_MAJOR-pgvector" >/dev/null 2>&1; then
    step "pgvector: installing postgresql-$PG_MAJOR-pgvector"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "postgresql-$PG_MAJOR-pgvector" >/dev/null
else
    step "pgvector: building from Debian trixie's source package (no package for this distro)"
    SRC_LIST=/etc/apt/sources.list.d/movrec-trixie-src.sources
    if [ ! -f "$SRC_LIST" ]; then
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            | $SUDO tee "$SRC_LIST" >/dev/null
    fi
    $SUDO apt-get update -qq
    build=$(mktemp -d)
    (cd "$build" && apt-get source --download-only pgvector >/dev/null 2>&1 \
        && tar xzf pgvector_*.orig.tar.gz && cd pgvector-*/ \
        && make -s PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null \
        && $SUDO make -s install PG_CONFIG="$PG_CONFIG" >/dev/null)
    rm -rf "$build"
fi

# 3. The virtualenv, made from the interpreter that PL/Python links to. --------
PYVER=$(ldd "$($PG_CONFIG --pkglibdir)/plpython3.so" | sed -n 's/.*libpython\(3\.[0-9]*\).*/\1/p' | head -1)
PYTHON=/usr/bin/python$PYVER
[ -x "$PYTHON" ] || { echo "setup: PL/Python links libpython$PYVER but $PYTHON is missing" >&2; exit 1; }

# Backends run as the postgres OS user: the venv and the code must be readable by it.
EDITABLE=1
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -r "$ROOT/pyproject.toml"; then
    EDITABLE=0
    home=${MOVREC_VENV_HOME:-/var/lib/movrec/$(printf '%s' "$ROOT" | md5sum | cut -c1-10)}
    mkdir -p "$home" && chmod 755 /var/lib/movrec "$home" 2>/dev/null || true
    if [ ! -e .venv ]; then ln -s "$home/venv" .venv; fi
    step "venv: $ROOT is not readable by the postgres OS user; the venv lives in $home/venv"
fi
VENV=$(readlink -f .venv)
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == tuple(map(int, "'"$PYVER"'".split(".")))' 2>/dev/null; then
    step "venv: creating $VENV from $PYTHON"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    quiet "$VENV/bin/pip" install --upgrade pip
fi
stamp="$VENV/.movrec-deps"
want=$(sha1sum pyproject.toml | cut -c1-40)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "venv: installing torch==2.13.0 (CPU), numpy, psycopg, pgvector, pandas, click, tqdm, plotly, tabulate, tenacity, pooch"
    quiet "$VENV/bin/pip" install "torch==2.13.0" numpy "psycopg[binary]" pgvector pandas click tqdm \
        plotly tabulate tenacity pooch pytest ruff mypy selenium
    echo "$want" > "$stamp"
fi
if [ "$EDITABLE" = 1 ]; then
    "$VENV/bin/python" -c 'import movrec, movrec_cli' 2>/dev/null \
        || { step "venv: installing movrec (editable)"; quiet "$VENV/bin/pip" install --no-deps -e .; }
else
    # A copy goes stale when the sources change, and only then: reinstall on a new stamp.
    src_stamp="$VENV/.movrec-sources"
    src_want=$(find plpython installer sql pyproject.toml -type f -not -path '*/__pycache__/*' \
        -not -name '*.pyc' -print0 | sort -z | xargs -0 sha1sum | sha1sum | cut -c1-40)
    if [ "$(cat "$src_stamp" 2>/dev/null)" != "$src_want" ]; then
        step "venv: installing movrec (copy; the checkout is not readable by postgres)"
        quiet "$VENV/bin/pip" install --no-deps --force-reinstall .
        echo "$src_want" > "$src_stamp"
    else
        step "venv: movrec copy up to date"
    fi
fi
chmod -R a+rX "$VENV" 2>/dev/null || true

# 4. The extension files, so that a DBA can also CREATE EXTENSION movrec CASCADE.
# Built here (cheap), copied into the share directory only when they differ from what is there.
make -s extension PG_CONFIG="$PG_CONFIG" >/dev/null
stale=0
for f in extension/movrec.control extension/movrec--*.sql; do
    cmp -s "$f" "$SHAREDIR/extension/$(basename "$f")" || stale=1
done
if [ "$stale" = 1 ]; then
    step "extension: make install (movrec.control, movrec--$(sed -n 's/^__version__ = "\(.*\)"/\1/p' plpython/movrec/__init__.py).sql and its upgrade scripts)"
    $SUDO make -s install PG_CONFIG="$PG_CONFIG" >/dev/null
else
    step "extension: files in $SHAREDIR/extension up to date"
fi
# 5. Citus, for the scale-out install: a packaged one, else a build from CITUS_SRC (or none).
PG_CONFIG="$PG_CONFIG" bash "$ROOT/installer/citus.sh"

# (versions from the package metadata: importing torch costs seconds on a rerun that only checks)
step "setup done: $("$VENV/bin/python" -c 'from importlib.metadata import version as v; print("torch", v("torch") + ", numpy", v("numpy"))')"
