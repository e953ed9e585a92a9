//! The resumable change feed behind `/api/events`: a replay of what changed since a
//! client's position, read from the store, then the live changes, all in sequence order
//! with their positions as ids. Why no change can be missed is in docs/events.md, "The
//! change feed".

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::Stream;
use kvsync_core::feed::{resume_after, FeedBounds, FeedPosition};
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::app::{App, Change, Fed, FeedItem};

/// Pairs a replay reads at a time.
const PAGE: usize = 500;

/// One Server-Sent Event.
#[derive(Debug)]
pub struct Sent {
    pub name: &'static str,
    pub id: Option<String>,
    pub data: String,
}

/// `hello` (with the position the stream starts from), `resync` if `resume` was given
/// but cannot be resumed from, then one `change` per key changed after the position
/// (its state now), then live changes and conflicts. Every `change` has its position
/// as id, increasing. Ends when a read of the store fails: the client resumes.
pub fn follow(app: Arc<App>, prefix: String, resume: Option<String>) -> impl Stream<Item = Sent> {
    async_stream::stream! {
        // Positions name the store's epoch: wait for the database.
        let mut delay = Duration::from_millis(250);
        while let Err(e) = app.ensure_ready().await {
            tracing::debug!(error = %e, "event stream waits for the database");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let seqs = app.store.sequencer().clone();
        // Subscribed before `upto` is read: every change numbered above it comes live.
        let mut rx = app.subscribe();
        let mut stable = seqs.stable();
        let (epoch, collected) = seqs.epoch_and_collected();
        let upto = seqs.last();
        let start = *stable.borrow_and_update();
        let position = |seq: i64| {
            FeedPosition { node: app.node.to_string(), epoch: epoch.clone(), seq }.to_string()
        };
        let bounds = FeedBounds { node: app.node.as_str(), epoch: &epoch, collected, last: upto };
        let (from, unresumable) = match resume.as_deref().map(|raw| resume_after(raw, bounds)) {
            None => (start, None),
            Some(Ok(seq)) => (seq, None),
            Some(Err(why)) => (start, Some(why)),
        };
        yield Sent {
            name: "hello",
            id: Some(position(from)),
            data: json!({ "node": app.node.as_str() }).to_string(),
        };
        if let Some(why) = unresumable {
            tracing::info!(reason = why.as_str(), "event stream cannot resume from the client's position: resync");
            yield Sent {
                name: "resync",
                id: Some(position(from)),
                data: json!({ "reason": why.as_str() }).to_string(),
            };
        }
        let mut cursor = from;
        let mut target = upto;
        'catch_up: loop {
            // The replay: once every number up to `target` is done with, the pairs
            // numbered after the cursor and up to `target`, one per key, in order.
            if target > cursor {
                if stable.wait_for(|s| *s >= target).await.is_err() {
                    return;
                }
                loop {
                    let page = match app.store.changed_since(cursor, target, PAGE).await {
                        Ok(page) => page,
                        Err(e) => {
                            tracing::warn!(error = %e, "event stream ends: the replay could not read the store; the client resumes");
                            return;
                        }
                    };
                    let full = page.len() == PAGE;
                    for (seq, pair) in page {
                        cursor = seq;
                        if pair.key.as_str().starts_with(&prefix) {
                            let change = FeedItem::Change(Change::stored(&pair, &app.node));
                            yield Sent { name: "change", id: Some(position(seq)), data: change.json() };
                        }
                    }
                    if !full {
                        break;
                    }
                }
                cursor = target;
            }
            // Live: changes told on the feed, held until the stable point passes them,
            // then sent in order.
            let mut held: BTreeMap<i64, Vec<Arc<Fed>>> = BTreeMap::new();
            // The stable point may have passed the cursor during the replay already.
            let mut look = true;
            loop {
                let step = if std::mem::take(&mut look) { Step::Stable } else { tokio::select! {
                    item = rx.recv() => match item {
                        Ok(item) => Step::Item(item),
                        Err(RecvError::Lagged(_)) => Step::Lagged,
                        Err(RecvError::Closed) => Step::End,
                    },
                    moved = stable.changed() => match moved {
                        Ok(()) => Step::Stable,
                        Err(_) => Step::End,
                    },
                } };
                match step {
                    Step::Item(item) => hold(&mut held, cursor, item),
                    Step::Lagged => break,
                    Step::End => return,
                    Step::Stable => {
                        // A change is told before its number is done with: whatever is
                        // at or below the stable point is in the channel by now.
                        let mut lagged = false;
                        loop {
                            match rx.try_recv() {
                                Ok(item) => hold(&mut held, cursor, item),
                                Err(TryRecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        if lagged {
                            break;
                        }
                        let upto = *stable.borrow_and_update();
                        while let Some(entry) = held.first_entry() {
                            if *entry.key() > upto {
                                break;
                            }
                            let (seq, items) = entry.remove_entry();
                            for item in items {
                                if !item.key().starts_with(&prefix) {
                                    continue;
                                }
                                // Conflicts carry no id: they are not replayed.
                                let id = matches!(item.item, FeedItem::Change(_)).then(|| position(seq));
                                yield Sent { name: item.name(), id, data: item.json() };
                            }
                        }
                        cursor = cursor.max(upto);
                    }
                }
            }
            // This stream fell behind the feed and lost changes from it: read them from
            // the store instead.
            tracing::debug!("event stream lagged behind the feed; catching up from the store");
            rx = app.subscribe();
            target = seqs.last();
            continue 'catch_up;
        }
    }
}

enum Step {
    Item(Arc<Fed>),
    Stable,
    Lagged,
    End,
}

fn hold(held: &mut BTreeMap<i64, Vec<Arc<Fed>>>, cursor: i64, item: Arc<Fed>) {
    // At or below the cursor: sent already, by the replay (at a state as new or newer).
    if item.seq > cursor {
        held.entry(item.seq).or_default().push(item);
    }
}
