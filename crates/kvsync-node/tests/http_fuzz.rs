//! Random requests against a running node's HTTP layer: made-up and standard methods,
//! paths near and far from the routes, random headers (the token, preconditions,
//! content types, junk) and bodies (JSON of the right and wrong shapes, junk bytes). The
//! node must never answer 5xx nor panic, its metrics must not grow a series per request,
//! and its memory must stay flat. `KVSYNC_TEST_SEED` repeats a run;
//! `KVSYNC_FUZZ_REQUESTS` (default 10,000) sets its size.

use std::time::{Duration, Instant};

use kvsync_testkit::{raw, test_seed, Cluster, ClusterOptions, Rng};

const TOKEN: &str = "tok-fuzz-0d9e8f7a6b5c";
const LANES: u64 = 8;
/// The whole run stops here even if requests remain (a slow machine), so the test's
/// time is bounded.
const BUDGET: Duration = Duration::from_secs(90);

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len() as u64) as usize]
}

fn token_chars(rng: &mut Rng, len: u64) -> String {
    const CHARS: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~";
    (0..1 + rng.below(len))
        .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize] as char)
        .collect()
}

/// A key-ish path segment: plain, percent-encoded random bytes (valid UTF-8 or not),
/// Unicode, or long.
fn segment(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => token_chars(rng, 12).replace(['#', '%'], "_"),
        1 => (0..1 + rng.below(8))
            .map(|_| format!("%{:02X}", rng.below(256)))
            .collect(),
        2 => "%D0%BA%F0%9F%98%80".to_owned(),
        3 => "k".repeat(1 + rng.below(700) as usize),
        4 => "..%2F..%2Fetc".to_owned(),
        _ => format!("key{}", rng.below(20)),
    }
}

fn path(rng: &mut Rng) -> String {
    let mut p = match rng.below(14) {
        0 => "/api/pairs".to_owned(),
        1..=3 => format!("/api/pairs/{}", segment(rng)),
        4 => format!("/api/pairs/{}/values", segment(rng)),
        5 => "/api/events".to_owned(),
        6 => pick(
            rng,
            &[
                "/api/node",
                "/api/digest",
                "/metrics",
                "/healthz",
                "/readyz",
            ],
        )
        .to_owned(),
        7 => pick(rng, &["/", "/index.html", "/app.js", "/style.css"]).to_owned(),
        8 => format!("/api/{}", segment(rng)),
        9 => format!("/{}", segment(rng)),
        10 => format!("/api/pairs/{}/{}", segment(rng), segment(rng)),
        11 => "/api".to_owned(),
        12 => format!("//{}//", segment(rng)),
        _ => format!("/api/pairs/{}/values/", segment(rng)),
    };
    if rng.below(3) == 0 {
        let names = ["prefix", "after", "limit", "access_token", "x", "prefix"];
        let params: Vec<String> = (0..1 + rng.below(3))
            .map(|_| {
                let value = match rng.below(4) {
                    0 => rng.below(2000).to_string(),
                    1 => TOKEN.to_owned(),
                    2 => segment(rng),
                    _ => String::new(),
                };
                format!("{}={value}", pick(rng, &names))
            })
            .collect();
        p = format!("{p}?{}", params.join("&"));
    }
    p
}

fn body(rng: &mut Rng) -> Option<Vec<u8>> {
    let text = match rng.below(9) {
        0 | 1 => return None,
        2 => format!(r#"{{"values":["{}","b"]}}"#, token_chars(rng, 40)),
        3 => format!(r#"{{"value":"{}"}}"#, token_chars(rng, 40)),
        4 => format!(r#"{{"values":{}}}"#, rng.below(1000)),
        5 => "[".repeat(1 + rng.below(300) as usize),
        6 => format!(
            r#"{{"values":["{}"]}}"#,
            "x".repeat(rng.below(80_000) as usize)
        ),
        7 => String::new(),
        _ => token_chars(rng, 200),
    };
    Some(text.into_bytes())
}

fn headers(rng: &mut Rng) -> Vec<(String, String)> {
    let mut h = Vec::new();
    // Mostly the right token, so most requests get past the auth layer.
    match rng.below(5) {
        0..=2 => h.push(("Authorization".into(), format!("Bearer {TOKEN}"))),
        3 => h.push((
            "Authorization".into(),
            format!("Bearer {}", token_chars(rng, 30)),
        )),
        _ => {}
    }
    if rng.below(4) != 0 {
        let ct = pick(
            rng,
            &[
                "application/json",
                "application/json",
                "application/json",
                "text/plain",
                "application/json; charset=utf-8",
                "x/y",
                "",
            ],
        );
        h.push(("Content-Type".into(), ct.into()));
    }
    match rng.below(6) {
        0 => h.push(("If-Match".into(), "*".into())),
        1 => h.push((
            "If-Match".into(),
            "\"0000019361a2b3c4-00000003-node1\"".into(),
        )),
        2 => h.push(("If-Match".into(), token_chars(rng, 20))),
        3 => h.push((
            "If-None-Match".into(),
            pick(rng, &["*", "\"x\"", ""]).into(),
        )),
        _ => {}
    }
    for _ in 0..rng.below(3) {
        h.push((format!("X-{}", token_chars(rng, 10)), token_chars(rng, 60)));
    }
    if rng.below(8) == 0 {
        h.push(("Origin".into(), "https://elsewhere.example".into()));
    }
    h
}

fn method(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=7 => pick(
            rng,
            &[
                "GET", "GET", "HEAD", "POST", "PUT", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
            ],
        )
        .to_owned(),
        _ => token_chars(rng, 12),
    }
}

struct Tally {
    sent: usize,
    /// How many answers of each status, to show the run reached past the auth layer.
    statuses: std::collections::BTreeMap<u16, usize>,
    failures: Vec<String>,
}

async fn lane(base: String, seed: u64, stream: u64, count: usize, deadline: Instant) -> Tally {
    let mut rng = Rng::new(seed, stream);
    let mut tally = Tally {
        sent: 0,
        statuses: Default::default(),
        failures: Vec::new(),
    };
    for _ in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let (method, path, headers, body) = (
            method(&mut rng),
            path(&mut rng),
            headers(&mut rng),
            body(&mut rng),
        );
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let request = raw::build(&method, &path, &h, body.as_deref());
        tally.sent += 1;
        let what = || {
            let shown: String = path.chars().take(80).collect();
            format!("{method} {shown} {headers:?}")
        };
        match raw::request(&base, &request, Duration::from_secs(15)).await {
            Ok(r) if r.status >= 500 => tally.failures.push(format!(
                "{}: {} {}",
                what(),
                r.status,
                String::from_utf8_lossy(&r.body)
            )),
            Ok(r) => *tally.statuses.entry(r.status).or_default() += 1,
            Err(e) => tally.failures.push(format!("{}: {e:#}", what())),
        }
    }
    tally
}

async fn run(
    base: &str,
    seed: u64,
    first_stream: u64,
    requests: usize,
    deadline: Instant,
) -> Tally {
    let lanes: Vec<_> = (0..LANES)
        .map(|i| {
            tokio::spawn(lane(
                base.to_owned(),
                seed,
                first_stream + i,
                requests / LANES as usize,
                deadline,
            ))
        })
        .collect();
    let mut all = Tally {
        sent: 0,
        statuses: Default::default(),
        failures: Vec::new(),
    };
    for l in lanes {
        let t = l.await.unwrap();
        all.sent += t.sent;
        for (status, n) in t.statuses {
            *all.statuses.entry(status).or_default() += n;
        }
        all.failures.extend(t.failures);
    }
    all
}

#[tokio::test]
async fn random_requests_get_no_5xx_no_panic_no_new_series_and_flat_memory() {
    let seed = test_seed();
    eprintln!("KVSYNC_TEST_SEED={seed}");
    let requests: usize = std::env::var("KVSYNC_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        env: vec![("KVSYNC_API_TOKEN".into(), TOKEN.into())],
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let a = c.nodes[0].client();
    for i in 0..20 {
        a.put(&format!("key{i}"), &["v"]).await.unwrap();
    }
    let deadline = Instant::now() + BUDGET;
    let series = || async {
        a.series_count().await.unwrap();
        a.series_count().await.unwrap()
    };

    // Two halves: the first brings memory and metrics to their working level, the
    // second must not raise either much further.
    let first = run(&c.nodes[0].url, seed, 0, requests / 2, deadline).await;
    let (rss_first, _) = c.nodes[0].memory_kib().unwrap();
    let series_first = series().await;
    let second = run(&c.nodes[0].url, seed, LANES, requests / 2, deadline).await;
    let (rss_second, _) = c.nodes[0].memory_kib().unwrap();
    let series_second = series().await;
    eprintln!("statuses of the first half: {:?}", first.statuses);
    eprintln!(
        "{} + {} requests; series {series_first} -> {series_second}; RSS {:.1} -> {:.1} MiB",
        first.sent,
        second.sent,
        rss_first as f64 / 1024.0,
        rss_second as f64 / 1024.0
    );

    let mut failures: Vec<String> = first.failures.into_iter().chain(second.failures).collect();
    let log = c.nodes[0].log();
    if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
        failures.push(format!("the node panicked: {line}"));
    }
    assert!(
        first.sent + second.sent >= requests / 4,
        "only {} requests in {BUDGET:?}",
        first.sent + second.sent
    );
    // A (method, route, status) combination not met before may still turn up; a series
    // per request may not.
    if series_second > series_first + 25 {
        failures.push(format!(
            "metric series grew: {series_first} -> {series_second}"
        ));
    }
    // Every label comes from a fixed set.
    let routes = [
        "/api/pairs",
        "/api/pairs/{key}",
        "/api/pairs/{key}/values",
        "/api/events",
        "/api/node",
        "/api/digest",
        "/healthz",
        "/readyz",
        "/metrics",
        "ui",
        "unmatched",
    ];
    let methods = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other",
    ];
    let metrics = a.metrics().await.unwrap();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("kvsync_http_requests_total{"))
    {
        let label = |name: &str| {
            let start = line
                .find(&format!("{name}=\""))
                .map(|i| i + name.len() + 2)?;
            line[start..].split('"').next()
        };
        let fixed = label("method").is_some_and(|m| methods.contains(&m))
            && label("route").is_some_and(|r| routes.contains(&r));
        if !fixed {
            failures.push(format!("a label outside the fixed sets: {line}"));
        }
    }
    if rss_second > rss_first + rss_first / 2 + 16 * 1024 {
        failures.push(format!("memory grew: {rss_first} -> {rss_second} KiB"));
    }
    let shown: Vec<&String> = failures.iter().take(30).collect();
    assert!(
        failures.is_empty(),
        "{} failures (seed {seed}), first ones:\n{}",
        failures.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
