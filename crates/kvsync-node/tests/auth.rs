//! Access control against real nodes: with `KVSYNC_API_TOKEN` set, every API route
//! answers 401 with a JSON error unless the right bearer token comes with the request,
//! while the probes and the static UI stay open; an unauthorized write writes nothing.
//! Secrets (the token, a Kafka SASL password, MongoDB credentials) never show up in logs,
//! answers or `--help`. CORS is off unless configured.

use std::time::Duration;

use kvsync_testkit::{node_binary, wait_until, Client, Cluster, ClusterOptions};
use reqwest::{
    header::{
        ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CONTENT_TYPE,
        ORIGIN, WWW_AUTHENTICATE,
    },
    Method, StatusCode,
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "tok-3f9c1a7e5b2d4c6f8a0e1b3d5f7a9c2e";
const SASL_PASSWORD: &str = "sasl-pw-9d8c7b6a5f4e3d2c1b0a";

/// The API token and a SASL password (unused with a plaintext broker, but configured:
/// it must not leak either).
fn secret_env() -> Vec<(String, String)> {
    vec![
        ("KVSYNC_API_TOKEN".into(), TOKEN.into()),
        ("KVSYNC_KAFKA_SASL_USERNAME".into(), "kvsync".into()),
        ("KVSYNC_KAFKA_SASL_PASSWORD".into(), SASL_PASSWORD.into()),
    ]
}

/// Every protected route, with a body where it takes one.
fn protected() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/pairs", None),
        (Method::DELETE, "/api/pairs", None),
        (Method::GET, "/api/pairs/k", None),
        (Method::PUT, "/api/pairs/k", Some(json!({"values": ["v"]}))),
        (Method::DELETE, "/api/pairs/k", None),
        (
            Method::POST,
            "/api/pairs/k/values",
            Some(json!({"value": "v"})),
        ),
        (Method::GET, "/api/events", None),
        (Method::GET, "/api/node", None),
        (Method::GET, "/api/digest", None),
        (Method::GET, "/api/nope", None),
        (Method::GET, "/metrics", None),
    ]
}

async fn status_of(r: reqwest::RequestBuilder) -> reqwest::Response {
    r.timeout(Duration::from_secs(10)).send().await.unwrap()
}

async fn assert_unauthorized(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(
        resp.headers().get(WWW_AUTHENTICATE).map(|v| v.as_bytes()),
        Some(b"Bearer".as_slice()),
        "{what}"
    );
    assert_eq!(
        resp.headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{what}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized", "{what}");
    assert!(
        !body["detail"].as_str().unwrap_or_default().contains(TOKEN),
        "{what}"
    );
}

#[tokio::test]
async fn token_guards_the_api_and_never_leaks() {
    let c = Cluster::start(ClusterOptions {
        env: secret_env(),
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let anon = Client::new(&c.nodes[0].url);
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    a.put("seed", &["1"]).await.unwrap();
    c.converged(T).await.unwrap();
    let before = a.digest().await.unwrap();
    let writes_before = a.counter("local_writes").await.unwrap();

    // Open without a token: probes and the UI (which asks for the token itself).
    for path in ["/healthz", "/readyz", "/", "/index.html", "/app.js"] {
        let r = status_of(anon.request(Method::GET, &anon.url(path))).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path} without a token");
    }

    // Refused: no token, a wrong one, a prefix of the right one, the right one with a
    // wrong scheme, and (outside the event stream) the right one as a query parameter.
    let http = reqwest::Client::new();
    let almost = &TOKEN[..TOKEN.len() - 1];
    let wrong_auth = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {almost}")),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some("Bearer ".to_owned()),
    ];
    for (method, path, body) in protected() {
        for auth in &wrong_auth {
            let mut r = http.request(method.clone(), anon.url(path));
            if let Some(h) = auth {
                r = r.header(AUTHORIZATION, h);
            }
            if let Some(b) = &body {
                r = r.json(b);
            }
            let what = format!("{method} {path} with Authorization {auth:?}");
            assert_unauthorized(status_of(r).await, &what).await;
        }
        if path != "/api/events" {
            let url = anon.url(&format!("{path}?access_token={TOKEN}"));
            let mut r = http.request(method.clone(), url);
            if let Some(b) = &body {
                r = r.json(b);
            }
            let what = format!("{method} {path} with the token in the query");
            assert_unauthorized(status_of(r).await, &what).await;
        }
    }
    let r = status_of(http.get(anon.url("/api/events?access_token=wrong"))).await;
    assert_unauthorized(r, "event stream with a wrong query token").await;

    // None of those refused writes (PUT, append, DELETE, clear) did anything.
    assert_eq!(a.digest().await.unwrap(), before);
    assert_eq!(a.counter("local_writes").await.unwrap(), writes_before);
    assert_eq!(a.get("seed").await.unwrap().unwrap().values, ["1"]);

    // Accepted: the bearer header (scheme in any case) and, for the event stream only,
    // the query parameter EventSource has to use.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = status_of(
            http.get(anon.url("/api/pairs"))
                .header(AUTHORIZATION, format!("{scheme} {TOKEN}")),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "scheme {scheme}");
    }
    let r = http
        .get(anon.url(&format!("/api/events?access_token={TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    drop(r);

    // Authorized writes work and replicate between nodes that require the token.
    a.put("k", &["from a"]).await.unwrap();
    wait_until(T, "node1's write on node2", || async {
        b.get("k").await.ok().flatten().is_some()
    })
    .await
    .unwrap();
    b.append("k", "from b").await.unwrap();
    wait_until(T, "both writes on node1", || async {
        a.get("k").await.ok().flatten().map(|p| p.values.len()) == Some(2)
    })
    .await
    .unwrap();
    let info = a.node_info().await.unwrap().to_string();
    c.identical(T).await.unwrap();

    // Secrets appear nowhere a person or a log collector would see them.
    for (i, n) in c.nodes.iter().enumerate() {
        let log = n.log();
        assert!(!log.is_empty(), "node {i} wrote a log");
        assert!(!log.contains(TOKEN), "node {i}'s log holds the token");
        assert!(
            !log.contains(SASL_PASSWORD),
            "node {i}'s log holds the SASL password"
        );
    }
    assert!(
        !info.contains(TOKEN) && !info.contains(SASL_PASSWORD),
        "{info}"
    );
    let metrics = a.metrics().await.unwrap();
    assert!(!metrics.contains(TOKEN) && !metrics.contains(SASL_PASSWORD));
    let help = std::process::Command::new(node_binary().unwrap())
        .arg("--help")
        .env("KVSYNC_API_TOKEN", TOKEN)
        .env("KVSYNC_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("KVSYNC_API_TOKEN"));
    assert!(!help.contains(TOKEN) && !help.contains(SASL_PASSWORD));
}

async fn one_node() -> Cluster {
    Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })
    .await
    .expect("cluster starts")
}

fn preflight(c: &Client, origin: &str) -> reqwest::RequestBuilder {
    c.request(Method::OPTIONS, &c.url("/api/pairs/k"))
        .header(ORIGIN, origin)
        .header(ACCESS_CONTROL_REQUEST_METHOD, "PUT")
}

fn allowed_origin(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get(ACCESS_CONTROL_ALLOW_ORIGIN)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn cors_is_off_unless_configured() {
    const ALLOWED: &str = "https://settings.example.com";
    let mut c = one_node().await;

    // Not configured: no cross-origin grant of any kind; same-origin use is unaffected.
    let a = c.nodes[0].client();
    for r in [
        status_of(preflight(&a, ALLOWED)).await,
        status_of(
            a.request(Method::GET, &a.url("/api/pairs"))
                .header(ORIGIN, ALLOWED),
        )
        .await,
    ] {
        assert_eq!(allowed_origin(&r), None);
    }
    a.put("k", &["v"]).await.unwrap();

    // Configured: the listed origin is granted, exactly; others still are not.
    c.nodes[0]
        .reconfigure(|spec| {
            spec.env.push((
                "KVSYNC_CORS_ORIGINS".into(),
                format!("{ALLOWED},https://other.example.org"),
            ))
        })
        .await
        .unwrap();
    c.nodes[0].wait_ready(T).await.unwrap();
    let a = c.nodes[0].client();
    let r = status_of(preflight(&a, ALLOWED)).await;
    assert!(r.status().is_success(), "preflight: {}", r.status());
    assert_eq!(allowed_origin(&r).as_deref(), Some(ALLOWED));
    let methods = r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("PUT"), "{methods}");
    let r = status_of(
        a.request(Method::GET, &a.url("/api/pairs/k"))
            .header(ORIGIN, ALLOWED),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(allowed_origin(&r).as_deref(), Some(ALLOWED));
    for stranger in [
        "https://evil.example.net",
        "https://settings.example.com.evil.net",
    ] {
        let r = status_of(preflight(&a, stranger)).await;
        assert_eq!(allowed_origin(&r), None, "{stranger}");
    }
}

#[tokio::test]
async fn mongodb_credentials_stay_out_of_logs_and_answers() {
    const MONGO_PASSWORD: &str = "mongo-pw-5e4d3c2b1a09";
    let mut c = one_node().await;
    // Credentials the MongoDB-protocol server does not know: the node keeps failing
    // to authenticate, and says so, all without showing them.
    let port = c.mongos[0].port;
    c.nodes[0]
        .reconfigure(|spec| {
            spec.mongodb_uri =
                format!("mongodb://kvsync:{MONGO_PASSWORD}@127.0.0.1:{port}/?authSource=admin")
        })
        .await
        .unwrap();
    let a = c.nodes[0].client();
    let readyz = || async {
        let r = reqwest::get(a.url("/readyz")).await.unwrap();
        (r.status(), r.text().await.unwrap())
    };
    wait_until(T, "the node to report MongoDB as not ready", || async {
        let (status, text) = readyz().await;
        status == StatusCode::SERVICE_UNAVAILABLE && text.to_lowercase().contains("mongodb")
    })
    .await
    .unwrap();
    let readyz = readyz().await.1;
    // A write answers 503 with a JSON reason, as for any unusable database.
    let r = status_of(
        a.request(Method::PUT, &a.pair_url("k"))
            .json(&json!({"values": ["v"]})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let put = r.text().await.unwrap();
    assert!(put.contains("database_unavailable"), "{put}");
    // It failed for the right reason: authentication was tried, and refused.
    let log = c.nodes[0].log();
    assert!(log.contains("MongoDB not ready"), "{log}");
    let info = a.node_info().await.unwrap().to_string();
    for (what, text) in [
        ("log", c.nodes[0].log()),
        ("/readyz", readyz),
        ("PUT", put),
        ("/api/node", info),
    ] {
        assert!(
            !text.contains(MONGO_PASSWORD),
            "{what} shows the MongoDB password: {text}"
        );
    }
}

/// At every log level, traffic that carries the token every way it can come (header,
/// the event stream's query, near misses that contain it), a configured SASL password
/// and MongoDB credentials leave no trace in the log.
#[tokio::test]
async fn secrets_stay_out_of_logs_at_every_level() {
    const MONGO_PASSWORD: &str = "mongo-pw-71c3e5a9d2b4";
    let mut failures = Vec::new();
    for level in ["info", "debug", "trace"] {
        let mut c = Cluster::start(ClusterOptions {
            nodes: 1,
            env: [("KVSYNC_LOG".into(), level.into())]
                .into_iter()
                .chain(secret_env())
                .collect(),
            ..Default::default()
        })
        .await
        .expect("cluster starts");
        let a = c.nodes[0].client();
        let http = reqwest::Client::new();
        a.put("k", &["v"]).await.unwrap();
        a.append("k", "w").await.unwrap();
        a.get("k").await.unwrap();
        a.list_all().await.unwrap();
        for url in [
            a.url(&format!("/api/events?access_token={TOKEN}")),
            a.url(&format!("/api/events?prefix=k&access_token={TOKEN}")),
        ] {
            let mut r = status_of(http.get(url)).await;
            assert_eq!(r.status(), StatusCode::OK);
            r.chunk().await.unwrap();
        }
        for (path, auth) in [
            (format!("/api/pairs?access_token={TOKEN}"), None),
            ("/api/pairs".to_owned(), Some(format!("Bearer {TOKEN}x"))),
            ("/api/pairs/k".to_owned(), Some(format!("Basic {TOKEN}"))),
            (format!("/api/events?access_token={TOKEN}x"), None),
            (format!("/nope?access_token={TOKEN}"), None),
        ] {
            let mut r = http.get(a.url(&path));
            if let Some(h) = auth {
                r = r.header(AUTHORIZATION, h);
            }
            assert!(status_of(r).await.status().is_client_error(), "{path}");
        }
        // Then with MongoDB credentials (which the test server refuses).
        let port = c.mongos[0].port;
        c.nodes[0]
            .reconfigure(|spec| {
                spec.mongodb_uri =
                    format!("mongodb://kvsync:{MONGO_PASSWORD}@127.0.0.1:{port}/?authSource=admin")
            })
            .await
            .unwrap();
        wait_until(
            T,
            "the node to try MongoDB with the credentials",
            || async { c.nodes[0].log().contains("MongoDB not ready") },
        )
        .await
        .unwrap();
        let r = status_of(
            a.request(Method::PUT, &a.pair_url("k"))
                .json(&json!({"values": ["v"]})),
        )
        .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

        let log = c.nodes[0].log();
        let marker = level.to_uppercase();
        if level != "info" && !log.contains(&marker) {
            failures.push(format!(
                "KVSYNC_LOG={level}: no {marker} line, so not tested"
            ));
        }
        for (name, secret) in [
            ("API token", TOKEN),
            ("SASL password", SASL_PASSWORD),
            ("MongoDB password", MONGO_PASSWORD),
        ] {
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
            if let Some(first) = lines.first() {
                let excerpt: String = first.chars().take(300).collect();
                failures.push(format!(
                    "KVSYNC_LOG={level}: the {name} is in {} line(s), e.g. {excerpt}",
                    lines.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
