#!/usr/bin/env bash
# Checks that the declared `rust-version` (workspace.package in Cargo.toml) is honest:
# no package in Cargo.lock that we build for this platform may declare a newer one.
# Reads `cargo metadata` only: fast, and no network (the dependencies must already be
# downloaded, as they are once the lints step of scripts/test.sh has run).
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
cargo metadata --format-version 1 --locked --offline --filter-platform "$host" |
  python3 -c '
import json, sys

meta = json.load(sys.stdin)
def version(v):  # "1.89" is "1.89.0"
    return (tuple(int(p) for p in v.split(".")) + (0, 0))[:3]
members = set(meta["workspace_members"])
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"FAIL workspace members declare differing rust-versions: {sorted(map(str, ours))}")
ours = ours.pop()
used = {n["id"] for n in meta["resolve"]["nodes"]}
newer = sorted(
    (p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] in used and p["id"] not in members
    and p["rust_version"] and version(p["rust_version"]) > version(ours)
)
for name, v, rv in newer:
    print(f"FAIL {name} {v} needs Rust {rv}, newer than our rust-version {ours}")
if newer:
    sys.exit(1)
print(f"ok   rust-version {ours}: no locked dependency needs a newer Rust")
'
