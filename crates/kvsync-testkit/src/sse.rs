//! Reading a node's change feed (`/api/events`, Server-Sent Events): `eventsource-stream`
//! parses it (every line ending the format allows), for the bench and the tests alike.
//!
//! ```ignore
//! let mut events = response.bytes_stream().eventsource();
//! while let Some(Ok(event)) = events.next().await { /* event.event, event.data, event.id */ }
//! ```

pub use eventsource_stream::{Event, EventStreamError, Eventsource};
