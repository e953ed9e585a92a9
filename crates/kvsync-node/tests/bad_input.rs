//! Bad input against a real node: a table of malformed, wrongly typed, oversized and
//! badly encoded requests, each of which must get a 4xx JSON error and write nothing
//! (locally, and so nothing reaches the peer). Then the other side: unusual but valid
//! keys (Unicode, spaces, slashes, '%', '+') round-trip and replicate unchanged.

use std::time::Duration;

use kvsync_core::{
    key::MAX_KEY_BYTES,
    pair::{MAX_PAIR_BYTES, MAX_VALUES, MAX_VALUE_BYTES},
};
use kvsync_node::http::MAX_BODY_BYTES;
use kvsync_testkit::{wait_until, Client, Cluster, ClusterOptions, Pair};
use reqwest::{
    header::{HeaderName, HeaderValue, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH},
    Method,
};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

async fn cluster() -> Cluster {
    Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts")
}

/// Percent-encodes every byte, so the node sees exactly these bytes after decoding
/// (including ones that are not UTF-8 or are control characters).
fn enc(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn pair_path(key: &[u8]) -> String {
    format!("/api/pairs/{}", enc(key))
}

struct Case {
    name: String,
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
    status: u16,
    error: &'static str,
}

fn case(name: &str, method: Method, path: &str, status: u16, error: &'static str) -> Case {
    Case {
        name: name.to_owned(),
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: None,
        status,
        error,
    }
}

impl Case {
    fn header(mut self, name: HeaderName, value: &str) -> Self {
        self.headers
            .push((name, HeaderValue::from_str(value).unwrap()));
        self
    }

    fn raw_header(mut self, name: HeaderName, value: &[u8]) -> Self {
        self.headers
            .push((name, HeaderValue::from_bytes(value).unwrap()));
        self
    }

    fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Some(bytes.into());
        self
    }

    /// A body sent as `application/json`, whatever it contains.
    fn json(self, text: impl Into<Vec<u8>>) -> Self {
        self.header(CONTENT_TYPE, "application/json").body(text)
    }
}

/// `{"values": [...]}` as JSON text.
fn values_json(values: &[String]) -> String {
    json!({ "values": values }).to_string()
}

fn put(name: &str, key: &[u8], status: u16, error: &'static str) -> Case {
    case(name, Method::PUT, &pair_path(key), status, error)
}

fn append(name: &str, key: &[u8], status: u16, error: &'static str) -> Case {
    let path = format!("{}/values", pair_path(key));
    case(name, Method::POST, &path, status, error)
}

fn list(name: &str, query: &str, error: &'static str) -> Case {
    case(
        name,
        Method::GET,
        &format!("/api/pairs?{query}"),
        400,
        error,
    )
}

/// The table. `existing` holds one value; `big` holds 14 values of 64 KiB, so one more
/// full-size value would take its event over the size a node publishes (950,000 bytes;
/// the pair limit, 1 MiB, lies beyond it). `other_tag` is a well-formed entity tag that
/// is not `existing`'s.
fn cases(other_tag: &str) -> Vec<Case> {
    let ok_put = values_json(&["v".into()]);
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    // 257 two-byte characters: within 512 characters, over 512 bytes.
    let long_unicode_key = "é".repeat(MAX_KEY_BYTES / 2 + 1);
    let over_value = "x".repeat(MAX_VALUE_BYTES + 1);
    // 21,846 three-byte characters: the value limit counts bytes, not characters.
    let over_value_unicode = "€".repeat(MAX_VALUE_BYTES / 3 + 1);
    let full_value = "x".repeat(MAX_VALUE_BYTES);
    let over_pair = vec![full_value.clone(); MAX_PAIR_BYTES / MAX_VALUE_BYTES];
    let too_many = vec![String::new(); MAX_VALUES + 1];
    let over_body = values_json(&vec![
        full_value.clone();
        MAX_BODY_BYTES / MAX_VALUE_BYTES + 1
    ]);
    let k = b"existing".as_slice();
    let mut v = vec![
        // Malformed JSON.
        put("truncated JSON", k, 400, "malformed_json").json(r#"{"values":"#),
        put("empty body", k, 400, "malformed_json").json(""),
        put("form data as JSON", k, 400, "malformed_json").json("values=a"),
        put("trailing garbage", k, 400, "malformed_json").json(r#"{"values":[]} x"#),
        put("single quotes", k, 400, "malformed_json").json("{'values':['a']}"),
        put("invalid UTF-8 in a string", k, 400, "malformed_json")
            .json(b"{\"values\":[\"\xff\"]}".to_vec()),
        put("lone surrogate escape", k, 400, "malformed_json").json(r#"{"values":["\ud800"]}"#),
        append("truncated JSON (append)", k, 400, "malformed_json").json(r#"{"value":"#),
        // Wrong types.
        put("values is a string", k, 422, "invalid_body").json(r#"{"values":"a"}"#),
        put("values are numbers", k, 422, "invalid_body").json(r#"{"values":[1,2]}"#),
        put("values is null", k, 422, "invalid_body").json(r#"{"values":null}"#),
        put("values nested", k, 422, "invalid_body").json(r#"{"values":[["a"]]}"#),
        put("a value is null", k, 422, "invalid_body").json(r#"{"values":["a",null]}"#),
        put("values is an object", k, 422, "invalid_body").json(r#"{"values":{"0":"a"}}"#),
        put("body is an array", k, 422, "invalid_body").json(r#"["a"]"#),
        put("body is null", k, 422, "invalid_body").json("null"),
        put("body is a string", k, 422, "invalid_body").json(r#""a""#),
        append("value is a number", k, 422, "invalid_body").json(r#"{"value":1}"#),
        append("value is an array", k, 422, "invalid_body").json(r#"{"value":["a"]}"#),
        append("value is null", k, 422, "invalid_body").json(r#"{"value":null}"#),
        // Missing and unknown fields.
        put("missing values", k, 422, "invalid_body").json("{}"),
        append("missing value", k, 422, "invalid_body").json("{}"),
        put("unknown field", k, 422, "invalid_body").json(r#"{"values":[],"ttl":5}"#),
        put("append body on PUT", k, 422, "invalid_body").json(r#"{"value":"a"}"#),
        append("unknown field (append)", k, 422, "invalid_body").json(r#"{"value":"a","at":0}"#),
        // Empty key: no route has an empty last segment; inside a path it is a bad key.
        case(
            "empty key (PUT)",
            Method::PUT,
            "/api/pairs/",
            404,
            "not_found",
        )
        .json(ok_put.clone()),
        case(
            "empty key (GET)",
            Method::GET,
            "/api/pairs/",
            404,
            "not_found",
        ),
        case(
            "empty key (DELETE)",
            Method::DELETE,
            "/api/pairs/",
            404,
            "not_found",
        ),
        case(
            "empty key (append)",
            Method::POST,
            "/api/pairs//values",
            400,
            "invalid_key",
        )
        .json(r#"{"value":"a"}"#),
        // Keys over 512 bytes.
        put("key of 513 bytes", &long_key, 400, "invalid_key").json(ok_put.clone()),
        put(
            "key of 514 bytes in 257 characters",
            long_unicode_key.as_bytes(),
            400,
            "invalid_key",
        )
        .json(ok_put.clone()),
        append("key of 513 bytes (append)", &long_key, 400, "invalid_key").json(r#"{"value":"a"}"#),
        case(
            "key of 513 bytes (GET)",
            Method::GET,
            &pair_path(&long_key),
            400,
            "invalid_key",
        ),
        case(
            "key of 513 bytes (DELETE)",
            Method::DELETE,
            &pair_path(&long_key),
            400,
            "invalid_key",
        ),
        // Keys that are not UTF-8.
        put("key with byte 0xFF", b"a\xffb", 400, "invalid_key").json(ok_put.clone()),
        put(
            "key with a truncated sequence",
            b"a\xc3",
            400,
            "invalid_key",
        )
        .json(ok_put.clone()),
        case(
            "key with byte 0xFF (GET)",
            Method::GET,
            "/api/pairs/a%FFb",
            400,
            "invalid_key",
        ),
    ];
    // Control characters, C0, DEL and C1, by every method that takes a key.
    for (label, key) in [
        ("%00", b"a\x00b".as_slice()),
        ("%0A", b"a\nb"),
        ("%0D", b"\r"),
        ("%09", b"a\tb"),
        ("%1B", b"\x1b[31m"),
        ("%7F", b"a\x7fb"),
        ("U+0085", "a\u{85}b".as_bytes()),
    ] {
        v.push(put(&format!("control key {label}"), key, 400, "invalid_key").json(ok_put.clone()));
        v.push(
            append(
                &format!("control key {label} (append)"),
                key,
                400,
                "invalid_key",
            )
            .json(r#"{"value":"a"}"#),
        );
        v.push(case(
            &format!("control key {label} (GET)"),
            Method::GET,
            &pair_path(key),
            400,
            "invalid_key",
        ));
        v.push(case(
            &format!("control key {label} (DELETE)"),
            Method::DELETE,
            &pair_path(key),
            400,
            "invalid_key",
        ));
    }
    v.extend([
        // Sizes.
        put("value over 64 KiB", k, 413, "too_large")
            .json(values_json(std::slice::from_ref(&over_value))),
        put("value over 64 KiB in characters", k, 413, "too_large")
            .json(values_json(&[over_value_unicode])),
        append("value over 64 KiB (append)", k, 413, "too_large")
            .json(json!({ "value": over_value }).to_string()),
        put("pair over 1 MiB", k, 413, "too_large").json(values_json(&over_pair)),
        append("append past the event limit", b"big", 413, "too_large")
            .json(json!({ "value": full_value }).to_string()),
        put("too many values", k, 413, "too_large").json(values_json(&too_many)),
        put("body over the body limit", k, 413, "body_too_large").json(over_body),
        // Preconditions.
        put("If-Match garbage", k, 412, "precondition_failed")
            .json(ok_put.clone())
            .header(IF_MATCH, "garbage"),
        put("If-Match weak tag", k, 412, "precondition_failed")
            .json(ok_put.clone())
            .header(IF_MATCH, &format!("W/\"{other_tag}\"")),
        put("If-Match empty", k, 412, "precondition_failed")
            .json(ok_put.clone())
            .header(IF_MATCH, ""),
        put("If-Match not ASCII", k, 400, "invalid_precondition")
            .json(ok_put.clone())
            .raw_header(IF_MATCH, b"\"\xe9\""),
        put(
            "If-Match one good one garbage",
            k,
            412,
            "precondition_failed",
        )
        .json(ok_put.clone())
        .header(IF_MATCH, &format!("\"{other_tag}\", \"garbage\"")),
        put("If-Match mismatched tag", k, 412, "precondition_failed")
            .json(ok_put.clone())
            .header(IF_MATCH, &format!("\"{other_tag}\"")),
        put(
            "If-Match on a missing key",
            b"absent",
            412,
            "precondition_failed",
        )
        .json(ok_put.clone())
        .header(IF_MATCH, &format!("\"{other_tag}\"")),
        put(
            "If-Match * on a missing key",
            b"absent",
            412,
            "precondition_failed",
        )
        .json(ok_put.clone())
        .header(IF_MATCH, "*"),
        put(
            "If-None-Match * on an existing key",
            k,
            412,
            "precondition_failed",
        )
        .json(ok_put.clone())
        .header(IF_NONE_MATCH, "*"),
        put("If-None-Match with a tag", k, 400, "invalid_precondition")
            .json(ok_put.clone())
            .header(IF_NONE_MATCH, &format!("\"{other_tag}\"")),
        // Both must hold (RFC 9110), and `*` and `*` never do.
        put("If-Match and If-None-Match", k, 412, "precondition_failed")
            .json(ok_put.clone())
            .header(IF_MATCH, "*")
            .header(IF_NONE_MATCH, "*"),
        case(
            "DELETE If-Match garbage",
            Method::DELETE,
            &pair_path(k),
            412,
            "precondition_failed",
        )
        .header(IF_MATCH, "garbage"),
        case(
            "DELETE If-Match mismatched",
            Method::DELETE,
            &pair_path(k),
            412,
            "precondition_failed",
        )
        .header(IF_MATCH, &format!("\"{other_tag}\"")),
        case(
            "DELETE a missing key",
            Method::DELETE,
            &pair_path(b"absent"),
            404,
            "not_found",
        ),
        // RFC 9110 13.1.1: If-Match fails on a missing resource, so the answer is 412.
        case(
            "DELETE If-Match on a missing key",
            Method::DELETE,
            &pair_path(b"absent"),
            412,
            "precondition_failed",
        )
        .header(IF_MATCH, &format!("\"{other_tag}\"")),
        case(
            "DELETE If-Match * on a missing key",
            Method::DELETE,
            &pair_path(b"absent"),
            412,
            "precondition_failed",
        )
        .header(IF_MATCH, "*"),
        append("append If-Match garbage", k, 412, "precondition_failed")
            .json(r#"{"value":"a"}"#)
            .header(IF_MATCH, "garbage"),
        append(
            "append If-Match mismatched version",
            k,
            412,
            "precondition_failed",
        )
        .json(r#"{"value":"a"}"#)
        .header(IF_MATCH, &format!("\"{other_tag}\"")),
        append(
            "append If-Match on a missing key",
            b"absent",
            412,
            "precondition_failed",
        )
        .json(r#"{"value":"a"}"#)
        .header(IF_MATCH, "*"),
        append(
            "append If-None-Match * on an existing key",
            k,
            412,
            "precondition_failed",
        )
        .json(r#"{"value":"a"}"#)
        .header(IF_NONE_MATCH, "*"),
        // Unknown routes.
        case(
            "unknown API route",
            Method::GET,
            "/api/nope",
            404,
            "not_found",
        ),
        case("bare /api", Method::GET, "/api", 404, "not_found"),
        case(
            "API route with a trailing slash",
            Method::GET,
            "/api/node/",
            404,
            "not_found",
        ),
        case(
            "extra segment after a key",
            Method::GET,
            "/api/pairs/k/extra",
            404,
            "not_found",
        ),
        case(
            "unknown sub-resource",
            Method::POST,
            "/api/pairs/k/value",
            404,
            "not_found",
        )
        .json(r#"{"value":"a"}"#),
        case(
            "unknown API route (PUT)",
            Method::PUT,
            "/api/things/k",
            404,
            "not_found",
        )
        .json(ok_put.clone()),
        case(
            "unknown static file",
            Method::GET,
            "/nope.html",
            404,
            "not_found",
        ),
        case(
            "path traversal",
            Method::GET,
            "/%2e%2e%2fCargo.toml",
            404,
            "not_found",
        ),
        // Wrong methods.
        case(
            "POST /api/pairs",
            Method::POST,
            "/api/pairs",
            405,
            "method_not_allowed",
        )
        .json(ok_put.clone()),
        case(
            "PUT /api/pairs",
            Method::PUT,
            "/api/pairs",
            405,
            "method_not_allowed",
        )
        .json(ok_put.clone()),
        case(
            "PATCH a pair",
            Method::PATCH,
            &pair_path(k),
            405,
            "method_not_allowed",
        )
        .json(ok_put.clone()),
        case(
            "POST a pair",
            Method::POST,
            &pair_path(k),
            405,
            "method_not_allowed",
        )
        .json(ok_put.clone()),
        case(
            "GET values",
            Method::GET,
            "/api/pairs/existing/values",
            405,
            "method_not_allowed",
        ),
        case(
            "PUT values",
            Method::PUT,
            "/api/pairs/existing/values",
            405,
            "method_not_allowed",
        )
        .json(ok_put.clone()),
        case(
            "POST /api/digest",
            Method::POST,
            "/api/digest",
            405,
            "method_not_allowed",
        ),
        case(
            "DELETE /api/node",
            Method::DELETE,
            "/api/node",
            405,
            "method_not_allowed",
        ),
        case(
            "POST /api/events",
            Method::POST,
            "/api/events",
            405,
            "method_not_allowed",
        ),
        case(
            "PUT /healthz",
            Method::PUT,
            "/healthz",
            405,
            "method_not_allowed",
        ),
        case(
            "POST /metrics",
            Method::POST,
            "/metrics",
            405,
            "method_not_allowed",
        ),
        case(
            "DELETE the UI",
            Method::DELETE,
            "/",
            405,
            "method_not_allowed",
        ),
        case(
            "POST a static file",
            Method::POST,
            "/app.js",
            405,
            "method_not_allowed",
        ),
        // Content types.
        put("no content type", k, 415, "unsupported_media_type").body(ok_put.clone()),
        put("text/plain", k, 415, "unsupported_media_type")
            .header(CONTENT_TYPE, "text/plain")
            .body(ok_put.clone()),
        put("form content type", k, 415, "unsupported_media_type")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(ok_put.clone()),
        append("no content type (append)", k, 415, "unsupported_media_type")
            .body(r#"{"value":"a"}"#),
        // Listing: limit.
        list("limit 0", "limit=0", "invalid_query"),
        list("limit 1001", "limit=1001", "invalid_query"),
        list("limit negative", "limit=-1", "invalid_query"),
        list(
            "limit huge",
            "limit=99999999999999999999999",
            "invalid_query",
        ),
        list(
            "limit u64 max",
            "limit=18446744073709551615",
            "invalid_query",
        ),
        list("limit not a number", "limit=ten", "invalid_query"),
        list("limit fractional", "limit=1.5", "invalid_query"),
        list("limit empty", "limit=", "invalid_query"),
        list("limit twice", "limit=1&limit=2", "invalid_query"),
        list("unknown parameter", "sort=desc", "invalid_query"),
        list("count not a boolean", "count=yes", "invalid_query"),
        // Listing: search and folders.
        list("contains empty", "contains=", "invalid_query"),
        list("glob empty", "glob=", "invalid_query"),
        list(
            "glob over 512 bytes",
            &format!("glob={}", "k".repeat(513)),
            "invalid_query",
        ),
        list(
            "ignore_case not a boolean",
            "contains=a&ignore_case=1",
            "invalid_query",
        ),
        list("delimiter empty", "delimiter=", "invalid_query"),
        list("delimiter too long", "delimiter=123456789", "invalid_query"),
        list("delimiter control", "delimiter=%0A", "invalid_query"),
        // Listing: prefix and cursor follow the key rules.
        list("prefix not UTF-8", "prefix=%FF", "invalid_query"),
        list("prefix with NUL", "prefix=a%00", "invalid_query"),
        list("prefix with DEL", "prefix=%7F", "invalid_query"),
        list(
            "prefix over 512 bytes",
            &format!("prefix={}", "p".repeat(MAX_KEY_BYTES + 1)),
            "invalid_query",
        ),
        list("after not UTF-8", "after=%C3", "invalid_query"),
        list("after with a newline", "after=a%0Ab", "invalid_query"),
        list("after empty", "after=", "invalid_query"),
        list(
            "after over 512 bytes",
            &format!("after={}", "a".repeat(MAX_KEY_BYTES + 1)),
            "invalid_query",
        ),
        case(
            "event stream prefix not UTF-8",
            Method::GET,
            "/api/events?prefix=%FF",
            400,
            "invalid_query",
        ),
        case(
            "event stream unknown parameter",
            Method::GET,
            "/api/events?prefx=a",
            400,
            "invalid_query",
        ),
        case(
            "event stream listing parameter",
            Method::GET,
            "/api/events?limit=10",
            400,
            "invalid_query",
        ),
    ]);
    v
}

/// What must not change: both digests (keys, versions, tombstones) and node1's write
/// counter.
#[derive(Debug, PartialEq)]
struct Snapshot {
    digests: Vec<(u64, String)>,
    local_writes: u64,
}

async fn snapshot(clients: &[Client]) -> Snapshot {
    let mut digests = Vec::new();
    for c in clients {
        digests.push(c.digest().await.unwrap());
    }
    Snapshot {
        digests,
        local_writes: clients[0].counter("local_writes").await.unwrap(),
    }
}

async fn send(a: &Client, case: &Case) -> reqwest::Response {
    let mut r = a.request(case.method.clone(), &a.url(&case.path));
    for (k, v) in &case.headers {
        r = r.header(k, v);
    }
    if let Some(b) = &case.body {
        r = r.body(b.clone());
    }
    // Bounded, so a case answered with an endless stream fails instead of hanging.
    r.timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: transport error {e}", case.name))
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_write_nothing() {
    let c = cluster().await;
    let clients = c.clients();
    let (a, b) = (&clients[0], &clients[1]);
    let existing = a.put("existing", &["v1"]).await.unwrap();
    let chunk = "x".repeat(MAX_VALUE_BYTES);
    a.put("big", &vec![chunk.as_str(); 14]).await.unwrap();
    c.converged(T).await.unwrap();
    let before = snapshot(&clients).await;
    let pairs_before = a.list_all().await.unwrap();
    let applied_before = b.counter("events_applied").await.unwrap();

    // Well-formed, and older than anything this node issues now.
    let other_tag = "0000000000000001-00000000-node1~0000000000000000".to_owned();
    assert_ne!(existing.etag, other_tag);
    let table = cases(&other_tag);
    let mut failures = Vec::new();
    for case in &table {
        let resp = send(a, case).await;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let text = resp.text().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_str(&text).ok();
        let mut problems = Vec::new();
        if status != case.status {
            problems.push(format!("status {status}, want {}", case.status));
        }
        if content_type.as_deref() != Some("application/json") {
            problems.push(format!("content type {content_type:?}"));
        }
        match &body {
            Some(b) => {
                if b["error"] != case.error {
                    problems.push(format!("error {}, want {}", b["error"], case.error));
                }
                if b["detail"].as_str().is_none_or(str::is_empty) {
                    problems.push("no detail".into());
                }
                if status == 412 && b.get("current").is_none() {
                    problems.push("a 412 without `current`".into());
                }
            }
            None => problems.push("body is not JSON".into()),
        }
        // Writes are synchronous: a write this request made would show now.
        let now = snapshot(&clients).await;
        if now != before {
            problems.push(format!("state changed: {before:?} -> {now:?}"));
        }
        if !problems.is_empty() {
            let excerpt: String = text.chars().take(200).collect();
            failures.push(format!(
                "{}: {} ({excerpt})",
                case.name,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\nnode log:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n"),
        c.nodes[0].log_tail(20)
    );

    // A URI longer than an HTTP client will even build (64 KiB) is refused by the HTTP
    // parser before the router, so it gets a bare status and no JSON body; it must still
    // be refused and write nothing. Sent over a raw connection for that reason.
    let status = raw_request_status(
        a.base(),
        &format!("PUT /api/pairs/{} HTTP/1.1", "k".repeat(70_000)),
        r#"{"values":["v"]}"#,
    )
    .await;
    assert!(
        (400..500).contains(&status),
        "an over-long URI got HTTP {status}"
    );

    assert_eq!(snapshot(&clients).await, before);
    assert_eq!(a.list_all().await.unwrap(), pairs_before);
    assert_eq!(
        a.counter("events_published").await.unwrap(),
        2,
        "node1 published only the two seed writes"
    );
    // Replication still works, and the peer received exactly one event since: the
    // barrier. (Nothing else was written, so nothing else could be published.)
    a.put("barrier", &["after the table"]).await.unwrap();
    wait_until(T, "the barrier to reach node2", || async {
        b.get("barrier").await.ok().flatten().is_some()
    })
    .await
    .unwrap();
    assert_eq!(
        b.counter("events_applied").await.unwrap(),
        applied_before + 1
    );
    c.identical(T).await.unwrap();
    assert_eq!(a.counter("events_rejected").await.unwrap(), 0);
    assert_eq!(b.counter("events_rejected").await.unwrap(), 0);
}

/// Sends one request line with a JSON body over a fresh connection and returns the
/// response's status code.
async fn raw_request_status(base: &str, request_line: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{request_line}\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(T, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            other => panic!("no status line ({other:?}) after {head:?}"),
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"))
}

/// Percent-encodes only what a URL path cannot hold literally, with lowercase hex: a
/// second spelling of the same key besides the client's all-uppercase one.
fn light_encoding(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'/' | b'%' | b'?' | b'#' | b' ' | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{'
            | b'|' | b'}' => format!("%{b:02x}"),
            b if b.is_ascii() => (b as char).to_string(),
            b => format!("%{b:02x}"),
        })
        .collect()
}

#[tokio::test]
async fn unusual_keys_round_trip_and_replicate_unchanged() {
    let c = cluster().await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let long_ascii = "k".repeat(MAX_KEY_BYTES);
    let long_unicode = "é".repeat(MAX_KEY_BYTES / 2);
    let keys: Vec<&str> = vec![
        "ключ/😀 a%b",
        "with space",
        " leading and trailing ",
        "a/b/c",
        "/leading-slash",
        "trailing-slash/",
        "%2F",
        "100%",
        "a+b",
        "?query=1&x#fragment",
        "~!$'()*,;:@[]",
        "quote\"back\\slash",
        "日本語のキー",
        "family 👩‍👩‍👧 (ZWJ)",
        "zero\u{200b}width",
        "\u{fffd}",
        "a/../b",
        "./x",
        "<script>alert(1)</script>",
        &long_ascii,
        &long_unicode,
    ];
    for (i, key) in keys.iter().enumerate() {
        let value = format!("value {i} of {key}");
        let created = a.put(key, &[&value]).await.unwrap();
        assert_eq!(created.key, *key);
        assert_eq!(created.values, std::slice::from_ref(&value));
        // The same key spelled differently in the URL.
        let url = a.url(&format!("/api/pairs/{}", light_encoding(key)));
        let r = a.request(Method::GET, &url).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {url}");
        assert_eq!(r.json::<Pair>().await.unwrap(), created, "GET {url}");
    }
    // '+' in a path is a plus, not a space.
    let r = a
        .request(Method::GET, &a.url("/api/pairs/a+b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Pair>().await.unwrap().key, "a+b");

    let mut sorted: Vec<&str> = keys.clone();
    sorted.sort(); // Byte order, as the API lists.
    assert_eq!(a.keys().await.unwrap(), sorted);

    // A Unicode prefix selects by bytes.
    let r = a
        .get_json("/api/pairs?prefix=%D0%BA%D0%BB%D1%8E%D1%87%2F")
        .await
        .unwrap();
    assert_eq!(r["pairs"][0]["key"], "ключ/😀 a%b");
    assert_eq!(r["pairs"].as_array().unwrap().len(), 1);

    // Every key reaches the peer byte for byte, and changes flow back.
    let on_a = c.identical(T).await.unwrap();
    assert_eq!(on_a.len(), keys.len());
    for key in &keys {
        assert_eq!(b.get(key).await.unwrap().unwrap().key, *key);
    }
    let key = "ключ/😀 a%b";
    b.append(key, "from node2").await.unwrap();
    assert!(b.delete("with space").await.unwrap());
    wait_until(T, "node2's changes to reach node1", || async {
        let appended = a.get(key).await.ok().flatten().map(|p| p.values.len()) == Some(2);
        appended && matches!(a.get("with space").await, Ok(None))
    })
    .await
    .unwrap();
    c.identical(T).await.unwrap();
}

/// The positive side of conditional requests: `If-Match` and `If-None-Match: *` on
/// appends, and `If-Match` on deletes, including once the pair is gone.
#[tokio::test]
async fn conditional_appends_and_deletes() {
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let a = c.nodes[0].client();
    let v1 = a.put("k", &["1"]).await.unwrap().etag;
    let append = |key: &str, header: HeaderName, value: String| {
        a.request(Method::POST, &format!("{}/values", a.pair_url(key)))
            .header(header, value)
            .json(&json!({ "value": "x" }))
            .send()
    };
    let r = append("k", IF_MATCH, format!("\"{v1}\"")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v2 = r.json::<Pair>().await.unwrap().etag;
    // The tag read before is stale now: refused, and the answer shows the pair.
    let r = append("k", IF_MATCH, format!("\"{v1}\"")).await.unwrap();
    assert_eq!(r.status(), 412);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["current"]["etag"], v2.as_str());
    assert_eq!(a.get("k").await.unwrap().unwrap().values, ["1", "x"]);
    // If-None-Match: * creates once.
    let r = append("new", IF_NONE_MATCH, "*".into()).await.unwrap();
    assert_eq!(r.status(), 201);
    let r = append("new", IF_NONE_MATCH, "*".into()).await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(a.get("new").await.unwrap().unwrap().values, ["x"]);

    let delete = |version: &str| {
        a.request(Method::DELETE, &a.pair_url("k"))
            .header(IF_MATCH, format!("\"{version}\""))
            .send()
    };
    assert_eq!(delete(&v1).await.unwrap().status(), 412);
    assert_eq!(delete(&v2).await.unwrap().status(), 204);
    // Gone: the precondition cannot hold, so 412 (with `current: null`), not 404.
    let r = delete(&v2).await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.json::<Value>().await.unwrap()["current"], Value::Null);
}
