#!/usr/bin/env bash
# Browser tests of the web UI: starts a real two-node cluster (kvsync-cluster) and drives
# headless Chromium with playwright-core. Screenshots land in target/e2e-artifacts/ (under
# CARGO_TARGET_DIR if set: the binaries are taken from there too).
#
#   scripts/e2e.sh                 # build, then run all browser tests
#   KVSYNC_E2E_SKIP_BUILD=1 scripts/e2e.sh   # reuse the existing debug build
#   scripts/e2e.sh tests/e2e/ui.test.mjs     # only these test files
#
# Needs: scripts/install-deps.sh --browser (Chromium, playwright-core) and Node.js >= 18.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${KVSYNC_TOOLS:-$HOME/.cache/kvsync-tools}"
export KVSYNC_TOOLS="$TOOLS"
export NODE_PATH="$TOOLS/node/node_modules${NODE_PATH:+:$NODE_PATH}"

if ! command -v node >/dev/null 2>&1; then
  echo "e2e: node (Node.js >= 18) is required" >&2
  exit 1
fi
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || [ ! -d "$TOOLS/node/node_modules/playwright-core" ]; then
  echo "e2e: Chromium or playwright-core missing; installing (scripts/install-deps.sh --browser)" >&2
  scripts/install-deps.sh --browser
fi

if [ "${KVSYNC_E2E_SKIP_BUILD:-0}" != "1" ] && [ -z "${KVSYNC_CLUSTER_BIN:-}" ]; then
  cargo build -p kvsync-node -p kvsync-testkit
fi

mkdir -p "${CARGO_TARGET_DIR:-target}/e2e-artifacts"
# Test files given as arguments run alone (e.g. scripts/e2e.sh tests/e2e/ui.test.mjs); other
# arguments go to node --test.
files=()
opts=()
for arg in "$@"; do
  case "$arg" in
    *.test.mjs) files+=("$arg") ;;
    *) opts+=("$arg") ;;
  esac
done
[ ${#files[@]} -gt 0 ] || files=(tests/e2e/*.test.mjs)
exec node --test --test-concurrency=1 --test-timeout=600000 "${opts[@]}" "${files[@]}"
