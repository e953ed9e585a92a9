//! How long a client may keep a connection without using it, and a body without sending
//! it. Without these bounds, a client holding `KVSYNC_MAX_CONNECTIONS` idle sockets would
//! lock every other client out for as long as it liked.
//!
//! A connection is *busy* from the moment its request head is parsed until its answer
//! has been sent (an event stream is busy for its whole life). Between requests it is
//! *waiting*, and then bounded:
//! - from the accept, or from the first byte of a later request, the whole head must
//!   arrive within the header-read timeout;
//! - after an answer, the next request must start within the idle timeout.
//!
//! A busy request's body must arrive within the body timeout of its head.

use std::{
    error::Error as StdError,
    fmt, io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{connect_info::Connected, ConnectInfo, Request, State},
    middleware::Next,
    response::Response,
    serve::IncomingStream,
};
use tokio::{
    io::ReadBuf,
    time::{Instant, Sleep},
};

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub body: Duration,
}

/// One connection's phase. Pure: every time is an argument.
#[derive(Debug)]
pub struct Phase {
    busy: usize,
    /// When the connection began waiting for a request (accept, or the last answer).
    waiting_since: Instant,
    /// Whether it has been waiting since its accept (no request yet).
    fresh: bool,
    /// When the first byte of the next request's head arrived.
    head_since: Option<Instant>,
    /// The reader to wake when the connection starts waiting (its deadline is new).
    reader: Option<Waker>,
}

impl Phase {
    pub fn new(now: Instant) -> Self {
        Self {
            busy: 0,
            waiting_since: now,
            fresh: true,
            head_since: None,
            reader: None,
        }
    }

    /// When a waiting connection is to be closed; None while it is busy.
    pub fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        if self.busy > 0 {
            return None;
        }
        Some(match (self.head_since, self.fresh) {
            (Some(head), _) => head + t.header_read,
            (None, true) => self.waiting_since + t.header_read,
            (None, false) => self.waiting_since + t.idle,
        })
    }

    pub fn read_bytes(&mut self, now: Instant) {
        if self.busy == 0 && self.head_since.is_none() && !self.fresh {
            self.head_since = Some(now);
        }
    }

    pub fn request_started(&mut self) {
        self.busy += 1;
        self.head_since = None;
        self.fresh = false;
    }

    pub fn request_ended(&mut self, now: Instant) {
        self.busy = self.busy.saturating_sub(1);
        if self.busy == 0 {
            self.waiting_since = now;
            if let Some(w) = self.reader.take() {
                w.wake();
            }
        }
    }
}

/// A connection's phase, shared by its socket and the requests it carries.
#[derive(Debug, Clone)]
pub struct ConnPhase(Arc<Mutex<Phase>>);

impl ConnPhase {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Phase::new(Instant::now()))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.0.lock().expect("connection phase lock")
    }
}

/// The socket side: reads fail with `TimedOut` once a waiting connection's deadline
/// passes, which makes the HTTP server close it.
pub struct ReadDeadline {
    phase: ConnPhase,
    timeouts: Timeouts,
    sleep: Pin<Box<Sleep>>,
}

impl ReadDeadline {
    pub fn new(phase: ConnPhase, timeouts: Timeouts) -> Self {
        Self {
            phase,
            timeouts,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    pub fn phase(&self) -> &ConnPhase {
        &self.phase
    }

    /// Wraps one read of the socket (`read` polls it into `buf`).
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        read: impl FnOnce(&mut Context<'_>, &mut ReadBuf<'_>) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.phase.lock().read_bytes(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = {
                    let mut phase = self.phase.lock();
                    phase.reader = Some(cx.waker().clone());
                    phase.deadline(&self.timeouts)
                };
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                if self.sleep.deadline() != deadline {
                    self.sleep.as_mut().reset(deadline);
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection closed: no request within the header-read or idle timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future as _;

/// What a request knows of its connection (`ConnectInfo`).
#[derive(Debug, Clone)]
pub struct ConnMeta {
    phase: Option<ConnPhase>,
}

impl Connected<IncomingStream<'_, super::CappedListener>> for ConnMeta {
    fn connect_info(stream: IncomingStream<'_, super::CappedListener>) -> Self {
        Self {
            phase: Some(stream.io().phase().clone()),
        }
    }
}

/// Marks the connection busy while a request is served (until its answer's body is
/// sent or dropped), and bounds how long the request's body may take to arrive.
pub async fn track(State(ctx): State<super::Ctx>, req: Request, next: Next) -> Response {
    let body_timeout = ctx.limits.timeouts.body;
    let phase = req
        .extensions()
        .get::<ConnectInfo<ConnMeta>>()
        .and_then(|c| c.0.phase.clone());
    let Some(phase) = phase else {
        return next.run(req).await;
    };
    phase.lock().request_started();
    let guard = Busy(phase);
    let deadline = Instant::now() + body_timeout;
    let req = req.map(|b| Body::new(DeadlineBody::new(b, deadline, body_timeout)));
    let response = next.run(req).await;
    response.map(|b| {
        Body::new(Guarded {
            inner: b,
            _busy: guard,
        })
    })
}

struct Busy(ConnPhase);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.lock().request_ended(Instant::now());
    }
}

/// An answer's body that keeps its connection busy until it is done.
struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The error a request body gives once its deadline has passed.
#[derive(Debug)]
pub struct BodyTimedOut(pub Duration);

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} ms",
            self.0.as_millis()
        )
    }
}

impl StdError for BodyTimedOut {}

/// Whether `e` (or what caused it) is a body that timed out.
pub fn is_body_timeout<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a BodyTimedOut> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<BodyTimedOut>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// A request body that must be complete by a fixed deadline.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(5),
        idle: Duration::from_secs(60),
        body: Duration::from_secs(10),
    };

    #[test]
    fn a_new_connection_must_send_its_head_within_the_header_read_timeout() {
        let t0 = Instant::now();
        let mut p = Phase::new(t0);
        assert_eq!(p.deadline(&T), Some(t0 + T.header_read));
        // Bytes of the first head do not extend it (a slow head is the attack).
        p.read_bytes(t0 + Duration::from_secs(4));
        assert_eq!(p.deadline(&T), Some(t0 + T.header_read));
    }

    #[test]
    fn a_busy_connection_has_no_deadline_and_then_waits_at_most_the_idle_timeout() {
        let t0 = Instant::now();
        let mut p = Phase::new(t0);
        p.request_started();
        assert_eq!(p.deadline(&T), None);
        // An event stream: a second request on another stream, ended first.
        p.request_started();
        p.request_ended(t0 + Duration::from_secs(1));
        assert_eq!(p.deadline(&T), None);
        let done = t0 + Duration::from_secs(100);
        p.request_ended(done);
        assert_eq!(p.deadline(&T), Some(done + T.idle));
        // The next request's first byte: its head now has the header-read timeout.
        let next = done + Duration::from_secs(30);
        p.read_bytes(next);
        assert_eq!(p.deadline(&T), Some(next + T.header_read));
        p.read_bytes(next + Duration::from_secs(1));
        assert_eq!(p.deadline(&T), Some(next + T.header_read));
        p.request_started();
        assert_eq!(p.deadline(&T), None);
    }
}
