//! Reads a node's change feed (`/api/events`) and timestamps each change as it arrives.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use kvsync_testkit::Client;
use serde::Deserialize;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

/// One `change` event as it arrived.
#[derive(Debug)]
pub struct Arrival {
    pub key: String,
    pub version: String,
    /// When the bytes carrying it were read, before any parsing.
    pub at: Instant,
}

#[derive(Deserialize)]
struct ChangeData {
    key: String,
    version: String,
}

pub struct Feed {
    pub arrivals: mpsc::UnboundedReceiver<Arrival>,
    /// Feed breaks (`resync`: the reader fell behind and missed changes).
    pub resyncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl Feed {
    /// A feed filled by `task` through the sender of `arrivals` (another system's
    /// change notifications; see `peers`).
    pub fn from_task(arrivals: mpsc::UnboundedReceiver<Arrival>, task: JoinHandle<()>) -> Self {
        Self {
            arrivals,
            resyncs: Default::default(),
            task,
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to `client`'s change feed for keys starting with `prefix` and returns
/// once the node has said `hello` (so no change after this call is missed).
pub async fn subscribe(client: &Client, prefix: &str) -> Result<Feed> {
    let resp = client
        .request(reqwest::Method::GET, &client.url("/api/events"))
        .query(&[("prefix", prefix)])
        .send()
        .await
        .context("opening the change feed")?;
    if !resp.status().is_success() {
        bail!("change feed: HTTP {}", resp.status());
    }
    let (tx, arrivals) = mpsc::unbounded_channel();
    let (hello_tx, hello_rx) = tokio::sync::oneshot::channel();
    let resyncs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let resyncs_task = resyncs.clone();
    let task = tokio::spawn(async move {
        let mut hello = Some(hello_tx);
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        while let Some(chunk) = body.next().await {
            let at = Instant::now();
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            // Events end with a blank line.
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let mut kind = "message";
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = if v.trim() == "change" {
                            "change"
                        } else if v.trim() == "hello" {
                            "hello"
                        } else if v.trim() == "resync" {
                            "resync"
                        } else {
                            "other"
                        };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                match kind {
                    "hello" => {
                        if let Some(h) = hello.take() {
                            let _ = h.send(());
                        }
                    }
                    "change" => {
                        if let Ok(c) = serde_json::from_str::<ChangeData>(&data) {
                            let _ = tx.send(Arrival {
                                key: c.key,
                                version: c.version,
                                at,
                            });
                        }
                    }
                    "resync" => {
                        resyncs_task.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), hello_rx)
        .await
        .context("no hello on the change feed within 10 s")?
        .context("the change feed closed before its hello")?;
    Ok(Feed {
        arrivals,
        resyncs,
        task,
    })
}
