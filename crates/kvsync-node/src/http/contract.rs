//! What the annotations cannot say, added to the generated document so that it states
//! exactly what the server enforces: the shapes of keys, value ids and entity tags, the
//! statuses middleware answers with, the event stream's events, and authentication as
//! this node has it (a node without a token must not be documented as needing one).
//!
//! Dependencies between parameters (`contains` or `glob`, not both; `If-Match` or
//! `If-None-Match`, not both) cannot be expressed in OpenAPI; the parameters'
//! descriptions state them.

use serde_json::{json, Map, Value};

/// A key: 1 to 512 bytes of UTF-8 without control characters. JSON Schema counts
/// characters, so `maxLength` is the byte limit, and a key of multi-byte characters may
/// reach the byte limit first (its description says so).
const KEY_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]+$";
/// The same rule for a prefix, which may be empty.
const PREFIX_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";
const VERSION: &str = r"[0-9a-fA-F]{16}-[0-9a-fA-F]{8}-[A-Za-z0-9._-]{1,64}";

fn key_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": kvsync_core::key::MAX_KEY_BYTES,
        "pattern": KEY_PATTERN,
    })
}

/// Refines the generated document; `auth`: the node has an API token.
pub fn refine(doc: &mut Value, auth: bool) {
    if !auth {
        drop_auth(doc);
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if !["get", "put", "post", "delete"].contains(&method.as_str()) {
                continue;
            }
            refine_parameters(op);
            refine_statuses(op);
            if path == "/api/events" && method == "get" {
                describe_events(op);
            }
            if path == "/api/import" {
                // An empty body imports nothing, and is answered 200.
                op["requestBody"]["required"] = json!(false);
            }
        }
    }
}

/// A node without a token serves every route to anyone: no security requirements, no
/// schemes, no 401.
fn drop_auth(doc: &mut Value) {
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        components.remove("securitySchemes");
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut().filter_map(Value::as_object_mut) {
                op.remove("security");
                if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    r.remove("401");
                }
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    params.retain(|p| p["name"] != "access_token");
                }
            }
        }
    }
}

fn refine_parameters(op: &mut Value) {
    let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    for p in params.iter_mut() {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        let place = p["in"].as_str().unwrap_or_default().to_owned();
        let schema = match (place.as_str(), name.as_str()) {
            ("path", "key") | ("query", "after") => key_schema(),
            // A prefix is the start of a key; empty means every key.
            ("query", "prefix") => json!({
                "type": "string",
                "maxLength": kvsync_core::key::MAX_KEY_BYTES,
                "pattern": PREFIX_PATTERN,
            }),
            ("query", "contains" | "glob") => json!({
                "type": "string",
                "minLength": 1,
                "maxLength": kvsync_core::key::MAX_KEY_BYTES,
            }),
            ("query", "delimiter") => json!({
                "type": "string",
                "minLength": 1,
                "maxLength": 8,
                "pattern": KEY_PATTERN,
            }),
            ("path", "id") => json!({
                "type": "string",
                "pattern": format!(r"^{VERSION}\.(?:0|[1-9][0-9]{{0,8}})$"),
            }),
            ("header", "If-None-Match") => json!({ "type": "string", "enum": ["*"] }),
            ("header", "Last-Event-ID") => json!({ "type": "string" }),
            ("query", "timeout_ms") => json!({
                "type": "integer",
                "minimum": 0,
                "maximum": u32::MAX,
            }),
            _ => continue,
        };
        p["schema"] = schema;
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

/// Statuses that come from extractors and middleware rather than the handler.
fn refine_statuses(op: &mut Value) {
    let json_body = op["requestBody"]["content"]
        .get("application/json")
        .is_some();
    let any_body = op.get("requestBody").is_some();
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    if any_body {
        insert(
            responses,
            "408",
            "`body_timeout`: the body did not arrive within KVSYNC_BODY_TIMEOUT_MS",
        );
    }
    if json_body {
        insert(
            responses,
            "422",
            "`invalid_body`: JSON of the wrong shape (a missing, unknown or mistyped field)",
        );
        insert(responses, "413", "`body_too_large`: over 4 MiB");
        insert(
            responses,
            "415",
            "`unsupported_media_type`: the body is not `application/json`",
        );
    }
}

fn insert(responses: &mut Map<String, Value>, status: &str, description: &str) {
    responses
        .entry(status)
        .or_insert_with(|| error_response(description));
}

/// The event stream's events, each as Server-Sent Events parse it (`event`, `data`,
/// `id`); `data` is JSON text, described by `contentSchema`.
fn describe_events(op: &mut Value) {
    let event = |name: &str, data: Value, id: bool| {
        let mut props = json!({
            "event": { "const": name },
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
        });
        let mut required = vec!["event", "data"];
        if id {
            props["id"] =
                json!({ "type": "string", "pattern": r"^[A-Za-z0-9._-]+\.[0-9a-f]+\.[0-9]+$" });
            required.push("id");
        }
        json!({ "type": "object", "properties": props, "required": required })
    };
    let change = json!({
        "type": "object",
        "required": ["key", "deleted", "version", "origin", "updated_at"],
        "properties": {
            "key": { "type": "string" },
            "values": { "type": ["array", "null"], "items": { "type": "string" } },
            "elements": { "type": ["array", "null"], "items": { "$ref": "#/components/schemas/Element" } },
            "deleted": { "type": "boolean" },
            "version": { "type": "string" },
            "etag": { "type": "string" },
            "origin": { "type": "string" },
            "updated_at": { "type": "string" },
        },
    });
    let schema = json!({
        "oneOf": [
            event("hello", json!({ "type": "object", "required": ["node"], "properties": { "node": { "type": "string" } } }), true),
            event("change", change, true),
            event("conflict", json!({ "$ref": "#/components/schemas/ConflictNote" }), false),
            event("resync", json!({ "type": "object", "required": ["reason"], "properties": { "reason": { "type": "string" } } }), true),
            event("heartbeat", json!({ "type": "object" }), false),
        ],
    });
    if let Some(content) = op["responses"]["200"]["content"].get_mut("text/event-stream") {
        content["schema"] = schema;
    }
}
