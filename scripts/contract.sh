#!/usr/bin/env bash
# The API contract: schemathesis runs every check (see tests/contract/schemathesis.toml)
# against a real node's own OpenAPI document, once with an API token and once without,
# with a fixed seed and a bounded number of examples, so a run is repeatable and short.
#
#   scripts/contract.sh                        # build, then both runs
#   KVSYNC_CONTRACT_EXAMPLES=50 scripts/contract.sh
#   KVSYNC_E2E_SKIP_BUILD=1 scripts/contract.sh   # reuse the existing debug build
#
# Needs: scripts/install-deps.sh --contract (schemathesis, pinned).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${KVSYNC_TOOLS:-$HOME/.cache/kvsync-tools}"
export KVSYNC_TOOLS="$TOOLS"
ST="$TOOLS/schemathesis/bin/st"
if [ ! -x "$ST" ]; then
  scripts/install-deps.sh --contract
fi
if [ "${KVSYNC_E2E_SKIP_BUILD:-0}" != "1" ]; then
  cargo build -p kvsync-node -p kvsync-testkit
fi
BIN="${CARGO_TARGET_DIR:-target}/debug"
EXAMPLES="${KVSYNC_CONTRACT_EXAMPLES:-5}"
SEED="${KVSYNC_CONTRACT_SEED:-1}"
TOKEN="contract-token-5d0c2f7e"

work=$(mktemp -d)
cluster_pid=""
cleanup() {
  if [ -n "$cluster_pid" ]; then
    kill "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# One run: a fresh one-node cluster (with the node settings given), then schemathesis.
run() {
  local name=$1
  shift
  "$BIN/kvsync-cluster" --nodes 1 --ignore-stdin "$@" >"$work/$name.cluster" 2>"$work/$name.log" &
  cluster_pid=$!
  local url=""
  for _ in $(seq 1 600); do
    url=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$work/$name.cluster" | head -n 1)
    [ -n "$url" ] && break
    if ! kill -0 "$cluster_pid" 2>/dev/null; then
      echo "contract: the cluster did not start" >&2
      tail -n 40 "$work/$name.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  [ -n "$url" ] || { echo "contract: no cluster after 60 s" >&2; exit 1; }
  echo "==> contract ($name): $url"
  local auth=()
  [ "$name" = "with-token" ] && auth=(--header "Authorization: Bearer $TOKEN")
  local status=0
  (cd tests/contract && SCHEMATHESIS_HOOKS=hooks "$ST" --config-file schemathesis.toml --no-color \
    run "$url/api/openapi.json" "${auth[@]}" \
    --max-examples "$EXAMPLES" --seed "$SEED" --workers 2 --generation-database none \
    --phases coverage,fuzzing,stateful) || status=$?
  kill "$cluster_pid" 2>/dev/null || true
  wait "$cluster_pid" 2>/dev/null || true
  cluster_pid=""
  return $status
}

# Requests that wait (`wait=`, `min_version=`) are capped below the request timeout:
# a short one keeps the thousands of generated requests quick.
fast=(--node-env KVSYNC_REQUEST_TIMEOUT_MS=1500)
failed=0
run with-token "${fast[@]}" --node-env "KVSYNC_API_TOKEN=$TOKEN" || failed=1
run without-token "${fast[@]}" || failed=1
exit $failed
