//! `/api/events`: the change feed as Server-Sent Events.

use std::convert::Infallible;

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{error::ApiError, extract::Q, Ctx};

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Only changes of keys that start with this.
    #[serde(default)]
    prefix: String,
    /// Accepted (and checked by the auth layer) because EventSource cannot send headers.
    /// Held as a secret, so no `Debug` of it can show the token.
    #[serde(default, rename = "access_token")]
    #[param(value_type = Option<String>)]
    _access_token: Option<SecretString>,
}

/// `hello` on connect, then one `change` per change applied on this node (local or
/// replicated) whose key has the prefix, and one `conflict` per conflict settled here. `resync` tells a client that fell too far
/// behind to reload, since it missed changes. At most `KVSYNC_MAX_EVENT_STREAMS` at once.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "feed",
    params(EventsParams),
    security(("bearer" = []), ("access_token" = [])),
    responses(
        (status = 200, description = super::openapi::EVENTS, body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_query`", body = super::error::ErrorBody),
        (status = 503, description = "`too_many_streams`: the node holds its maximum of event streams", body = super::error::ErrorBody),
    )
)]
pub async fn events(
    State(ctx): State<Ctx>,
    Q(params): Q<EventsParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = ctx.limits.event_stream()?;
    let mut rx = ctx.app.subscribe();
    let hello = Event::default()
        .event("hello")
        .data(json!({ "node": ctx.app.node.as_str() }).to_string());
    let prefix = params.prefix;
    let changes = async_stream::stream! {
        // The stream's place under the cap, given back when the stream ends or its client
        // goes away.
        let _slot = slot;
        yield Ok(hello);
        loop {
            match rx.recv().await {
                Ok(item) if item.key().starts_with(&prefix) => {
                    yield Ok(Event::default().event(item.name()).data(item.json()));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => yield Ok(Event::default().event("resync").data("{}")),
                Err(RecvError::Closed) => break,
            }
        }
    };
    // End the stream at shutdown, or graceful shutdown would wait for it forever.
    let shutdown = ctx.shutdown.clone().cancelled_owned();
    Ok(Sse::new(changes.take_until(shutdown)).keep_alive(KeepAlive::default()))
}
