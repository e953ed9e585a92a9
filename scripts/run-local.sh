#!/usr/bin/env bash
# Runs kvsync on this machine without Docker: a Kafka-protocol broker (tansu), two
# MongoDB-protocol servers (nx-27017) and two nodes. Open http://127.0.0.1:3003 and
# http://127.0.0.1:3004. Data stays in .kvsync/ between runs. Ctrl-C (or SIGTERM) stops
# everything. It keeps running when started in the background (`scripts/run-local.sh &`,
# nohup, a service manager): closing standard input does not stop it.
#
# Extra arguments go to kvsync-cluster (see `kvsync-cluster --help`), e.g. --nodes 3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p kvsync-node -p kvsync-testkit
exec target/release/kvsync-cluster \
  --nodes 2 --http-port 3003 --broker-port 9092 --mongo-port 27017 --dir .kvsync --ignore-stdin "$@"
