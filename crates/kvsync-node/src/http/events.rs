//! `/api/events`: the change feed as Server-Sent Events, resumable (see `crate::feed`).

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};
use secrecy::SecretString;
use serde::Deserialize;

use super::{error::ApiError, extract::Q, Ctx};

/// How often the stream sends a `heartbeat` event. A client that hears nothing for a few
/// of these knows the node stopped answering (a stopped process keeps its connections
/// open, so the browser sees no error), and says so instead of showing itself live.
pub const HEARTBEAT: Duration = Duration::from_secs(3);

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Only changes of keys that start with this.
    #[serde(default)]
    prefix: String,
    /// Where to resume, for clients that cannot send `Last-Event-ID` (which wins).
    #[serde(default)]
    last_event_id: Option<String>,
    /// Accepted (and checked by the auth layer) because EventSource cannot send headers.
    /// Held as a secret, so no `Debug` of it can show the token.
    #[serde(default, rename = "access_token")]
    #[param(value_type = Option<String>)]
    _access_token: Option<SecretString>,
}

/// `hello` on connect, then one `change` per change applied on this node (local or
/// replicated) whose key has the prefix, and one `conflict` per conflict settled here.
/// Each `change` has an id; given one back (`Last-Event-ID` or `last_event_id`), the
/// stream first sends the final state of every key changed since, or `resync` if it
/// cannot. At most `KVSYNC_MAX_EVENT_STREAMS` at once.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "feed",
    params(
        EventsParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Where to resume: the id of the last event received (wins over `last_event_id`)"),
    ),
    security(("bearer" = []), ("access_token" = [])),
    responses(
        (status = 200, description = super::openapi::EVENTS, body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_query`", body = super::error::ErrorBody),
        (status = 503, description = "`too_many_streams`: the node holds its maximum of event streams", body = super::error::ErrorBody),
    )
)]
pub async fn events(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Q(params): Q<EventsParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // The prefix is the start of a key: the key rules apply, as on listings.
    if !params.prefix.is_empty() {
        kvsync_core::Key::parse(params.prefix.as_str())
            .map_err(|e| ApiError::bad_request("invalid_query", format!("prefix: {e}")))?;
    }
    let slot = ctx.limits.event_stream()?;
    // The header is what a browser sends on its own reconnects, with the query of the
    // stream's first request: the header is the newer.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.last_event_id);
    let feed = crate::feed::follow(ctx.app.clone(), params.prefix, resume);
    let changes = async_stream::stream! {
        // The stream's place under the cap, given back when the stream ends or its client
        // goes away.
        let _slot = slot;
        let mut feed = std::pin::pin!(feed);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // `next` is cancel-safe: a heartbeat in between loses no change.
            let sent = tokio::select! {
                sent = feed.next() => sent,
                _ = beat.tick() => {
                    // No id: a heartbeat is no place to resume from. EventSource drops an
                    // event without data, hence the empty object.
                    yield Ok(Event::default().event("heartbeat").data("{}"));
                    continue;
                }
            };
            let Some(sent) = sent else { break };
            let mut event = Event::default().event(sent.name).data(sent.data);
            if let Some(id) = sent.id {
                event = event.id(id);
            }
            yield Ok(event);
            // Any event shows the stream is alive: the next heartbeat is due a period later.
            beat.reset();
        }
    };
    // End the stream at shutdown, or graceful shutdown would wait for it forever.
    let shutdown = ctx.shutdown.clone().cancelled_owned();
    Ok(Sse::new(changes.take_until(shutdown)).keep_alive(KeepAlive::default()))
}
