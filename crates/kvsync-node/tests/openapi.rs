//! The OpenAPI document: the committed `docs/openapi.json` is what the code generates and
//! what a node serves, every documented operation is served, and every route the node
//! serves is documented.
//!
//! After changing the API, regenerate the committed document with
//! `KVSYNC_UPDATE_OPENAPI=1 cargo test -p kvsync-node --test openapi`.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use kvsync_testkit::{Cluster, ClusterOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const METHODS: [&str; 4] = ["get", "put", "post", "delete"];

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

fn generated() -> String {
    kvsync_node::http::openapi::document_json()
}

fn committed() -> String {
    std::fs::read_to_string(committed_path()).unwrap_or_default()
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let generated = generated();
    if std::env::var_os("KVSYNC_UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(committed_path(), &generated).unwrap();
        return;
    }
    assert!(
        committed() == generated,
        "docs/openapi.json differs from what the code generates; regenerate it with \
         `KVSYNC_UPDATE_OPENAPI=1 cargo test -p kvsync-node --test openapi` and commit it"
    );
}

/// Every operation, as `(method, path)`.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_string(), path.clone()))
        })
        .collect()
}

#[test]
fn the_document_describes_every_operation_fully() {
    let doc: Value = serde_json::from_str(&generated()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let what = format!("{method} {path}");
        // Every path parameter is declared.
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, in_path, "{what}: path parameters");
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what}: no success answer"
        );
        // Every error answer has the JSON error body.
        for (status, r) in responses {
            if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{what}: {status}"
                );
            }
        }
        // The API routes need the token when the node has one; the probes do not.
        let protected = path.starts_with("/api/") || path == "/metrics";
        assert_eq!(
            responses.contains_key("401"),
            protected,
            "{what}: 401 documented iff protected"
        );
        assert_eq!(
            op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some())),
            protected,
            "{what}: security"
        );
    }
    // The conditional headers and the replication header are there.
    let put = &doc["paths"]["/api/pairs/{key}"]["put"];
    let params: Vec<&str> = put["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["key", "wait", "timeout_ms", "If-Match", "If-None-Match"] {
        assert!(
            params.contains(&name),
            "PUT /api/pairs/{{key}} lacks {name}"
        );
    }
    assert!(put["responses"]["200"]["headers"]["Kvsync-Replicated"].is_object());
    assert!(put["responses"]["200"]["headers"]["ETag"].is_object());
}

/// Whether an answer came from a route, not from the fallbacks that answer unrouted
/// requests (a JSON 404 `no route for ...`, or 405 `method_not_allowed`).
async fn routed(resp: reqwest::Response) -> Result<StatusCode, String> {
    let status = resp.status();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        return Err("405".into());
    }
    if status == StatusCode::NOT_FOUND {
        let body: Value = resp.json().await.unwrap_or_default();
        if body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("no route for"))
        {
            return Err(format!("404 {body}"));
        }
    }
    Ok(status)
}

#[tokio::test]
async fn a_node_serves_the_document_and_exactly_the_documented_routes() {
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts");
    let client = c.nodes[0].client();

    let served = client
        .request(Method::GET, &client.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.headers()["content-type"], "application/json");
    // This node has no token: its document has no security requirements and no 401s.
    let text = served.text().await.unwrap();
    assert!(
        text == kvsync_node::http::openapi::document_json_for(false),
        "the served document is not the one for a node without a token"
    );
    assert!(!text.contains("securitySchemes") && !text.contains("\"401\""));
    assert!(generated().contains("securitySchemes"));

    let doc: Value = serde_json::from_str(&generated()).unwrap();
    let documented = operations(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let url = client.url(&path.replace("{key}", "k").replace("{id}", "x"));
        for method in METHODS {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = client
                .request(m, &url)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap();
            let what = format!("{method} {path}");
            // Whatever a route answers to a placeholder request, it is not a fallback's.
            if documented.contains(&(method.to_owned(), path.clone())) {
                routed(resp)
                    .await
                    .unwrap_or_else(|e| panic!("{what} is documented but not served: {e}"));
            } else {
                assert_eq!(
                    routed(resp).await,
                    Err("405".into()),
                    "{what} is served but not documented"
                );
            }
        }
    }
}

/// Routes can only come from `openapi::routes`, where each comes with its
/// documentation: the router must not add any of its own.
#[test]
fn the_router_adds_no_undocumented_routes() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/http");
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for call in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
        ] {
            assert!(
                !text.contains(call),
                "{} calls {call}: register routes with their documentation in openapi::routes",
                path.display()
            );
        }
    }
}
