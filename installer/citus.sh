#!/usr/bin/env bash
# Citus for the scale-out install and its tests: a packaged Citus when one is installed (the
# server's pkglibdir has citus.so and the share dir citus.control), else a build from the
# upstream source tarball that CITUS_SRC names, with any *.patch beside it applied.
# Idempotent: when Citus is installed it only checks.  With neither a packaged
# Citus nor CITUS_SRC it says so and succeeds: Citus is optional (the tests that need it skip).
#
#   PG_CONFIG        the server's pg_config (default: newest installed server's)
#   CITUS_SRC        path to citus-<version>.tar.gz (e.g. ../shared/vendor/citus/...)
#   CITUS_BUILD_DIR  where to unpack and build, outside the checkout (default /var/tmp/movrec-citus-build)
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

CITUS_VERSION=13.2.2
PG_CONFIG=${PG_CONFIG:-$(ls -d /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -1)}
LIBDIR=$($PG_CONFIG --pkglibdir)
SHAREDIR=$($PG_CONFIG --sharedir)

installed_version() {
    [ -f "$LIBDIR/citus.so" ] && [ -f "$SHAREDIR/extension/citus.control" ] || return 1
    sed -n "s/^default_version = '\(.*\)'/\1/p" "$SHAREDIR/extension/citus.control"
}

have=$(installed_version || true)
if [ -n "$have" ]; then  # a package, or this script's earlier build: nothing to do
    # (the control file carries the SQL version, 13.2-1; the library names its release)
    release=$(grep -ao "Citus [0-9][0-9.]*" "$LIBDIR/citus.so" | head -1 || true)
    step "citus: ${release:-$have} present ($LIBDIR/citus.so)"
    exit 0
fi
if [ -z "${CITUS_SRC:-}" ]; then
    step "citus: not installed and CITUS_SRC unset: skipped (the Citus tests will skip)"
    exit 0
fi
if [ ! -f "$CITUS_SRC" ]; then
    echo "citus: CITUS_SRC=$CITUS_SRC is not a file" >&2
    exit 1
fi
CITUS_SRC=$(readlink -f "$CITUS_SRC")

# Build dependencies (Citus's configure wants the compression and security libraries).
DEPS=(libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev libssl-dev libselinux1-dev
      libxslt1-dev libpam0g-dev libreadline-dev libicu-dev make gcc)
missing=()
for p in "${DEPS[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    step "citus: apt: installing build dependencies ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

BUILD_DIR=${CITUS_BUILD_DIR:-/var/tmp/movrec-citus-build}
step "citus: building $CITUS_VERSION from $CITUS_SRC in $BUILD_DIR (5-10 minutes)"
start=$(date +%s)
rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"
log="$BUILD_DIR.log"
tar xzf "$CITUS_SRC" -C "$BUILD_DIR"
# A git archive may or may not have a top directory: build where configure is.
src=$BUILD_DIR
[ -f "$src/configure" ] || src=$(find "$BUILD_DIR" -mindepth 1 -maxdepth 1 -type d | head -1)
for p in "$(dirname "$CITUS_SRC")"/*.patch; do
    [ -f "$p" ] || continue
    patch -d "$src" -p1 -s < "$p"
done
if ! (cd "$src" && ./configure PG_CONFIG="$PG_CONFIG" --without-libcurl \
        && make -j"$(nproc)" with_llvm=no && $SUDO make install with_llvm=no) >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "citus: build failed; the full log is $log" >&2
    exit 1
fi
step "citus: $(installed_version) installed in $(( $(date +%s) - start ))s (log: $log)"
