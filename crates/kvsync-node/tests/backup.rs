//! Backup and restore against real nodes: `GET /api/export` streams every pair as JSON
//! lines, `POST /api/import` merges them back under the normal merge rule, so a restore
//! replicates and never overwrites newer data.

use std::time::Duration;

use kvsync_testkit::{Client, Cluster, ClusterOptions, Pair};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

async fn export(client: &Client, query: &str) -> String {
    let resp = client
        .request(
            Method::GET,
            &format!("{}?{query}", client.url("/api/export")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    resp.text().await.unwrap()
}

async fn import(client: &Client, body: String) -> (StatusCode, Value) {
    let resp = client
        .request(Method::POST, &client.url("/api/import"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

fn summary(pairs: &[Pair]) -> Vec<(String, Vec<String>, String)> {
    pairs
        .iter()
        .map(|p| (p.key.clone(), p.values.clone(), p.version.clone()))
        .collect()
}

#[tokio::test]
async fn an_export_restores_elsewhere_replicates_and_never_overwrites_newer_data() {
    let a = Cluster::start(ClusterOptions::default()).await.unwrap();
    let (a1, a2) = (a.nodes[0].client(), a.nodes[1].client());
    for i in 0..30 {
        a1.put(&format!("b/{i:02}"), &["one", "two\nlines"])
            .await
            .unwrap();
    }
    for i in 0..5 {
        a2.delete(&format!("b/{i:02}")).await.unwrap();
    }
    a2.append("b/10", "three").await.unwrap();
    a1.put("other", &["x"]).await.unwrap();
    let original = a.identical(T).await.unwrap();

    let live = export(&a1, "").await;
    assert_eq!(live.lines().count(), 26, "{live}");
    let all = export(&a1, "tombstones=true").await;
    assert_eq!(all.lines().count(), 31);
    let some = export(&a1, "prefix=b/1").await;
    assert_eq!(some.lines().count(), 10);
    let first: Value = serde_json::from_str(live.lines().next().unwrap()).unwrap();
    assert_eq!(first["key"], "b/05");
    assert_eq!(first["values"], serde_json::json!(["one", "two\nlines"]));

    // Restored on another cluster, in two requests: the same pairs and versions on both
    // of its nodes, tombstones included.
    let b = Cluster::start(ClusterOptions::default()).await.unwrap();
    let (b1, b2) = (b.nodes[0].client(), b.nodes[1].client());
    let lines: Vec<&str> = all.lines().collect();
    let (s1, r1) = import(&b1, lines[..20].join("\n")).await;
    assert_eq!(s1, StatusCode::OK, "{r1}");
    assert_eq!(r1["changed"], 20, "{r1}");
    let (s2, r2) = import(&b1, lines[20..].join("\n")).await;
    assert_eq!(s2, StatusCode::OK, "{r2}");
    let restored = b.identical(T).await.unwrap();
    assert_eq!(summary(&restored), summary(&original));
    assert!(b2.get("b/00").await.unwrap().is_none());

    // Importing the same again changes nothing.
    let (_, again) = import(&b2, all.clone()).await;
    assert_eq!(again["changed"], 0, "{again}");
    assert_eq!(again["unchanged"], 31, "{again}");

    // An old backup does not undo newer writes; what it adds merges in.
    b1.put("b/20", &["newer"]).await.unwrap();
    b1.delete("b/21").await.unwrap();
    let (_, old) = import(&b2, all.clone()).await;
    assert_eq!(old["changed"], 0, "{old}");
    b.identical(T).await.unwrap();
    assert_eq!(b2.get("b/20").await.unwrap().unwrap().values, ["newer"]);
    assert!(b2.get("b/21").await.unwrap().is_none());

    // A bad line fails the whole request, naming it, and writes nothing.
    let good = lines[25].replace("\"key\":\"b/25\"", "\"key\":\"fresh/1\"");
    assert_ne!(good, lines[25]);
    let bad = format!("{good}\n{{\"key\":\"\",\"state\":{{}}}}");
    let (status, err) = import(&b1, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], "invalid_import", "{err}");
    assert!(err["detail"].as_str().unwrap().contains("line 2"), "{err}");
    assert!(b1.get("fresh/1").await.unwrap().is_none());
    let (status, done) = import(&b1, good).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        b1.get("fresh/1").await.unwrap().unwrap().values,
        ["one", "two\nlines"]
    );
    let too_many = vec![lines[25]; 1001].join("\n");
    let (status, _) = import(&b1, too_many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
