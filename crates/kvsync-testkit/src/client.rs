use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// A small HTTP client for one node's API.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// A pair as the API returns it (without the conflicts, which each node records for
/// itself: see [`Client::conflicts`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pair {
    pub key: String,
    pub values: Vec<String>,
    #[serde(default)]
    pub elements: Vec<Element>,
    pub version: String,
    /// The entity tag (what `If-Match` takes): the version and a digest of the values.
    #[serde(default)]
    pub etag: String,
    pub updated_at: String,
    pub origin: String,
}

/// One value of a pair, with the id that element-level writes name it by.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Element {
    pub id: String,
    pub value: String,
}

impl Pair {
    /// The id of the first value equal to `value`.
    pub fn id_of(&self, value: &str) -> Option<&str> {
        self.elements
            .iter()
            .find(|e| e.value == value)
            .map(|e| e.id.as_str())
    }
}

fn path_key(key: &str) -> String {
    // Percent-encode everything but unreserved characters.
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// Waits until this node holds `key` with exactly `values` (None: absent).
    pub async fn wait_for_values(
        &self,
        key: &str,
        values: Option<&[&str]>,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let want: Option<Vec<String>> = values.map(|v| v.iter().map(|s| s.to_string()).collect());
        let what = format!("{} to hold {key:?} = {want:?}", self.base());
        crate::wait_until(timeout, &what, || async {
            let got = self.get(key).await.ok().map(|p| p.map(|p| p.values));
            got.as_ref() == Some(&want)
        })
        .await
    }

    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("HTTP client"),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pair_url(&self, key: &str) -> String {
        self.url(&format!("/api/pairs/{}", path_key(key)))
    }

    /// A request builder with the token (if any) attached.
    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn pair_from(resp: reqwest::Response) -> Result<Pair> {
        let status = resp.status();
        if !status.is_success() {
            bail!("HTTP {status}: {}", resp.text().await.unwrap_or_default());
        }
        Ok(resp.json().await?)
    }

    pub async fn put(&self, key: &str, values: &[&str]) -> Result<Pair> {
        let resp = self
            .request(reqwest::Method::PUT, &self.pair_url(key))
            .json(&json!({ "values": values }))
            .send()
            .await?;
        Self::pair_from(resp).await
    }

    pub async fn append(&self, key: &str, value: &str) -> Result<Pair> {
        let resp = self
            .request(
                reqwest::Method::POST,
                &format!("{}/values", self.pair_url(key)),
            )
            .json(&json!({ "value": value }))
            .send()
            .await?;
        Self::pair_from(resp).await
    }

    /// Changes the value with id `id` in place.
    pub async fn edit(&self, key: &str, id: &str, value: &str) -> Result<Pair> {
        let resp = self
            .request(reqwest::Method::PUT, &self.value_url(key, id))
            .json(&json!({ "value": value }))
            .send()
            .await?;
        Self::pair_from(resp).await
    }

    /// Removes the value with id `id`; the pair stays.
    pub async fn remove_value(&self, key: &str, id: &str) -> Result<Pair> {
        let resp = self
            .request(reqwest::Method::DELETE, &self.value_url(key, id))
            .send()
            .await?;
        Self::pair_from(resp).await
    }

    pub fn value_url(&self, key: &str, id: &str) -> String {
        format!("{}/values/{}", self.pair_url(key), path_key(id))
    }

    /// The conflicts this node recorded for `key`, oldest first.
    pub async fn conflicts(&self, key: &str) -> Result<Vec<Value>> {
        let v: Value = self
            .request(
                reqwest::Method::GET,
                &format!("{}/conflicts", self.pair_url(key)),
            )
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["conflicts"].as_array().cloned().unwrap_or_default())
    }

    /// `Ok(None)` when the pair is absent.
    pub async fn get(&self, key: &str) -> Result<Option<Pair>> {
        let resp = self
            .request(reqwest::Method::GET, &self.pair_url(key))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::pair_from(resp).await.map(Some)
    }

    /// Returns whether a pair was deleted (false: it was absent).
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let resp = self
            .request(reqwest::Method::DELETE, &self.pair_url(key))
            .send()
            .await?;
        match resp.status().as_u16() {
            204 => Ok(true),
            404 => Ok(false),
            s => bail!("HTTP {s}: {}", resp.text().await.unwrap_or_default()),
        }
    }

    pub async fn clear(&self) -> Result<u64> {
        let resp = self
            .request(reqwest::Method::DELETE, &self.url("/api/pairs"))
            .send()
            .await?
            .error_for_status()?;
        // The answer streams while the clear runs, so a failure part-way shows in the
        // body, after a 200.
        let v: Value = resp.json().await?;
        if let Some(error) = v.get("error") {
            bail!(
                "clear failed after {} deletes: {error} {}",
                v["deleted"],
                v["detail"]
            );
        }
        v["deleted"].as_u64().context("deleted count")
    }

    /// `POST /api/import` of `ndjson` (export lines); fails unless every line merged.
    pub async fn import(&self, ndjson: String) -> Result<Value> {
        let resp = self
            .request(reqwest::Method::POST, &self.url("/api/import"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(ndjson)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "import answered {status}: {body}");
        Ok(body)
    }

    /// Every live pair, following pagination.
    pub async fn list_all(&self) -> Result<Vec<Pair>> {
        #[derive(Deserialize)]
        struct Page {
            pairs: Vec<Pair>,
            next: Option<String>,
        }
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut req = self
                .request(reqwest::Method::GET, &self.url("/api/pairs"))
                .query(&[("limit", "1000")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a)]);
            }
            let page: Page = req.send().await?.error_for_status()?.json().await?;
            out.extend(page.pairs);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// The keys of every live pair, in the API's (byte) order.
    pub async fn keys(&self) -> Result<Vec<String>> {
        Ok(self.list_all().await?.into_iter().map(|p| p.key).collect())
    }

    /// `(count, digest)` over everything the node holds, tombstones included.
    pub async fn digest(&self) -> Result<(u64, String)> {
        let v: Value = self
            .request(reqwest::Method::GET, &self.url("/api/digest"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok((
            v["count"].as_u64().context("count")?,
            v["digest"].as_str().context("digest")?.to_owned(),
        ))
    }

    /// The JSON body of `GET path` (path and query), whatever its status.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        Ok(self
            .request(reqwest::Method::GET, &self.url(path))
            .send()
            .await?
            .json()
            .await?)
    }

    pub async fn node_info(&self) -> Result<Value> {
        Ok(self
            .request(reqwest::Method::GET, &self.url("/api/node"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The value of one counter in `/api/node`.
    pub async fn counter(&self, name: &str) -> Result<u64> {
        let info = self.node_info().await?;
        info["counters"][name]
            .as_u64()
            .with_context(|| format!("counter {name} in {info}"))
    }

    /// How many series `/metrics` shows (sample lines, each label set counted once).
    pub async fn series_count(&self) -> Result<usize> {
        Ok(self
            .metrics()
            .await?
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count())
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .request(reqwest::Method::GET, &self.url("/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// One sample of `/metrics`, named as the exposition shows it, labels included
    /// (`kvsync_events_rejected_total{reason="malformed"}`); `None` if absent.
    pub async fn metric(&self, series: &str) -> Result<Option<f64>> {
        let text = self.metrics().await?;
        text.lines()
            .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| {
                value
                    .trim()
                    .parse()
                    .with_context(|| format!("{series} = {value:?}"))
            })
            .next()
            .transpose()
    }

    pub async fn ready(&self) -> bool {
        matches!(
            self.http.get(self.url("/readyz")).send().await,
            Ok(r) if r.status().is_success()
        )
    }
}
