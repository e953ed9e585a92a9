#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property/integration tests against real
# services, browser tests in headless Chromium, compose-file checks and a benchmark smoke
# run. Installs what it needs first (cached between runs).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing tools (cached after the first run)"
scripts/install-deps.sh --all

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "declared rust-version"
scripts/check-msrv.sh

step "licences and banned crates (cargo deny, offline: no advisory database)"
# cargo deny reads every package's manifest, those of other platforms' dependencies too,
# which a build on this one never downloads.
cargo fetch --locked
"${KVSYNC_TOOLS:-$HOME/.cache/kvsync-tools}/bin/cargo-deny" deny --offline --locked \
  check --hide-inclusion-graph licenses bans sources

step "building binaries"
cargo build --workspace --bins --locked

step "unit, property and integration tests"
cargo test --workspace --locked

step "compose files"
scripts/check-compose.sh

step "API contract (schemathesis, with and without a token)"
KVSYNC_E2E_SKIP_BUILD=1 scripts/contract.sh

step "browser tests"
scripts/e2e.sh
