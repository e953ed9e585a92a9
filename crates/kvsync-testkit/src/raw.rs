//! HTTP/1.1 by hand over a fresh TCP connection, for requests no HTTP client will build
//! (made-up methods, raw header bytes) and for holding connections open.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A response as read off the wire: the status, the head (status line and headers) and
/// the body (as much as `Content-Length` announced; empty when it announced none, as for
/// an event stream).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// `http://127.0.0.1:port` (or `127.0.0.1:port`) as a socket address string.
fn addr_of(base: &str) -> &str {
    base.trim_start_matches("http://").trim_end_matches('/')
}

/// Connects to `base` (a node URL).
pub async fn connect(base: &str) -> Result<TcpStream> {
    Ok(TcpStream::connect(addr_of(base)).await?)
}

/// Sends `request` (complete, head and body) on `stream` and reads one response, all
/// within `timeout`. The connection stays usable if the server kept it open.
pub async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    timeout: Duration,
) -> Result<RawResponse> {
    tokio::time::timeout(timeout, async {
        // The server may answer and close before it has read everything.
        let _ = stream.write_all(request).await;
        read_response(stream, request.starts_with(b"HEAD ")).await
    })
    .await
    .context("no response in time")?
}

/// One request over a fresh connection.
pub async fn request(base: &str, request: &[u8], timeout: Duration) -> Result<RawResponse> {
    let mut stream = tokio::time::timeout(timeout, connect(base))
        .await
        .context("connect timed out")??;
    exchange(&mut stream, request, timeout).await
}

async fn read_response(stream: &mut TcpStream, head_only: bool) -> Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line of {head:?}"))?;
    let mut response = RawResponse {
        status,
        head,
        body: buf[head_end..].to_vec(),
    };
    let bodiless = head_only || matches!(status, 100..=199 | 204 | 304);
    let length: usize = match response.header("content-length") {
        Some(l) if !bodiless => l.parse().context("content-length")?,
        _ => {
            response.body.clear();
            return Ok(response);
        }
    };
    while response.body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("body cut short: {} of {length} bytes", response.body.len());
        }
        response.body.extend_from_slice(&chunk[..n]);
    }
    response.body.truncate(length);
    Ok(response)
}

/// A request's bytes: `method target HTTP/1.1`, `Host`, the given headers, and the body
/// with its `Content-Length` if there is one.
pub fn build(method: &str, target: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: kvsync\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if let Some(b) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}
