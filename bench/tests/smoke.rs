//! Short runs of the whole benchmark (`all --quick`, a few seconds) and of `tombstones`,
//! `wait` and `join`, one at a time, so they cannot rot.
//!
//! It needs the `kvsync-node` binary of the same profile next to `kvsync-bench` (cargo
//! builds only this package's binary for its tests: run `cargo build --workspace --bins`
//! first, as scripts/test.sh does) or `KVSYNC_NODE_BIN`, and the tools from
//! scripts/install-deps.sh.

use std::{path::PathBuf, process::Command, sync::Mutex};

use serde_json::Value;

/// One cluster at a time on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The benchmark and the node binary it starts.
fn binaries() -> (PathBuf, PathBuf) {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_kvsync-bench"));
    let node = std::env::var_os("KVSYNC_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| exe.with_file_name("kvsync-node"));
    assert!(
        node.is_file(),
        "kvsync-node not found at {node:?}: run `cargo build --workspace --bins` first \
         (scripts/test.sh does), or set KVSYNC_NODE_BIN"
    );
    (exe, node)
}

#[test]
fn quick_run_writes_a_report_with_numbers() {
    let _serial = serial();
    let (exe, node) = binaries();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(&exe)
        .args(["all", "--quick", "--out"])
        .arg(out.path())
        .env("KVSYNC_NODE_BIN", &node)
        .output()
        .expect("running kvsync-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "kvsync-bench failed: {stderr}");

    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("| p50 |") && md.contains("floor"), "{md}");
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    let payloads = json["latency"]["payloads"].as_array().unwrap();
    assert_eq!(payloads.len(), 4, "{json}");
    for p in payloads {
        assert_eq!(p["errors"], 0, "{p}");
        assert!(p["replication"]["count"].as_u64().unwrap() > 0, "{p}");
        assert!(p["replication"]["p50_ms"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["write_ack"]["count"].as_u64().unwrap() > 0, "{p}");
    }
    let floor = &json["floor"];
    assert!(floor["kafka"]["count"].as_u64().unwrap() > 0, "{floor}");
    assert_eq!(floor["kafka_errors"], 0, "{floor}");
    assert!(floor["db_write"]["count"].as_u64().unwrap() > 0, "{floor}");
    assert!(floor["floor_p50_ms"].as_f64().unwrap() > 0.0, "{floor}");
    let tp = &json["throughput"];
    assert!(tp["acknowledged"].as_u64().unwrap() > 0, "{tp}");
    assert_eq!(tp["errors"], 0, "{tp}");
    assert!(tp["converged_after_ms"].as_f64().is_some(), "{tp}");
    assert!(tp["rss_after"]["a_kib"].as_u64().unwrap() > 0, "{tp}");
    assert!(json["machine"]["cores"].as_u64().unwrap() > 0);
}

#[test]
fn a_short_tombstone_run_lists_the_live_pairs_throughout() {
    let _serial = serial();
    let (exe, node) = binaries();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(&exe)
        .args([
            "tombstones",
            "--live",
            "20",
            "--tombstones",
            "500",
            "--requests",
            "20",
            "--warmup",
            "2",
            "--settle",
            "0",
            "--out",
        ])
        .arg(out.path())
        .env("KVSYNC_NODE_BIN", &node)
        .output()
        .expect("running kvsync-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "kvsync-bench failed: {stderr}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    for (phase, documents) in [("without", 20), ("with", 520), ("collected", 20)] {
        let m = &json[phase];
        assert_eq!(m["errors"], 0, "{phase}: {m}");
        assert_eq!(m["latency"]["count"], 20, "{phase}: {m}");
        assert_eq!(m["documents"], documents, "{phase}: {m}");
    }
    assert_eq!(json["collected_count"], 500, "{json}");
    assert!(json["ratio_p50"].as_f64().unwrap() > 0.0, "{json}");
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("and 500 tombstones"), "{md}");
}

/// Runs `kvsync-bench` with `args` and `--out` a new directory; returns its report.json.
fn report_of(args: &[&str]) -> Value {
    json_of(args, "report.json")
}

/// Runs `kvsync-bench` with `args` and `--out` a new directory; returns its `file`.
fn json_of(args: &[&str], file: &str) -> Value {
    let (exe, node) = binaries();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(&exe)
        .args(args)
        .arg("--out")
        .arg(out.path())
        .env("KVSYNC_NODE_BIN", &node)
        .output()
        .expect("running kvsync-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "kvsync-bench {args:?} failed: {stderr}"
    );
    serde_json::from_str(&std::fs::read_to_string(out.path().join(file)).unwrap()).unwrap()
}

#[test]
fn a_tiny_wait_run_has_every_waiting_write_answered_all() {
    let _serial = serial();
    let json = report_of(&["wait", "--count", "5", "--warmup", "2"]);
    let runs = json["wait"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{json}");
    for (run, nodes) in runs.iter().zip([2, 3]) {
        assert_eq!(run["nodes"], nodes, "{run}");
        assert_eq!(run["peers"], nodes - 1, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
        assert_eq!(run["answered_all"], 5, "{run}");
        assert_eq!(run["wait_all"]["count"], 5, "{run}");
        assert_eq!(run["plain"]["count"], 5, "{run}");
        assert!(run["wait_all"]["p50_ms"].as_f64().unwrap() > 0.0, "{run}");
    }
}

#[test]
fn a_tiny_join_run_times_a_replay_and_a_join_from_state() {
    let _serial = serial();
    let json = report_of(&["join", "--pairs", "40", "--writes-per-key", "3"]);
    let join = &json["join"];
    assert_eq!(join["events"], 120, "{join}");
    let joins = join["joins"].as_array().unwrap();
    assert_eq!(joins.len(), 2, "{join}");
    let (replay, state) = (&joins[0], &joins[1]);
    assert_eq!(replay["mode"], "replay", "{join}");
    assert_eq!(state["mode"], "state", "{join}");
    for j in joins {
        assert_eq!(j["timed_out"], false, "{j}");
        assert!(j["all_pairs_s"].as_f64().unwrap() > 0.0, "{j}");
        assert_eq!(j["conflicts"], 0, "{j}");
    }
    // The replay applies the history, the join from state one event per pair.
    assert!(replay["events_applied"].as_u64().unwrap() >= 120, "{join}");
    assert!(state["events_applied"].as_u64().unwrap() < 120, "{join}");
    assert_eq!(state["snapshots_served"], 1, "{join}");
}

/// Needs etcd and redis-server (scripts/install-deps.sh --peers, which --all includes).
#[test]
fn a_tiny_peers_run_measures_kvsync_etcd_and_redis_alike() {
    let _serial = serial();
    let json = json_of(&["peers", "--quick", "--rounds", "1"], "peers.json");
    let systems = json["systems"].as_array().unwrap();
    let names: Vec<&str> = systems
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kvsync", "etcd", "Redis"], "{json}");
    for s in systems {
        for set in s["sets"].as_array().unwrap() {
            assert_eq!(set["errors"], 0, "{set}");
            assert_eq!(set["replication"]["count"], 10, "{set}");
        }
        assert!(s["replication"]["p50_ms"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["throughput"]["acknowledged"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["throughput"]["errors"], 0, "{s}");
        assert!(!s["promise"].as_str().unwrap().is_empty(), "{s}");
    }
}

#[test]
fn tiny_scale_and_fetch_wait_runs_spread_writes_and_measure_cpu() {
    let _serial = serial();
    let json = json_of(&["scale", "--quick", "--nodes", "3"], "scale.json");
    let row = &json["rows"][0];
    assert_eq!(row["nodes"], 3, "{json}");
    assert_eq!(row["latency_errors"], 0, "{row}");
    assert_eq!(row["replication"]["count"], 10, "{row}");
    assert!(row["max"]["acknowledged"].as_u64().unwrap() > 0, "{row}");
    assert!(
        row["sustained"]["acknowledged"].as_u64().unwrap() > 0,
        "{row}"
    );
    assert!(row["lag_at_end_ms"].as_f64().is_some(), "{row}");
    let cpu = row["sustained"]["cpu"].as_array().unwrap();
    assert!(cpu.iter().any(|c| c["process"] == "kvsync-node 3"), "{row}");

    let json = json_of(
        &["fetch-wait", "--quick", "--waits", "2"],
        "fetch-wait.json",
    );
    let row = &json["rows"][0];
    assert_eq!(row["fetch_wait_ms"], 2, "{json}");
    assert_eq!(row["errors"], 0, "{row}");
    assert!(
        row["cpu_busy"]["broker (tansu)"].as_f64().is_some(),
        "{row}"
    );
}
