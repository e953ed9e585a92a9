#!/usr/bin/env bash
# Installs everything the local cluster and the test suite need, skipping what is already there.
# Tools land in $KVSYNC_TOOLS (default: ~/.cache/kvsync-tools) so later runs reuse them.
#
#   scripts/install-deps.sh            # broker + MongoDB-protocol server
#   scripts/install-deps.sh --browser  # also Chromium, chromedriver and playwright-core
#   scripts/install-deps.sh --compose  # also docker-compose (for validating compose files)
#   scripts/install-deps.sh --peers    # also etcd and Redis from Debian (the benchmark's
#                                      # peers: about 10 s on a fresh machine)
#   scripts/install-deps.sh --contract # also schemathesis (the API contract run)
set -euo pipefail

TOOLS="${KVSYNC_TOOLS:-$HOME/.cache/kvsync-tools}"
TANSU_VERSION=0.6.0
CARGO_DENY_VERSION=0.20.2
# Pinned: a fresh machine gets what the suite last passed with (override to try another).
NX_VERSION="${NX_27017_VERSION:-0.8.1}"
PLAYWRIGHT_VERSION="${PLAYWRIGHT_CORE_VERSION:-1.65.2}"
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
mkdir -p "$TOOLS"

want_browser=0
want_compose=0
want_peers=0
want_contract=0
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    --compose) want_compose=1 ;;
    --peers) want_peers=1 ;;
    --contract) want_contract=1 ;;
    --all) want_browser=1; want_compose=1; want_peers=1; want_contract=1 ;;
    *) echo "unknown flag: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[install-deps] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ $apt_updated -eq 0 ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Kafka-protocol broker (tansu), built once with a storage engine.
if [ ! -x "$TOOLS/bin/tansu" ]; then
  log "building tansu $TANSU_VERSION (a few minutes, once)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$TOOLS" --quiet
fi

# Licence and dependency-graph checks (cargo deny, run by scripts/test.sh), built once.
if [ ! -x "$TOOLS/bin/cargo-deny" ]; then
  log "building cargo-deny $CARGO_DENY_VERSION (a few minutes, once)"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --root "$TOOLS" --quiet
fi

# MongoDB wire-protocol server (nx-27017) in its own virtual environment.
if [ ! -x "$TOOLS/venv/bin/nx-27017" ]; then
  log "installing nx-27017 into $TOOLS/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "nx-27017${NX_VERSION:+==$NX_VERSION}"
fi

# Build prerequisites for rdkafka's bundled librdkafka.
apt_install cmake pkg-config libssl-dev libsasl2-dev zlib1g-dev libcurl4-openssl-dev

if [ $want_browser -eq 1 ]; then
  apt_install chromium chromium-driver fonts-dejavu-core
  if [ ! -d "$TOOLS/node/node_modules/playwright-core" ]; then
    log "installing playwright-core into $TOOLS/node"
    mkdir -p "$TOOLS/node"
    (cd "$TOOLS/node" && npm install --silent --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null)
  fi
fi

if [ $want_compose -eq 1 ]; then
  apt_install docker-compose
fi

if [ $want_peers -eq 1 ]; then
  # Debian starts neither (no init system here, or policy-rc.d); the benchmark runs its own
  # on free loopback ports.
  apt_install etcd-server redis-server
fi

if [ $want_contract -eq 1 ] && [ ! -x "$TOOLS/schemathesis/bin/st" ]; then
  # Its own environment: its dependencies must not move the MongoDB server's.
  log "installing schemathesis $SCHEMATHESIS_VERSION into $TOOLS/schemathesis"
  python3 -m venv "$TOOLS/schemathesis"
  "$TOOLS/schemathesis/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

log "ok: tools in $TOOLS"
