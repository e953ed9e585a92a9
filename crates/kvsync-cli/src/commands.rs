//! What each subcommand does with the API and prints.

use std::io::{IsTerminal, Write};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    api::{exit, Api, Error, Written},
    input, watch, Command,
};

/// Standard output: human lines, or JSON with `--json`.
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn line(&self, line: impl std::fmt::Display) -> Result<(), Error> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        // Line by line, so `watch` output reaches a pipe as it happens.
        stdout.flush()?;
        Ok(())
    }

    pub fn json(&self, value: &impl Serialize) -> Result<(), Error> {
        self.line(serde_json::to_string(value).expect("JSON serializes"))
    }
}

pub async fn run(api: &Api, out: &Out, command: Command) -> Result<u8, Error> {
    match command {
        Command::Get { key } => {
            let pair = api.get(&key).await?;
            if out.json {
                out.json(&pair)?;
            } else {
                for v in &pair.values {
                    out.line(v)?;
                }
            }
        }
        Command::Put {
            key,
            values,
            file,
            json_values,
            if_match,
            wait,
        } => {
            let values = input::values(values, file.as_deref(), json_values)?;
            let w = api.put(&key, &values, if_match.as_deref(), &wait).await?;
            return written(out, w);
        }
        Command::Append {
            key,
            value,
            if_match,
            wait,
        } => {
            let w = api.append(&key, &value, if_match.as_deref(), &wait).await?;
            return written(out, w);
        }
        Command::Rm {
            key,
            if_match,
            wait,
        } => {
            let replication = api.delete(&key, if_match.as_deref(), &wait).await?;
            if out.json {
                let mut doc = json!({ "key": key, "deleted": true });
                if let Some(r) = &replication {
                    doc["replication"] = r.clone();
                }
                out.json(&doc)?;
            } else {
                out.line(format_args!("deleted {key}"))?;
            }
            return replicated(out, replication.as_ref());
        }
        Command::Export {
            prefix,
            tombstones,
            output,
        } => export(api, out, &prefix, tombstones, output.as_deref()).await?,
        Command::Import { file } => import(api, out, &file).await?,
        Command::Cluster => {
            let view = api.cluster().await?;
            if out.json {
                out.json(&view)?;
            } else {
                cluster(out, &view)?;
            }
        }
        Command::Ls {
            prefix,
            limit,
            page_size,
        } => ls(api, out, &prefix, limit, page_size.into()).await?,
        Command::Watch { prefix } => watch::run(api, out, &prefix).await?,
        Command::Clear { yes } => {
            if !yes && !confirmed(api)? {
                return Err(Error::Usage("not confirmed; nothing was deleted".into()));
            }
            clear(api, out).await?;
        }
        Command::Node => {
            let node = api.node().await?;
            if out.json {
                out.json(&node)?;
            } else {
                out.line(serde_json::to_string_pretty(&node).expect("JSON serializes"))?;
            }
        }
        Command::Ready => {
            let (ready, report) = api.ready().await?;
            if out.json {
                out.json(&report)?;
            } else {
                let node = report["node"].as_str().unwrap_or("?");
                if ready {
                    out.line(format_args!("{node} is ready"))?;
                } else {
                    out.line(format_args!("{node} is not ready:"))?;
                    for r in report["reasons"].as_array().into_iter().flatten() {
                        out.line(format_args!("  {}", r.as_str().unwrap_or_default()))?;
                    }
                }
            }
            if !ready {
                return Ok(exit::NOT_FOUND);
            }
        }
    }
    Ok(exit::OK)
}

fn written(out: &Out, w: Written) -> Result<u8, Error> {
    if out.json {
        let mut doc = serde_json::to_value(&w.pair).expect("a pair serializes");
        if let Some(r) = &w.replication {
            doc["replication"] = r.clone();
        }
        out.json(&doc)?;
    } else {
        let what = if w.created { "created" } else { "updated" };
        out.line(format_args!(
            "{what} {} (version {})",
            w.pair.key, w.pair.version
        ))?;
    }
    replicated(out, w.replication.as_ref())
}

/// Says how far a write that waited got, and picks the exit code: 6 when not enough
/// peers confirmed it in time.
fn replicated(out: &Out, replication: Option<&serde_json::Value>) -> Result<u8, Error> {
    let Some(r) = replication else {
        return Ok(exit::OK);
    };
    let names = |field: &str| -> String {
        let list: Vec<&str> = r[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    if r["timed_out"] == true {
        eprintln!(
            "kvsync: written, but not confirmed in time by: {} (confirmed by: {})",
            names("pending"),
            names("confirmed")
        );
        return Ok(exit::NOT_REPLICATED);
    }
    if !out.json {
        out.line(format_args!("replicated to: {}", names("confirmed")))?;
    }
    Ok(exit::OK)
}

/// Most lines per import request (the node's limit), and about the most bytes.
const IMPORT_LINES: usize = 1000;
const IMPORT_BYTES: usize = 3 * 1024 * 1024;

async fn export(
    api: &Api,
    out: &Out,
    prefix: &str,
    tombstones: bool,
    output: Option<&std::path::Path>,
) -> Result<(), Error> {
    use std::io::Write;
    let mut response = api.export(prefix, tombstones).await?;
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| Error::Input {
                what: format!("creating {}", path.display()),
                source,
            })?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let (mut pairs, mut partial) = (0u64, String::new());
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Error::BadAnswer(format!("the export broke off: {e}")))?
    {
        partial.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = partial.find('\n') {
            let line: String = partial.drain(..=end).collect();
            // The node ends a failed export with an error line instead of a pair.
            if line.starts_with("{\"error\"") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                return Err(Error::BadAnswer(format!(
                    "the export failed after {pairs} pairs: {}",
                    v["detail"].as_str().unwrap_or("unknown error")
                )));
            }
            sink.write_all(line.as_bytes())?;
            pairs += 1;
        }
    }
    sink.flush()?;
    if output.is_some() {
        if out.json {
            out.json(&json!({ "exported": pairs }))?;
        } else {
            out.line(format_args!("exported {pairs} pairs"))?;
        }
    }
    Ok(())
}

/// Sends `batch` (JSON lines) with `send`; when the node (or a gateway in front of it)
/// answers that it was too large or too slow (413, 504), sends each half instead, down
/// to one line. Importing a line twice changes nothing, so a timed-out request that was
/// applied after all is safe to send again.
async fn send_halving<F, Fut>(batch: &str, send: &F) -> Result<(u64, u64), Error>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, u64), Error>>,
{
    let mut pending = vec![batch.to_owned()];
    let (mut changed, mut unchanged) = (0, 0);
    while let Some(part) = pending.pop() {
        match send(part.clone()).await {
            Ok((c, u)) => {
                changed += c;
                unchanged += u;
            }
            Err(Error::Api(a))
                if matches!(a.status.as_u16(), 413 | 504) && part.lines().count() > 1 =>
            {
                let lines: Vec<&str> = part.lines().collect();
                let (head, tail) = lines.split_at(lines.len() / 2);
                // Last in, first out: the head goes first, keeping the file's order.
                pending.push(tail.iter().map(|l| format!("{l}\n")).collect());
                pending.push(head.iter().map(|l| format!("{l}\n")).collect());
            }
            Err(e) => return Err(e),
        }
    }
    Ok((changed, unchanged))
}

async fn import(api: &Api, out: &Out, file: &std::path::Path) -> Result<(), Error> {
    use std::io::BufRead;
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(file).map_err(
            |source| Error::Input {
                what: format!("reading {}", file.display()),
                source,
            },
        )?))
    };
    let (mut changed, mut unchanged, mut sent) = (0u64, 0u64, 0usize);
    let (mut batch, mut lines) = (String::new(), 0usize);
    let mut all = reader.lines();
    loop {
        let next = all.next().transpose().map_err(|source| Error::Input {
            what: format!("reading {}", file.display()),
            source,
        })?;
        let last = next.is_none();
        if let Some(line) = next.filter(|l| !l.trim().is_empty()) {
            batch.push_str(&line);
            batch.push('\n');
            lines += 1;
        }
        if lines > 0 && (last || lines == IMPORT_LINES || batch.len() >= IMPORT_BYTES) {
            let first = sent + 1;
            let (c, u) = send_halving(
                &batch,
                &|part: String| async move { api.import(&part).await },
            )
            .await
            .map_err(|e| match e {
                Error::Api(mut a) => {
                    a.detail = format!("{} (lines {first} to {})", a.detail, sent + lines);
                    Error::Api(a)
                }
                other => other,
            })?;
            changed += c;
            unchanged += u;
            sent += lines;
            batch.clear();
            lines = 0;
        }
        if last {
            break;
        }
    }
    if out.json {
        out.json(&json!({ "pairs": sent, "changed": changed, "unchanged": unchanged }))?;
    } else {
        out.line(format_args!(
            "imported {sent} pairs: {changed} changed, {unchanged} already held"
        ))?;
    }
    Ok(())
}

/// A member per line: id, status, how far behind (the most over the origins), notes.
fn cluster(out: &Out, view: &serde_json::Value) -> Result<(), Error> {
    let lags = view["lag"].as_array().cloned().unwrap_or_default();
    out.line(format_args!(
        "{:<20} {:<6} {:>10} {:>12} {:>12}  notes",
        "NODE", "STATUS", "HEARD", "BEHIND", "BEHIND (ms)"
    ))?;
    for m in view["members"].as_array().into_iter().flatten() {
        let node = m["node"].as_str().unwrap_or("?");
        let behind = |field: &str| {
            lags.iter()
                .filter(|l| l["applier"] == node)
                .filter_map(|l| l[field].as_u64())
                .max()
                .unwrap_or(0)
        };
        let mut notes = Vec::new();
        if m["self"] == true {
            notes.push("this node".to_owned());
        }
        if m["joining"] == true {
            notes.push("joining from state".to_owned());
        }
        if let Some(addr) = m["addr"].as_str() {
            notes.push(addr.to_owned());
        }
        out.line(format_args!(
            "{:<20} {:<6} {:>8}ms {:>12} {:>12}  {}",
            node,
            m["status"].as_str().unwrap_or("?"),
            m["last_heard_ms_ago"].as_u64().unwrap_or(0),
            behind("events"),
            behind("ms"),
            notes.join(", ")
        ))?;
    }
    Ok(())
}

/// Follows the `next` cursor page by page, so any number of pairs is listed in
/// bounded memory.
async fn ls(
    api: &Api,
    out: &Out,
    prefix: &str,
    limit: Option<usize>,
    page_size: usize,
) -> Result<(), Error> {
    let mut left = limit.unwrap_or(usize::MAX);
    let mut after: Option<String> = None;
    while left > 0 {
        let page = api
            .list(prefix, after.as_deref(), page_size.min(left))
            .await?;
        for pair in page.pairs.iter().take(left) {
            if out.json {
                out.json(pair)?;
            } else {
                out.line(&pair.key)?;
            }
        }
        left = left.saturating_sub(page.pairs.len());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(())
}

/// Asks on standard error for "yes" typed on standard input (which need not be a
/// terminal: `echo yes | kvsync clear` works too).
fn confirmed(api: &Api) -> Result<bool, Error> {
    eprint!(
        "This deletes every pair on {} and, through replication, on every node.\n\
         Type yes to go on: ",
        api.base()
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|source| Error::Input {
            what: "reading the confirmation".into(),
            source,
        })?;
    if !std::io::stdin().is_terminal() {
        // What was read was not echoed: end the prompt's line.
        eprintln!();
    }
    Ok(answer.trim() == "yes")
}

#[derive(Serialize, Deserialize)]
struct ClearAnswer {
    progress: Vec<u64>,
    deleted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

async fn clear(api: &Api, out: &Out) -> Result<(), Error> {
    let response = api.clear().await?;
    let show = std::io::stderr().is_terminal();
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        body.extend_from_slice(&chunk.map_err(|e| api.stream_error(e))?);
        if show {
            if let Some(n) = progress_so_far(&String::from_utf8_lossy(&body)) {
                eprint!("\rdeleted {n} pairs so far");
            }
        }
    }
    if show {
        eprint!("\r\x1b[K");
    }
    let answer: ClearAnswer = serde_json::from_slice(&body).map_err(|e| {
        Error::BadAnswer(format!(
            "clear: {e}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ))
    })?;
    if let Some(code) = answer.error {
        return Err(Error::ClearFailed {
            deleted: answer.deleted,
            code,
            detail: answer.detail.unwrap_or_default(),
        });
    }
    if out.json {
        out.json(&answer)
    } else {
        let s = if answer.deleted == 1 { "" } else { "s" };
        out.line(format_args!("deleted {} pair{s}", answer.deleted))
    }
}

/// The latest running total in a partly received `{"progress":[500,1000,...` (a
/// number at the end may still be cut short, so only one followed by `,` or `]`).
fn progress_so_far(body: &str) -> Option<u64> {
    let list = body.split_once('[')?.1;
    let (list, closed) = match list.split_once(']') {
        Some((l, _)) => (l, true),
        None => (list, false),
    };
    let mut items: Vec<&str> = list.split(',').collect();
    if !closed {
        items.pop();
    }
    items.last()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::{progress_so_far, send_halving};
    use crate::api::{ApiError, Error};

    /// A node behind a gateway that times out (504) on requests over 3 lines: the
    /// import halves until each request goes through, sends every line once, in order,
    /// and adds up the answers.
    #[tokio::test]
    async fn an_import_too_slow_or_too_large_is_sent_again_in_halves() {
        for status in [504u16, 413] {
            let seen: Mutex<Vec<String>> = Mutex::default();
            let send = |part: String| {
                let seen = &seen;
                async move {
                    let n = part.lines().count() as u64;
                    if n > 3 {
                        return Err(Error::Api(Box::new(ApiError {
                            key: None,
                            status: reqwest::StatusCode::from_u16(status).unwrap(),
                            code: "timeout".into(),
                            detail: "too slow".into(),
                            current: None,
                        })));
                    }
                    seen.lock().unwrap().extend(part.lines().map(str::to_owned));
                    Ok((n, 0))
                }
            };
            let batch: String = (1..=10).map(|i| format!("line{i}\n")).collect();
            assert_eq!(send_halving(&batch, &send).await.unwrap(), (10, 0));
            let expected: Vec<String> = (1..=10).map(|i| format!("line{i}")).collect();
            assert_eq!(*seen.lock().unwrap(), expected, "{status}");
        }
    }

    /// Another error, or a single line still refused, ends the import with it.
    #[tokio::test]
    async fn other_errors_and_a_single_refused_line_are_not_retried() {
        let calls = Mutex::new(0);
        let send = |_part: String| {
            let calls = &calls;
            async move {
                *calls.lock().unwrap() += 1;
                Err::<(u64, u64), _>(Error::Api(Box::new(ApiError {
                    key: None,
                    status: reqwest::StatusCode::GATEWAY_TIMEOUT,
                    code: "timeout".into(),
                    detail: "too slow".into(),
                    current: None,
                })))
            }
        };
        assert!(send_halving("one\ntwo\n", &send).await.is_err());
        // Two lines, then the first half (one line) fails for good.
        assert_eq!(*calls.lock().unwrap(), 2);
    }

    #[test]
    fn progress_reads_only_whole_numbers() {
        assert_eq!(progress_so_far(r#"{"progress":["#), None);
        assert_eq!(progress_so_far(r#"{"progress":[50"#), None);
        assert_eq!(progress_so_far(r#"{"progress":[500,10"#), Some(500));
        assert_eq!(
            progress_so_far(r#"{"progress":[500,1000],"del"#),
            Some(1000)
        );
        assert_eq!(progress_so_far(r#"{"progress":[],"deleted":0}"#), None);
    }
}
