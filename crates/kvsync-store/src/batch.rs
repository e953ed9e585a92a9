//! Group commit: conditional writes that arrive while earlier ones are in flight go to
//! the database together, as the statements of one `update` command.
//!
//! Each write is a compare-and-swap on the document's `rev`, written as an upsert: a
//! document still at the expected revision is updated; otherwise the server tries to
//! insert a document with the same `_id` and fails with a duplicate key (11000) for that
//! statement alone, which is the conflict. A write of a key not stored yet expects a
//! revision no document has, so it inserts, or conflicts with one written meanwhile.
//! Statements are unordered (`ordered: false`): each succeeds or fails alone, and two
//! writes of one key in a batch are settled by their revisions like any other race.
//!
//! A lone write goes out at once, so batching costs a single writer nothing; under
//! concurrency the database answers one command for many writes, which on a server
//! that handles one request at a time is most of the cost of a write. The acknowledgement
//! is unchanged: each caller hears back only after the command that held its write
//! returned.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use mongodb::{
    bson::{doc, Bson, Document},
    Database,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{
    decode_int, error_of_code, CasError, StoreError, COLLECTION, DUPLICATE_KEY, MAX_DOCUMENT_BYTES,
};

/// Statements in one command at most, unless set otherwise.
pub const DEFAULT_STATEMENTS: usize = 128;
/// Bytes of statements in one command at most (a command may hold 16 MiB; one state
/// may hold 4 MiB, so a batch always has room for at least one).
const MAX_BYTES: usize = 8 << 20;
/// Commands in flight at once: while one is out, the next batch gathers. A second keeps
/// a server that overlaps requests busy during each round trip.
const IN_FLIGHT: usize = 2;
/// The `rev` a write of a new key expects: no stored document has it (revisions start
/// at 1), so such a write inserts or conflicts.
const NO_REV: i64 = 0;

/// How many commands and writes went to the database: for metrics and tests.
#[derive(Debug, Default)]
pub struct BatchStats {
    commands: AtomicU64,
    writes: AtomicU64,
}

impl BatchStats {
    /// Write commands sent.
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// Conditional writes sent in them.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

struct Pending {
    key: String,
    statement: Document,
    bytes: usize,
    done: oneshot::Sender<Result<(), CasError>>,
}

#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    stats: Arc<BatchStats>,
    /// Statements one command may hold.
    limit: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts the task that sends the batches; it ends when every handle is dropped. A
    /// command not answered within `timeout` is abandoned (its writes fail as unavailable),
    /// so a hung server or connection cannot hold the batches that follow.
    pub(crate) fn start(db: Database, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(BatchStats::default());
        let limit = Arc::new(AtomicUsize::new(DEFAULT_STATEMENTS));
        tokio::spawn(run(db, timeout, rx, stats.clone(), limit.clone()));
        Self { tx, stats, limit }
    }

    pub(crate) fn set_limit(&self, statements: usize) {
        self.limit.store(statements.max(1), Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> &Arc<BatchStats> {
        &self.stats
    }

    /// Writes `update` to `key`'s document if it is at revision `expected` (`None`: no
    /// document), inserting it when there is none. `retained` bounds the bytes of the
    /// fields the document keeps untouched: a write whose document could pass MongoDB's
    /// limit is refused here as MongoDB would refuse it (test servers do not), before it
    /// holds up a batch.
    pub(crate) async fn swap(
        &self,
        key: &str,
        expected: Option<i64>,
        update: Document,
        retained: usize,
    ) -> Result<(), CasError> {
        let statement = doc! {
            "q": { "_id": key, "rev": expected.unwrap_or(NO_REV) },
            "u": update,
            "upsert": true,
        };
        let bytes = mongodb::bson::to_vec(&statement)
            .map_err(|e| StoreError::Backend(format!("cannot encode a write of {key:?}: {e}")))?
            .len();
        if bytes + retained > MAX_DOCUMENT_BYTES {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                bytes: bytes + retained,
            }
            .into());
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                key: key.to_owned(),
                statement,
                bytes,
                done,
            })
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?
    }
}

async fn run(
    db: Database,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    stats: Arc<BatchStats>,
    limit: Arc<AtomicUsize>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut held: Option<Pending> = None;
    loop {
        let first = match held.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // A writer that gave up (its request timed out) must not have its write made
        // later behind its back.
        if first.done.is_closed() {
            continue;
        }
        let limit = limit.load(Ordering::Relaxed);
        // Waiting for a slot is when writes gather. Without batching, each write goes
        // out at once, as many at a time as there are writers.
        let slot = if limit > 1 {
            match slots.clone().acquire_owned().await {
                Ok(slot) => Some(slot),
                Err(_) => return,
            }
        } else {
            None
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < limit {
            match rx.try_recv() {
                Ok(p) if p.done.is_closed() => {}
                Ok(p) if bytes + p.bytes > MAX_BYTES => {
                    held = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        stats.commands.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let db = db.clone();
        tokio::spawn(async move {
            send(&db, timeout, batch).await;
            drop(slot);
        });
    }
}

/// Sends one batch and answers each of its writers.
async fn send(db: &Database, timeout: Duration, batch: Vec<Pending>) {
    let mut keys = Vec::with_capacity(batch.len());
    let (statements, waiting): (Vec<Document>, Vec<_>) = batch
        .into_iter()
        .map(|p| {
            keys.push(p.key);
            (p.statement, p.done)
        })
        .unzip();
    let command = doc! { "update": COLLECTION, "updates": statements, "ordered": false };
    let reply = match tokio::time::timeout(timeout, db.run_command(command)).await {
        Ok(reply) => reply.map_err(StoreError::from),
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    };
    let outcomes = match reply {
        Ok(reply) => outcomes(&reply, &keys),
        Err(e) => (0..waiting.len()).map(|_| Err(e.clone().into())).collect(),
    };
    for (done, outcome) in waiting.into_iter().zip(outcomes) {
        // A writer that gave up waiting has dropped its receiver: nothing to tell.
        let _ = done.send(outcome);
    }
}

/// Each statement's outcome from an `update` command's reply.
fn outcomes(reply: &Document, keys: &[String]) -> Vec<Result<(), CasError>> {
    let n = keys.len();
    let mut out: Vec<Result<(), CasError>> = (0..n).map(|_| Ok(())).collect();
    if let Ok(e) = reply.get_document("writeConcernError") {
        // Applied on the primary, maybe not beyond it (a failover may roll it back): an
        // uncertain write, like one that got no answer.
        let message = format!("write concern not satisfied: {e}");
        return (0..n)
            .map(|_| Err(StoreError::Unavailable(message.clone()).into()))
            .collect();
    }
    let Ok(errors) = reply.get_array("writeErrors") else {
        return out;
    };
    for error in errors {
        let Bson::Document(error) = error else {
            continue;
        };
        let Some(index) = decode_int(error, "index")
            .ok()
            .and_then(|i| usize::try_from(i).ok())
        else {
            continue;
        };
        let Some(slot) = out.get_mut(index) else {
            continue;
        };
        let code = decode_int(error, "code")
            .ok()
            .and_then(|c| i32::try_from(c).ok());
        let message = format!(
            "write refused: {}",
            error.get_str("errmsg").unwrap_or("no message")
        );
        *slot = match code {
            Some(DUPLICATE_KEY) => Err(CasError::Conflict),
            Some(code) => Err(error_of_code(code, &keys[index], &message)
                .unwrap_or(StoreError::Backend(message))
                .into()),
            None => Err(StoreError::Backend(message).into()),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_gives_each_statement_its_outcome() {
        let reply = doc! {
            "ok": 1, "n": 2,
            "writeErrors": [
                { "index": 0, "code": 11000, "errmsg": "duplicate key" },
                { "index": 3_i64, "code": 2, "errmsg": "bad update" },
            ],
        };
        let got = outcomes(&reply, &keys(4));
        assert!(matches!(got[0], Err(CasError::Conflict)));
        assert!(got[1].is_ok() && got[2].is_ok());
        assert!(
            matches!(&got[3], Err(CasError::Store(StoreError::Backend(m))) if m.contains("bad update"))
        );
    }

    #[test]
    fn a_write_concern_error_fails_every_statement() {
        let reply =
            doc! { "ok": 1, "n": 2, "writeConcernError": { "code": 64, "errmsg": "timeout" } };
        // Applied on the primary perhaps: uncertain, like a write that got no answer.
        assert!(outcomes(&reply, &keys(2))
            .iter()
            .all(|o| matches!(o, Err(CasError::Store(StoreError::Unavailable(_))))));
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i}")).collect()
    }

    #[test]
    fn failover_and_size_errors_are_told_apart() {
        let reply = doc! {
            "ok": 1, "n": 0,
            "writeErrors": [
                { "index": 0, "code": 10107, "errmsg": "not primary" },
                { "index": 1, "code": 11602, "errmsg": "operation was interrupted" },
                { "index": 2, "code": 189, "errmsg": "primary stepped down" },
                { "index": 3, "code": 10334, "errmsg": "BSONObj size: 17000000 is invalid" },
                { "index": 4, "code": 17419, "errmsg": "Resulting document after update is larger than 16777216" },
                { "index": 5, "code": 121, "errmsg": "document failed validation" },
            ],
        };
        let got = outcomes(&reply, &keys(6));
        for o in &got[..3] {
            assert!(
                matches!(o, Err(CasError::Store(StoreError::Unavailable(_)))),
                "{o:?}"
            );
        }
        for (i, o) in got[3..5].iter().enumerate() {
            assert!(
                matches!(o, Err(CasError::Store(StoreError::TooLarge { key, .. })) if *key == format!("k{}", i + 3)),
                "{o:?}"
            );
        }
        assert!(matches!(
            &got[5],
            Err(CasError::Store(StoreError::Backend(_)))
        ));
    }
}
