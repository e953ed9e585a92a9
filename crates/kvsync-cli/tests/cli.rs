//! The `kvsync` binary against a real cluster (a Kafka-protocol broker, two
//! MongoDB-protocol servers, two nodes with an API token): every subcommand, what it
//! prints and its exit code. What the CLI writes is checked through the testkit's own
//! client, so the two never vouch only for each other.
//!
//! Needs the `kvsync-node` binary of the same profile (cargo builds only this package's
//! binary for its tests: run `cargo build --workspace --bins` first, as scripts/test.sh
//! does, or set `KVSYNC_NODE_BIN`) and the tools from scripts/install-deps.sh.

use std::{
    net::TcpListener,
    process::Stdio,
    time::{Duration, Instant},
};

use kvsync_testkit::{free_port, wait_until, Client, Cluster, ClusterOptions, Cut, Proxy};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "cli-test-token-7d2e9b41";

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Standard output, after checking the command succeeded.
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{self:#?}");
        &self.stdout
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// Checks the exit code, and that standard error names `error` (an API error code).
    fn fails(&self, code: i32, error: &str) {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(self.stderr.contains(error), "{error:?} not said: {self:#?}");
        assert!(self.stdout.is_empty(), "{self:#?}");
    }
}

/// `kvsync --url URL ARGS` with the token in its environment (None: no token).
fn command(url: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvsync"));
    cmd.env_remove("KVSYNC_URL")
        .env_remove("KVSYNC_API_TOKEN")
        .arg("--url")
        .arg(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("KVSYNC_API_TOKEN", t);
    }
    cmd
}

async fn run_with(url: &str, token: Option<&str>, args: &[&str], stdin: &str) -> Run {
    let mut child = command(url, token, args).spawn().expect("kvsync starts");
    let mut input = child.stdin.take().unwrap();
    // A command that does not read its input may have exited already.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kvsync {args:?} did not finish within {T:?}"))
        .unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

async fn kvsync(url: &str, args: &[&str]) -> Run {
    run_with(url, Some(TOKEN), args, "").await
}

async fn kvsync_in(url: &str, args: &[&str], stdin: &str) -> Run {
    run_with(url, Some(TOKEN), args, stdin).await
}

async fn values_of(client: &Client, key: &str) -> Option<Vec<String>> {
    client.get(key).await.unwrap().map(|p| p.values)
}

/// Waits until `client`'s node lists exactly `keys` under `prefix`.
async fn wait_for_keys(client: &Client, prefix: &str, keys: &[&str]) {
    let what = format!("{} to hold {keys:?} under {prefix:?}", client.base());
    wait_until(T, &what, || async {
        let all = client.list_all().await.unwrap_or_default();
        let got: Vec<&str> = all
            .iter()
            .map(|p| p.key.as_str())
            .filter(|k| k.starts_with(prefix))
            .collect();
        got == keys
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_real_cluster() {
    let started = Instant::now();
    let mut c = Cluster::start(ClusterOptions {
        env: vec![("KVSYNC_API_TOKEN".into(), TOKEN.into())],
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    eprintln!("cluster ready after {:?}", started.elapsed());
    let (u1, u2) = (c.nodes[0].url.clone(), c.nodes[1].url.clone());
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());

    probes(&u1).await;
    put_and_get(&u1, &a, &b).await;
    preconditions_and_missing_keys(&u1, &a).await;
    listing(&u1).await;
    waiting(&c, &u1, &b).await;
    backing_up(&c, &u1, &u2).await;
    watching(&mut c, &u1, &u2).await;
    clearing(&u1, &b).await;
    eprintln!("all steps done after {:?}", started.elapsed());
}

/// `export` to a file and standard output, `import` of it (twice: idempotent).
async fn backing_up(c: &Cluster, u1: &str, u2: &str) {
    let file = c.dir().join("backup.jsonl");
    let path = file.to_str().unwrap();
    let run = kvsync(u1, &["export", "--tombstones", "-o", path]).await;
    let said = run.ok().to_owned();
    let text = std::fs::read_to_string(&file).unwrap();
    let n = text.lines().count();
    assert!(n >= 3, "{text}");
    assert_eq!(said, format!("exported {n} pairs\n"));
    let to_stdout = kvsync(u1, &["export", "--tombstones"]).await;
    assert_eq!(to_stdout.ok(), text);
    // Everything is held already (on the peer too): nothing changes.
    let again = kvsync(u2, &["--json", "import", path]).await.json();
    assert_eq!(again["pairs"], n as u64, "{again}");
    assert_eq!(again["changed"], 0, "{again}");
    let missing = kvsync(u1, &["import", "/nonexistent/backup.jsonl"]).await;
    assert_eq!(missing.code, 2, "{missing:#?}");
    let bad = kvsync_in(u1, &["import", "-"], "{\"key\":\"\"}\n").await;
    bad.fails(4, "invalid_import");
}

/// `--wait` on writes, and `cluster`.
async fn waiting(c: &Cluster, u1: &str, b: &Client) {
    wait_until(T, "node1 to see node2 live", || async {
        let view = kvsync(u1, &["--json", "cluster"]).await.json();
        view["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["node"] == "node2" && m["status"] == "live")
    })
    .await
    .unwrap();
    let table = kvsync(u1, &["cluster"]).await;
    let out = table.ok();
    assert!(out.contains("node1") && out.contains("this node"), "{out}");
    assert!(out.contains("node2") && out.contains("live"), "{out}");

    let put = kvsync(u1, &["put", "--wait", "all", "cli/wait", "a"]).await;
    assert!(put.ok().contains("replicated to: node2"), "{put:#?}");
    // Answered once node2 applied it: node2 serves it already.
    assert_eq!(values_of(b, "cli/wait").await.unwrap(), ["a"]);
    let append = kvsync(u1, &["--json", "append", "--wait", "1", "cli/wait", "b"]).await;
    let doc = append.json();
    assert_eq!(doc["replication"]["confirmed"], json!(["node2"]), "{doc}");
    assert_eq!(values_of(b, "cli/wait").await.unwrap(), ["a", "b"]);

    // A peer that does not confirm in time: the write stands, exit code 6.
    c.nodes[1].pause();
    let rm = kvsync(
        u1,
        &["rm", "--wait", "all", "--wait-timeout", "500ms", "cli/wait"],
    )
    .await;
    c.nodes[1].unpause();
    assert_eq!(rm.code, 6, "{rm:#?}");
    assert!(
        rm.stderr.contains("not confirmed in time by: node2"),
        "{rm:#?}"
    );
    assert_eq!(kvsync(u1, &["get", "cli/wait"]).await.code, 1);
    let bad = kvsync(u1, &["put", "--wait", "some", "cli/wait2", "x"]).await;
    bad.fails(4, "invalid_query");
}

async fn probes(u1: &str) {
    let ready = kvsync(u1, &["ready"]).await;
    assert_eq!(ready.ok(), "node1 is ready\n");
    let report = kvsync(u1, &["ready", "--json"]).await.json();
    assert_eq!(report["ready"], true, "{report}");

    let node = kvsync(u1, &["node", "--json"]).await.json();
    assert_eq!(node["node_id"], "node1", "{node}");
    // The human form is the same document, indented.
    let pretty: Value = serde_json::from_str(kvsync(u1, &["node"]).await.ok()).unwrap();
    assert_eq!(pretty["topic"], node["topic"]);

    // The token is needed for the API (not for readiness).
    run_with(u1, None, &["get", "k"], "")
        .await
        .fails(4, "unauthorized");
    run_with(u1, Some("wrong"), &["ls"], "")
        .await
        .fails(4, "HTTP 401");
    assert_eq!(run_with(u1, None, &["ready"], "").await.code, 0);
    // --token overrides the environment.
    let flag = run_with(u1, Some("wrong"), &["--token", TOKEN, "ls"], "").await;
    assert_eq!(flag.code, 0, "{flag:#?}");
}

async fn put_and_get(u1: &str, a: &Client, b: &Client) {
    // A key with a slash, spaces, '?', '%' and non-ASCII: one encoded path segment.
    let key = "user/42 thé?me %20";
    let put = kvsync(u1, &["put", key, "dark mode", "second value"]).await;
    assert!(
        put.ok().starts_with(&format!("created {key} (version ")),
        "{put:#?}"
    );
    assert_eq!(
        kvsync(u1, &["get", key]).await.ok(),
        "dark mode\nsecond value\n"
    );
    let pair = kvsync(u1, &["get", key, "--json"]).await.json();
    assert_eq!(pair["key"], key);
    assert_eq!(pair["values"], json!(["dark mode", "second value"]));
    assert_eq!(pair["origin"], "node1");
    // Written through node1, replicated to node2.
    wait_until(T, "the pair to reach node2", || async {
        values_of(b, key).await == Some(vec!["dark mode".into(), "second value".into()])
    })
    .await
    .unwrap();

    // Standard input, one value per line: CRLF as LF, empty lines kept.
    kvsync_in(u1, &["put", "lines", "-"], "one\r\ntwo words\n\nfour\n")
        .await
        .ok();
    assert_eq!(
        values_of(a, "lines").await.unwrap(),
        ["one", "two words", "", "four"]
    );

    // Values with newlines and edge spaces, as a JSON array on standard input ...
    let tricky = ["line 1\nline 2", "  padded  ", "", "tab\there"];
    let put = kvsync_in(
        u1,
        &["put", "multi", "--json-values", "-", "--json"],
        &serde_json::to_string(&tricky).unwrap(),
    )
    .await
    .json();
    assert_eq!(put["values"], json!(tricky));
    assert_eq!(values_of(a, "multi").await.unwrap(), tricky);
    assert_eq!(
        kvsync(u1, &["get", "multi", "--json"]).await.json()["values"],
        json!(tricky)
    );
    // ... or as the one argument, replacing the pair.
    let replaced = kvsync(u1, &["put", "multi", "--json-values", r#"["x\ny"]"#]).await;
    assert!(replaced.ok().starts_with("updated multi "), "{replaced:#?}");
    assert_eq!(values_of(a, "multi").await.unwrap(), ["x\ny"]);

    // From a file, one value per line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.txt");
    std::fs::write(&file, "from a file\nsecond line\n").unwrap();
    kvsync(u1, &["put", "filed", "--file", file.to_str().unwrap()])
        .await
        .ok();
    assert_eq!(
        values_of(a, "filed").await.unwrap(),
        ["from a file", "second line"]
    );

    // No values: an empty list.
    kvsync(u1, &["put", "empty"]).await.ok();
    assert_eq!(values_of(a, "empty").await.unwrap(), Vec::<String>::new());
    assert_eq!(kvsync(u1, &["get", "empty"]).await.ok(), "");

    // Append to a pair, and to a new one (created).
    let appended = kvsync(u1, &["append", key, "third"]).await;
    assert!(appended.ok().starts_with("updated "), "{appended:#?}");
    assert_eq!(
        values_of(a, key).await.unwrap(),
        ["dark mode", "second value", "third"]
    );
    let fresh = kvsync(u1, &["append", "fresh", "first", "--json"])
        .await
        .json();
    assert_eq!(fresh["values"], json!(["first"]));
    assert_eq!(fresh["origin"], "node1");

    // A value that looks like a flag goes after `--`.
    kvsync(u1, &["put", "dash", "--", "-5"]).await.ok();
    assert_eq!(values_of(a, "dash").await.unwrap(), ["-5"]);
}

async fn preconditions_and_missing_keys(u1: &str, a: &Client) {
    kvsync(u1, &["put", "guarded", "v1"]).await.ok();
    let v1 = kvsync(u1, &["get", "guarded", "--json"]).await.json()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    let v2 = kvsync(u1, &["put", "guarded", "v2", "--if-match", &v1, "--json"])
        .await
        .json()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(v1, v2);

    // A stale tag: 3, and nothing written; the message names the current tag.
    let stale = kvsync(u1, &["put", "guarded", "v3", "--if-match", &v1]).await;
    stale.fails(3, "precondition_failed");
    assert!(stale.stderr.contains(&v2), "{stale:#?}");
    assert_eq!(values_of(a, "guarded").await.unwrap(), ["v2"]);
    kvsync(u1, &["append", "guarded", "x", "--if-match", &v1])
        .await
        .fails(3, "HTTP 412");
    kvsync(u1, &["rm", "guarded", "--if-match", &v1])
        .await
        .fails(3, "precondition_failed");
    assert!(values_of(a, "guarded").await.is_some());

    let rm = kvsync(u1, &["rm", "guarded", "--if-match", &v2]).await;
    assert_eq!(rm.ok(), "deleted guarded\n");
    assert_eq!(values_of(a, "guarded").await, None);

    // Missing keys: 1 (and If-Match on a missing key fails its precondition).
    kvsync(u1, &["rm", "guarded"])
        .await
        .fails(1, "guarded: no pair with this key (not_found, HTTP 404)");
    kvsync(u1, &["get", "guarded"])
        .await
        .fails(1, "guarded: no pair with this key");
    kvsync(u1, &["get", "guarded", "--json"])
        .await
        .fails(1, "not_found");
    kvsync(u1, &["rm", "guarded", "--if-match", &v2])
        .await
        .fails(3, "does not exist");
    let rm_json = kvsync(u1, &["rm", "dash", "--json"]).await.json();
    assert_eq!(rm_json, json!({ "key": "dash", "deleted": true }));

    // The node's own refusals: 4 with its error code.
    kvsync(u1, &["put", "bad\u{7}key", "v"])
        .await
        .fails(4, "invalid_key");
    // A tag the node never issued matches nothing (RFC 9110): 3, nothing written.
    kvsync(u1, &["put", "guarded", "v", "--if-match", "nonsense"])
        .await
        .fails(3, "precondition_failed");
}

async fn listing(u1: &str) {
    let keys: Vec<String> = (0..7).map(|i| format!("page/{i:02}")).collect();
    for k in &keys {
        kvsync(u1, &["put", k, &format!("value of {k}")]).await.ok();
    }
    kvsync(u1, &["put", "pagf", "after the prefix"]).await.ok();
    let expect = |n: usize| {
        keys[..n]
            .iter()
            .map(|k| format!("{k}\n"))
            .collect::<String>()
    };

    // 7 keys, 3 a page: three requests following the cursor.
    assert_eq!(
        kvsync(u1, &["ls", "page/", "--page-size", "3"]).await.ok(),
        expect(7)
    );
    assert_eq!(
        kvsync(u1, &["ls", "page/", "--page-size", "2", "--limit", "5"])
            .await
            .ok(),
        expect(5)
    );
    assert_eq!(
        kvsync(u1, &["ls", "page/", "--limit", "3"]).await.ok(),
        expect(3)
    );

    let lines = kvsync(u1, &["ls", "page/", "--json", "--page-size", "3"]).await;
    let pairs: Vec<Value> = lines
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pairs.len(), 7, "{lines:#?}");
    for (p, k) in pairs.iter().zip(&keys) {
        assert_eq!(p["key"], k.as_str());
        assert_eq!(p["values"], json!([format!("value of {k}")]));
    }

    let all = kvsync(u1, &["ls"]).await;
    assert!(all.ok().contains("page/06\npagf\n"), "{all:#?}");
    assert!(all.ok().contains("user/42 thé?me %20\n"), "{all:#?}");
    assert_eq!(kvsync(u1, &["ls", "no-such-prefix/"]).await.ok(), "");
}

/// Lines of a child's output, as they come.
fn lines_of(
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = tx.send(l);
        }
    });
    rx
}

/// The next line that contains `needle` (earlier ones are returned too, for checks).
async fn line_with(rx: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(T, async {
        while let Some(l) = rx.recv().await {
            let hit = l.contains(needle);
            seen.push(l);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "no line with {needle:?} within {T:?}; got {seen:#?}"
    );
    seen
}

async fn watching(c: &mut Cluster, u1: &str, u2: &str) {
    // Through a proxy, so that the test decides when the watch can reconnect.
    let proxy = Proxy::start(([127, 0, 0, 1], c.nodes[0].spec.http_port).into())
        .await
        .unwrap();
    let via = format!("http://127.0.0.1:{}", proxy.port);
    assert_ne!(via, u1);
    let mut watch: Child = command(&via, Some(TOKEN), &["watch", "watched/", "--json"])
        .spawn()
        .unwrap();
    let mut out = lines_of(watch.stdout.take().unwrap());
    let mut err = lines_of(watch.stderr.take().unwrap());
    line_with(&mut err, "watching node1").await;

    // Changes made on the other node, replicated to the watched one; keys outside the
    // prefix are not shown.
    kvsync(u2, &["put", "unwatched", "x"]).await.ok();
    kvsync(u2, &["put", "watched/a", "one", "two"]).await.ok();
    let seen = line_with(&mut out, "watched/a").await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let change: Value = serde_json::from_str(&seen[0]).unwrap();
    assert_eq!(change["values"], json!(["one", "two"]), "{change}");
    assert_eq!(change["origin"], "node2", "{change}");
    assert_eq!(change["deleted"], false, "{change}");
    kvsync(u2, &["rm", "watched/a"]).await.ok();
    let change: Value = serde_json::from_str(&line_with(&mut out, "watched/a").await[0]).unwrap();
    assert_eq!(change["deleted"], true, "{change}");
    kvsync(u2, &["put", "watched/c", "c"]).await.ok();
    line_with(&mut out, "watched/c").await;

    // The watch loses its stream, the watched node restarts, and its peer changes keys
    // meanwhile (one several times, one deleted). Once the watch gets through again, it
    // shows the final state of each changed key, once, and then follows the live stream.
    proxy.cut(watch.id().unwrap(), Cut::Reset);
    line_with(&mut err, "lost the event stream").await;
    c.nodes[0].terminate(T).await.unwrap();
    for v in ["two", "three"] {
        kvsync(u2, &["put", "watched/a", v]).await.ok();
    }
    kvsync(u2, &["rm", "watched/c"]).await.ok();
    kvsync(u2, &["put", "watched/b", "after the restart"])
        .await
        .ok();
    c.nodes[0].restart().await.unwrap();
    c.nodes[0].wait_ready(T).await.unwrap();
    wait_for_keys(
        &c.nodes[0].client(),
        "watched/",
        &["watched/a", "watched/b"],
    )
    .await;
    assert_eq!(
        values_of(&c.nodes[0].client(), "watched/a").await,
        Some(vec!["three".to_owned()])
    );
    proxy.heal();
    line_with(&mut err, "reconnected to node1").await;
    let mut caught_up: Vec<Value> = Vec::new();
    while !["watched/a", "watched/b", "watched/c"]
        .iter()
        .all(|k| caught_up.iter().any(|c| c["key"] == *k))
    {
        let line = line_with(&mut out, "watched/").await.pop().unwrap();
        caught_up.push(serde_json::from_str(&line).unwrap());
    }
    assert_eq!(caught_up.len(), 3, "each key once: {caught_up:#?}");
    let of = |k: &str| caught_up.iter().find(|c| c["key"] == k).unwrap().clone();
    assert_eq!(of("watched/a")["values"], json!(["three"]));
    assert_eq!(of("watched/b")["values"], json!(["after the restart"]));
    assert_eq!(of("watched/c")["deleted"], true);

    kvsync(u2, &["put", "watched/d", "live"]).await.ok();
    let seen = line_with(&mut out, "watched/d").await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert!(
        watch.try_wait().unwrap().is_none(),
        "watch runs until stopped"
    );
    watch.kill().await.unwrap();
}

async fn clearing(u1: &str, b: &Client) {
    let live = kvsync(u1, &["ls", "--json"]).await.ok().lines().count();
    assert!(live > 10, "{live}");

    // Anything but "yes" deletes nothing.
    let declined = kvsync_in(u1, &["clear"], "no\n").await;
    declined.fails(2, "not confirmed");
    assert!(declined.stderr.contains("Type yes"), "{declined:#?}");
    assert_eq!(
        kvsync(u1, &["ls", "--json"]).await.ok().lines().count(),
        live
    );

    let cleared = kvsync(u1, &["clear", "--yes", "--json"]).await.json();
    assert_eq!(cleared["deleted"], live, "{cleared}");
    assert_eq!(cleared["progress"], json!([live]), "{cleared}");
    assert_eq!(kvsync(u1, &["ls"]).await.ok(), "");
    // Every delete replicates.
    wait_for_keys(b, "", &[]).await;

    // A typed "yes" on standard input confirms.
    let again = kvsync_in(u1, &["clear"], "yes\n").await;
    assert_eq!(again.ok(), "deleted 0 pairs\n");
}

#[tokio::test]
async fn exit_codes_without_a_node() {
    // Nothing listens here: 5, for every command that talks to a node.
    let nobody = format!("http://127.0.0.1:{}", free_port().unwrap());
    for args in [
        &["get", "k"][..],
        &["ready"],
        &["watch"],
        &["ls"],
        &["clear", "--yes"],
    ] {
        kvsync(&nobody, args).await.fails(5, "cannot reach");
    }

    // A node that accepts connections but never answers: 5 once --timeout passes.
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let silent = format!("http://{}", listener.local_addr().unwrap());
    let started = Instant::now();
    kvsync(&silent, &["--timeout", "300ms", "get", "k"])
        .await
        .fails(5, "cannot reach");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Usage errors: 2, before anything is sent.
    for args in [
        &["get"][..],
        &["get", ""],
        &["get", "."],
        &["rm", ".."],
        &["put", "k", "a", "b", "--json-values"],
        &["put", "k", "--json-values", "not json"],
        &["put", "k", "--file", "/nonexistent/values.txt"],
        &["put", "k", "a", "--file", "f"],
        &["ls", "--page-size", "0"],
        &["--timeout", "soon", "ready"],
        &["frobnicate"],
    ] {
        let r = kvsync(&nobody, args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:#?}");
        assert!(!r.stderr.is_empty(), "{args:?}: {r:#?}");
    }
    let bad_url = run_with("not a url", None, &["get", "k"], "").await;
    assert_eq!(bad_url.code, 2, "{bad_url:#?}");

    let help = kvsync(&nobody, &["--help"]).await;
    assert!(help.ok().contains("Exit codes:"), "{help:#?}");
    assert!(
        !help.stdout.contains(TOKEN),
        "the token's value is never shown"
    );
}
