//! Reads a node's change feed (`/api/events`) and timestamps each change as it arrives.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use kvsync_testkit::{sse::Eventsource, Client};
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
    pub resyncs: Arc<AtomicU64>,
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
    let resyncs = Arc::new(AtomicU64::new(0));
    let resyncs_task = resyncs.clone();
    let task = tokio::spawn(read_feed(resp.bytes_stream(), tx, hello_tx, resyncs_task));
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

/// Reads the feed's bytes: `hello` is answered once, each `change` becomes an arrival,
/// each `resync` is counted. The SSE parsing is `eventsource-stream`'s.
async fn read_feed<S, E>(
    body: S,
    tx: mpsc::UnboundedSender<Arrival>,
    hello_tx: tokio::sync::oneshot::Sender<()>,
    resyncs: Arc<AtomicU64>,
) where
    S: futures::Stream<Item = Result<bytes::Bytes, E>>,
{
    // When the chunk that completed an event was read, before any parsing.
    let read_at = std::sync::Mutex::new(Instant::now());
    let events = body
        .inspect(|_| *read_at.lock().expect("not poisoned") = Instant::now())
        .eventsource();
    let mut events = std::pin::pin!(events);
    let mut hello = Some(hello_tx);
    while let Some(Ok(event)) = events.next().await {
        match event.event.as_str() {
            "hello" => {
                if let Some(h) = hello.take() {
                    let _ = h.send(());
                }
            }
            "change" => {
                if let Ok(c) = serde_json::from_str::<ChangeData>(&event.data) {
                    let at = *read_at.lock().expect("not poisoned");
                    let _ = tx.send(Arrival {
                        key: c.key,
                        version: c.version,
                        at,
                    });
                }
            }
            "resync" => {
                resyncs.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` to the reader and returns the keys of the changes and the resyncs.
    async fn read(chunks: &[&str]) -> (Vec<String>, u64, bool) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (hello_tx, hello_rx) = tokio::sync::oneshot::channel();
        let resyncs = Arc::new(AtomicU64::new(0));
        let body = futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(c.to_string())))
                .collect::<Vec<_>>(),
        );
        read_feed(body, tx, hello_tx, resyncs.clone()).await;
        let mut keys = Vec::new();
        while let Ok(a) = rx.try_recv() {
            keys.push(format!("{}@{}", a.key, a.version));
        }
        let said_hello = hello_rx.await.is_ok();
        (keys, resyncs.load(Ordering::Relaxed), said_hello)
    }

    #[tokio::test]
    async fn reads_lf_separated_events_split_anywhere() {
        let wire = "event: hello\ndata: {\"node\":\"n1\"}\n\n:keep-alive\n\n\
                    event: change\ndata: {\"key\":\"a\",\"version\":\"v1\"}\n\n\
                    event: resync\ndata: {}\n\n\
                    event: change\ndata: {\"key\":\"b\",\"version\":\"v2\"}\n\n";
        let (left, right) = wire.split_at(57);
        assert_eq!(
            read(&[left, right]).await,
            (vec!["a@v1".to_owned(), "b@v2".to_owned()], 1, true)
        );
    }

    /// The SSE format allows CR LF (and lone CR) line ends; a server or proxy may use them.
    #[tokio::test]
    async fn reads_crlf_separated_events() {
        let wire = "event: hello\r\ndata: {\"node\":\"n1\"}\r\n\r\n\
                    event: change\r\ndata: {\"key\":\"a\",\"version\":\"v1\"}\r\n\r\n\
                    event: resync\rdata: {}\r\r\
                    event: change\r\ndata: {\"key\":\"b\",\"version\":\"v2\"}\r\n\r\n";
        let (left, right) = wire.split_at(31);
        assert_eq!(
            read(&[left, right]).await,
            (vec!["a@v1".to_owned(), "b@v2".to_owned()], 1, true)
        );
    }
}
