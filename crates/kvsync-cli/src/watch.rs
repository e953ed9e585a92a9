//! `watch`: follows the node's Server-Sent Events feed, reconnecting after a
//! disconnection with a growing delay, and resuming where it left off (the id of the
//! last event, as `Last-Event-ID`): the node first sends the final state of every key
//! changed meanwhile.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;

use crate::{
    api::{Api, Error},
    commands::Out,
};

const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// A `change` event's data.
#[derive(Deserialize)]
struct Change {
    key: String,
    values: Option<Vec<String>>,
    deleted: bool,
    origin: String,
    updated_at: String,
}

struct State {
    /// Whether a stream was ever opened: until then a node that cannot be reached is
    /// an error (a wrong URL, most likely), after it an outage to wait out.
    connected: bool,
    delay: Duration,
    /// The id of the last event with one: where to resume.
    last_id: Option<String>,
}

/// Runs until interrupted, or until the node refuses the stream for good (4xx).
pub async fn run(api: &Api, out: &Out, prefix: &str) -> Result<(), Error> {
    let mut state = State {
        connected: false,
        delay: FIRST_DELAY,
        last_id: None,
    };
    loop {
        let note = match api.events(prefix, state.last_id.as_deref()).await {
            Ok(response) => {
                let lost = follow(api, out, response, prefix, &mut state).await?;
                format!("lost the event stream ({lost}); reconnecting")
            }
            // A connection reset while asking (a proxy in between) is an outage too.
            Err(e @ (Error::Unreachable { .. } | Error::BadAnswer(_))) if state.connected => {
                format!("cannot reconnect ({e}); trying again")
            }
            // Busy (too many streams) or shutting down: worth another try.
            Err(Error::Api(e)) if state.connected && e.status.is_server_error() => {
                format!("cannot reconnect ({e}); trying again")
            }
            Err(e) => return Err(e),
        };
        eprintln!(
            "kvsync: {note} in {}",
            humantime::format_duration(state.delay)
        );
        tokio::time::sleep(state.delay).await;
        state.delay = (state.delay * 2).min(MAX_DELAY);
    }
}

/// Prints the stream's changes until it ends; returns why it ended.
async fn follow(
    api: &Api,
    out: &Out,
    response: reqwest::Response,
    prefix: &str,
    state: &mut State,
) -> Result<String, Error> {
    let mut events = response.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => return Ok(e.to_string()),
        };
        let resuming = state.last_id.is_some();
        if !event.id.is_empty() {
            state.last_id = Some(event.id.clone());
        }
        match event.event.as_str() {
            "hello" => {
                let node = serde_json::from_str::<serde_json::Value>(&event.data)
                    .ok()
                    .and_then(|v| v["node"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| api.base().to_owned());
                if state.connected && resuming {
                    eprintln!(
                        "kvsync: reconnected to {node}; changes made while disconnected follow"
                    );
                } else if state.connected {
                    eprintln!(
                        "kvsync: reconnected to {node}; changes made while disconnected are not shown"
                    );
                } else {
                    let which = match prefix {
                        "" => "every key".to_owned(),
                        p => format!("keys starting with {p:?}"),
                    };
                    eprintln!("kvsync: watching {node} for changes to {which}");
                }
                state.connected = true;
                state.delay = FIRST_DELAY;
            }
            "change" => {
                let change: Change = serde_json::from_str(&event.data)
                    .map_err(|e| Error::BadAnswer(format!("change event: {e}")))?;
                if out.json {
                    // As the node sent it: a one-line JSON document.
                    out.line(event.data.trim())?;
                } else {
                    out.line(describe(&change))?;
                }
            }
            "resync" => eprintln!(
                "kvsync: the node cannot send what changed since this client's last event (another node or database, or deletes it has forgotten); list the pairs again to catch up"
            ),
            _ => {}
        }
    }
    Ok("the node ended it".into())
}

fn describe(c: &Change) -> String {
    if c.deleted {
        return format!("{} {} delete {}", c.updated_at, c.origin, c.key);
    }
    let values =
        serde_json::to_string(c.values.as_deref().unwrap_or_default()).expect("JSON serializes");
    format!("{} {} put {} {values}", c.updated_at, c.origin, c.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_changes_on_one_line() {
        let put = Change {
            key: "a b".into(),
            values: Some(vec!["x\ny".into()]),
            deleted: false,
            origin: "node2".into(),
            updated_at: "2025-01-01T00:00:00.000Z".into(),
        };
        assert_eq!(
            describe(&put),
            r#"2025-01-01T00:00:00.000Z node2 put a b ["x\ny"]"#
        );
        let delete = Change {
            deleted: true,
            values: None,
            ..put
        };
        assert_eq!(
            describe(&delete),
            "2025-01-01T00:00:00.000Z node2 delete a b"
        );
    }

    #[tokio::test]
    async fn reads_events_split_anywhere_with_crlf() {
        let wire = "event: hello\r\ndata: {\"node\":\"n1\"}\r\n\r\n: keep-alive\r\n\r\n\
                    event: change\r\ndata: {\"key\":\"k\"}\r\n\r\n";
        // Cut into 3-byte pieces, so lines and line ends arrive split.
        let chunks: Vec<Result<Vec<u8>, std::convert::Infallible>> =
            wire.as_bytes().chunks(3).map(|c| Ok(c.to_vec())).collect();
        let events: Vec<_> = futures::stream::iter(chunks)
            .eventsource()
            .map(|e| e.unwrap())
            .collect()
            .await;
        let got: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.event.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(
            got,
            [("hello", r#"{"node":"n1"}"#), ("change", r#"{"key":"k"}"#)]
        );
    }
}
