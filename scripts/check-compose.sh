#!/usr/bin/env bash
# Validates every compose file with `docker-compose config`: once with the variables of
# .env.example (what a multi-machine user fills in), and docker-compose-all.yml also
# with no .env at all (what a one-host user types). The meaning of the files (variables
# the node accepts, ports, service names) is checked by crates/kvsync-node/tests/compose.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v docker-compose >/dev/null || scripts/install-deps.sh --compose

# Without an .env next to them, so the check sees what a fresh clone sees.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp docker-compose-*.yml .env.example "$work"/
status=0
for file in docker-compose-kafka.yml docker-compose-node1.yml docker-compose-node2.yml docker-compose-all.yml; do
  if docker-compose --project-directory "$work" --env-file "$work/.env.example" -f "$work/$file" config -q; then
    echo "ok   $file (with .env.example)"
  else
    echo "FAIL $file (with .env.example)"; status=1
  fi
done
if docker-compose --project-directory "$work" -f "$work/docker-compose-all.yml" config -q; then
  echo "ok   docker-compose-all.yml (no .env)"
else
  echo "FAIL docker-compose-all.yml (no .env)"; status=1
fi
# The multi-machine files must refuse to start without KAFKA_HOST rather than guess.
if docker-compose --project-directory "$work" -f "$work/docker-compose-node1.yml" config -q 2>/dev/null; then
  echo "FAIL docker-compose-node1.yml accepted a missing KAFKA_HOST/MONGO_PASSWORD"; status=1
else
  echo "ok   docker-compose-node1.yml refuses to run without its .env"
fi
exit $status
