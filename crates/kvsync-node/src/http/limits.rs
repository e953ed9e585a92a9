//! What one client can hold: a request's time, a connection, an event stream. Each bound
//! answers with a JSON error once reached, so nothing a client does grows the node.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    serve::Listener,
};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use super::{
    conn::{ConnPhase, ReadDeadline, Timeouts},
    error::ApiError,
    Ctx,
};
use crate::metrics::Metrics;

/// The request timeout and the event-stream slots, shared by every request.
pub struct Limits {
    pub request_timeout: Duration,
    pub timeouts: Timeouts,
    event_streams: Arc<Semaphore>,
    max_event_streams: u64,
}

impl Limits {
    pub fn new(request_timeout: Duration, timeouts: Timeouts, max_event_streams: u64) -> Self {
        Self {
            request_timeout,
            timeouts,
            event_streams: Arc::new(Semaphore::new(max_event_streams as usize)),
            max_event_streams,
        }
    }

    /// A place for one more event stream, held for as long as the stream lives.
    pub fn event_stream(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.event_streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!(
                    "this node serves at most {} event streams at once; retry later",
                    self.max_event_streams
                ),
            )
        })
    }
}

/// Answers 504 when a request has not produced its answer within the request timeout.
/// The event stream is exempt: it is meant to stay open.
pub async fn time_limit(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/api/events" {
        return next.run(req).await;
    }
    let limit = ctx.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            // A write cut off here may still be applied by a database that wakes up:
            // have the relay look for its outbox mark now, not at its next sweep.
            ctx.app.rescan.notify_one();
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "no answer within {} ms (is MongoDB slow or hung?); a write may still be \
                     applied",
                    limit.as_millis()
                ),
            )
            .into_response()
        }
    }
}

/// Connections refused at once are answered by short-lived tasks; past this many at a
/// time, further ones are closed without an answer.
const MAX_REFUSALS: usize = 64;
/// How long a refused connection has to send its request head before the answer.
const REFUSAL_READ: Duration = Duration::from_secs(1);

/// A listener that holds at most `max` connections: past that, it reads the request
/// head, answers 503 with a JSON error and closes.
/// Accepted connections are closed when they wait too long for a request (see `conn`).
pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    max: u64,
    timeouts: Timeouts,
    metrics: Metrics,
}

impl CappedListener {
    pub fn new(inner: TcpListener, max: u64, timeouts: Timeouts, metrics: Metrics) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max as usize)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            max,
            timeouts,
            metrics,
        }
    }
}

impl Listener for CappedListener {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Counted, SocketAddr) {
        loop {
            let (io, addr) = Listener::accept(&mut self.inner).await;
            // Without it, a change-feed event written while the previous one is not yet
            // acknowledged waits for the client's delayed acknowledgement (Nagle's
            // algorithm): up to 40 ms on Linux, measured as a p90 of 31 ms at 100 events/s.
            if let Err(e) = io.set_nodelay(true) {
                tracing::debug!(%addr, error = %e, "could not disable Nagle's algorithm");
            }
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                let deadline = ReadDeadline::new(ConnPhase::new(), self.timeouts);
                return (
                    Counted {
                        io,
                        deadline,
                        _slot: slot,
                    },
                    addr,
                );
            }
            self.metrics.connections_refused.inc();
            tracing::debug!(%addr, max = self.max, "connection refused: too many open");
            if let Ok(refusal) = self.refusals.clone().try_acquire_owned() {
                tokio::spawn(refuse(io, self.max, refusal));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

async fn refuse(mut io: TcpStream, max: u64, _refusal: OwnedSemaphorePermit) {
    // Read the head first: closing with unread input would reset the connection and
    // could destroy the answer before the client reads it.
    let _ = tokio::time::timeout(REFUSAL_READ, async {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match io.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    })
    .await;
    let body = json!({
        "error": "too_many_connections",
        "detail": format!("this node holds at most {max} connections at once; retry later"),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_READ, async {
        let _ = io.write_all(answer.as_bytes()).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// A connection that holds its place under the cap until it closes.
pub struct Counted {
    io: TcpStream,
    deadline: ReadDeadline,
    _slot: OwnedSemaphorePermit,
}

impl Counted {
    pub fn phase(&self) -> &ConnPhase {
        self.deadline.phase()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let io = &mut this.io;
        this.deadline
            .poll_read(cx, buf, |cx, buf| Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small writes such as change-feed events must leave at once, not wait for the
    /// client's acknowledgement of the previous one.
    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let timeouts = Timeouts {
            header_read: Duration::from_secs(5),
            idle: Duration::from_secs(5),
            body: Duration::from_secs(5),
        };
        let mut listener = CappedListener::new(inner, 4, timeouts, Metrics::new());
        let client = tokio::spawn(TcpStream::connect(addr));
        let (accepted, _) = listener.accept().await;
        let _client = client.await.unwrap().unwrap();
        assert!(accepted.io.nodelay().unwrap(), "Nagle's algorithm is on");
    }
}
