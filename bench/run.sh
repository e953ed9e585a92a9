#!/usr/bin/env bash
# The benchmark in one command: installs the broker and the MongoDB-protocol server
# (scripts/install-deps.sh, cached), builds release, starts a local cluster and runs
# `kvsync-bench all`, which writes report.md, report.json and latency.svg to
# bench/results/<date>-<machine tag>/.
#
#   bench/run.sh                 # the standard run (about two minutes)
#   bench/run.sh --long          # the throughput run makes 100000 writes (memory check)
#   bench/run.sh --quick         # smoke run, seconds
#   bench/run.sh --rate 200 --out /some/dir   # any other `kvsync-bench all` flags
#   bench/run.sh tombstones      # what 100 000 tombstones cost a listing (one node, ~2 minutes)
#   bench/run.sh tombstones --out DIR --requests 500   # with `kvsync-bench tombstones` flags
#   bench/run.sh wait            # PUT ?wait=all beside a plain PUT, 2 and 3 nodes (~1 minute)
#   bench/run.sh join            # a third node joins by replay and from state (see bench/README.md)
#   bench/run.sh peers           # kvsync beside etcd and Redis (installs them from Debian, ~4 minutes)
#   bench/run.sh scale           # 2, 3 and 5 nodes: delay, maximum, 60 s at 80 % of it (~8 minutes)
#   bench/run.sh fetch-wait      # replication delay against CPU for fetch waits of 1, 2, 5, 10 ms
#   bench/run.sh ui              # the web UI with 100 000 pairs in headless Chromium (see bench/ui/)
#   bench/run.sh ui --pairs 2000 --changes 30 --stream 500 --out DIR   # a short run
set -euo pipefail
cd "$(dirname "$0")/.."

command=all
if [ "${1:-}" = ui ]; then
  # The browser benchmark: a Node script driving headless Chromium against a release cluster.
  shift
  scripts/install-deps.sh --browser
  cargo build --release --locked -p kvsync-node -p kvsync-testkit
  TOOLS="${KVSYNC_TOOLS:-$HOME/.cache/kvsync-tools}"
  export KVSYNC_TOOLS="$TOOLS"
  export NODE_PATH="$TOOLS/node/node_modules${NODE_PATH:+:$NODE_PATH}"
  target="${CARGO_TARGET_DIR:-target}"
  case "$target" in /*) ;; *) target="$(pwd)/$target" ;; esac
  export KVSYNC_CLUSTER_BIN="${KVSYNC_CLUSTER_BIN:-$target/release/kvsync-cluster}"
  exec node bench/ui/ui-bench.mjs "$@"
fi
case "${1:-}" in
  all | latency | floor | throughput | tombstones | wait | join | peers | scale | fetch-wait) command=$1; shift ;;
esac
args=()
for arg in "$@"; do
  case "$arg" in
    --long) args+=(--writes 100000) ;;
    *) args+=("$arg") ;;
  esac
done

if [ "$command" = peers ]; then scripts/install-deps.sh --peers; else scripts/install-deps.sh; fi
cargo build --release --locked -p kvsync-bench -p kvsync-node
exec target/release/kvsync-bench "$command" "${args[@]}"
