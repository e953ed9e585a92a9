//! The report: Markdown for people, JSON for machines, an SVG chart, and a description of
//! the machine it was measured on.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Result;
use serde::Serialize;

use crate::{
    floor::FloorResult,
    join::JoinResult,
    latency::LatencyResult,
    stats::{round3, Samples, Stats},
    target::Rss,
    throughput::ThroughputResult,
    wait::WaitResult,
};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    pub kernel: String,
    pub rustc: String,
    pub tansu: String,
    pub nx_27017: String,
    pub librdkafka: String,
    pub kvsync_commit: String,
}

/// A short tag for the results directory: CPU family and core count.
pub fn machine_tag(m: &Machine) -> String {
    let words: Vec<String> = m
        .cpu
        .replace("(R)", "")
        .replace("(TM)", "")
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .filter(|w| {
            !matches!(
                *w,
                "CPU" | "Processor" | "Core" | "with" | "Radeon" | "Graphics"
            )
        })
        .take(3)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let cpu = if words.is_empty() {
        "cpu".into()
    } else {
        words.join("-")
    };
    format!("{cpu}-{}c", m.cores)
}

fn command_line(program: &std::ffi::OsStr, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned()
    })
}

pub fn describe_machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| std::env::consts::OS.into());
    // The kernel's version only, without the build's local suffix.
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().split('-').next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let unknown = || "unknown".to_owned();
    let tools = kvsync_testkit::Tools::locate().ok();
    let tansu = tools
        .as_ref()
        .and_then(|t| command_line(t.tansu.as_os_str(), &["--version"]))
        .unwrap_or_else(unknown);
    let nx_27017 = tools
        .as_ref()
        .and_then(|t| t.nx_27017.parent().map(|d| d.join("python")))
        .and_then(|py| {
            command_line(
                py.as_os_str(),
                &[
                    "-c",
                    "import importlib.metadata as m; print(m.version('nx-27017'))",
                ],
            )
        })
        .map(|v| format!("nx-27017 {v}"))
        .unwrap_or_else(unknown);
    Machine {
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        os,
        kernel,
        rustc: command_line("rustc".as_ref(), &["--version"]).unwrap_or_else(unknown),
        tansu,
        nx_27017,
        librdkafka: rdkafka::util::get_rdkafka_version().1,
        kvsync_commit: command_line("git".as_ref(), &["rev-parse", "--short", "HEAD"])
            .unwrap_or_else(unknown),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    /// Worst (largest) payload p50 minus the floor's p50.
    pub p50_gap_ms: f64,
    pub p50_met: bool,
    pub p99_gap_ms: f64,
    pub p99_met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub floor: Option<FloorResult>,
    pub latency: Option<LatencyResult>,
    pub throughput: Option<ThroughputResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinResult>,
    /// Node memory right after the cluster was ready.
    pub rss_start: Option<Rss>,
    pub targets: Option<Targets>,
}

impl Report {
    pub fn compute_targets(&mut self) {
        let (Some(f), Some(l)) = (&self.floor, &self.latency) else {
            return;
        };
        let measured: Vec<_> = l
            .payloads
            .iter()
            .filter(|p| p.replication.count > 0)
            .collect();
        if measured.is_empty() {
            return;
        }
        let p50 = measured
            .iter()
            .map(|p| p.replication.p50_ms)
            .fold(f64::MIN, f64::max);
        let p99 = measured
            .iter()
            .map(|p| p.replication.p99_ms)
            .fold(f64::MIN, f64::max);
        let p50_gap_ms = round3(p50 - f.floor_p50_ms);
        let p99_gap_ms = round3(p99 - f.floor_p99_ms);
        self.targets = Some(Targets {
            p50_gap_ms,
            p50_met: p50_gap_ms <= 2.0,
            p99_gap_ms,
            p99_met: p99_gap_ms <= 5.0,
        });
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        if let Some(svg) = self.svg() {
            std::fs::write(dir.join("latency.svg"), svg)?;
        }
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "# kvsync benchmark, {}\n", &self.generated_at);
        let _ = writeln!(
            s,
            "Machine: {}, {} cores, {} GiB memory, {} (kernel {}); {}; {}; {}; librdkafka {}; kvsync {}.\n",
            m.cpu, m.cores, m.memory_gib, m.os, m.kernel, m.rustc, m.tansu, m.nx_27017,
            m.librdkafka, m.kvsync_commit
        );
        let _ = writeln!(
            s,
            "Settings: `{}`\n",
            serde_json::to_string(&self.settings).unwrap_or_default()
        );
        if let Some(l) = &self.latency {
            self.latency_section(&mut s, l);
        }
        if let Some(f) = &self.floor {
            floor_section(&mut s, f);
        }
        if let (Some(l), Some(f)) = (&self.latency, &self.floor) {
            breakdown_section(&mut s, l, f);
        }
        if let Some(t) = &self.throughput {
            throughput_section(&mut s, t, self.rss_start);
        }
        if let Some(w) = &self.wait {
            w.markdown(&mut s);
        }
        if let Some(j) = &self.join {
            j.markdown(&mut s);
        }
        s
    }

    fn latency_section(&self, s: &mut String, l: &LatencyResult) {
        let f = self.floor.as_ref();
        let _ = writeln!(
            s,
            "## Replication delay: a PUT on node 1 until its change event arrives on node 2's `/api/events`\n"
        );
        let _ = writeln!(
            s,
            "{} writes/s, one clock (the benchmark's): t0 just before the PUT, t1 when the event's bytes arrive. \
             Milliseconds. The original project measured about 13 ms on average.\n",
            l.rate_per_s
        );
        let mut header = String::from("| |");
        let mut rule = String::from("|---|");
        for p in &l.payloads {
            let _ = write!(header, " {} |", p.label);
            rule.push_str("--:|");
        }
        if f.is_some() {
            header.push_str(" floor (Kafka + one write) |");
            rule.push_str("--:|");
        }
        let _ = writeln!(s, "{header}\n{rule}");
        let row = |s: &mut String,
                   name: &str,
                   cell: &dyn Fn(&crate::latency::PayloadResult) -> String,
                   floor: Option<String>| {
            let _ = write!(s, "| {name} |");
            for p in &l.payloads {
                let _ = write!(s, " {} |", cell(p));
            }
            if f.is_some() {
                let _ = write!(s, " {} |", floor.unwrap_or_else(|| "".into()));
            }
            s.push('\n');
        };
        let fl = |g: fn(&FloorResult) -> f64| f.map(|f| fmt_ms(g(f)));
        row(s, "writes", &|p| p.writes.to_string(), None);
        row(s, "errors", &|p| p.errors.to_string(), None);
        row(
            s,
            "mean",
            &|p| fmt_ms(p.replication.mean_ms),
            fl(|f| f.floor_mean_ms),
        );
        row(
            s,
            "p50",
            &|p| fmt_ms(p.replication.p50_ms),
            fl(|f| f.floor_p50_ms),
        );
        row(
            s,
            "p90",
            &|p| fmt_ms(p.replication.p90_ms),
            fl(|f| f.floor_p90_ms),
        );
        row(
            s,
            "p99",
            &|p| fmt_ms(p.replication.p99_ms),
            fl(|f| f.floor_p99_ms),
        );
        row(s, "max", &|p| fmt_ms(p.replication.max_ms), None);
        if let Some(f) = f {
            row(
                s,
                "p50 − floor p50",
                &|p| fmt_ms(p.replication.p50_ms - f.floor_p50_ms),
                None,
            );
            row(
                s,
                "p99 − floor p99",
                &|p| fmt_ms(p.replication.p99_ms - f.floor_p99_ms),
                None,
            );
            row(
                s,
                "p50 ÷ floor p50",
                &|p| ratio(p.replication.p50_ms, f.floor_p50_ms),
                None,
            );
            row(
                s,
                "p99 ÷ floor p99",
                &|p| ratio(p.replication.p99_ms, f.floor_p99_ms),
                None,
            );
        }
        row(
            s,
            "PUT acknowledged on node 1, p50",
            &|p| fmt_ms(p.write_ack.p50_ms),
            None,
        );
        s.push('\n');
        if let Some(t) = &self.targets {
            let _ = writeln!(
                s,
                "Targets at {} writes/s: p50 within 2 ms of the floor's p50: **{}** (worst gap {} ms); \
                 p99 within 5 ms of the floor's p99: **{}** (worst gap {} ms).\n",
                l.rate_per_s,
                if t.p50_met { "met" } else { "not met" },
                fmt_ms(t.p50_gap_ms),
                if t.p99_met { "met" } else { "not met" },
                fmt_ms(t.p99_gap_ms),
            );
        }
        if let Some(n) = &l.node_lag {
            let _ = writeln!(
                s,
                "Node 2's own `kvsync_replication_lag_seconds` over these writes (version stamp on node 1, before its \
                 database write, to the apply on node 2; whole milliseconds): mean {} ms over {} applies, median in the \
                 bucket ≤ {} ms, p99 in the bucket ≤ {} ms.\n",
                fmt_ms(n.mean_ms), n.count, fmt_ms(n.p50_bucket_le_ms), fmt_ms(n.p99_bucket_le_ms)
            );
        }
        if l.feed_resyncs > 0 {
            let _ = writeln!(s, "The change feed reported {} resyncs.\n", l.feed_resyncs);
        }
        for p in &l.payloads {
            for e in &p.error_samples {
                let _ = writeln!(s, "- error ({}): {e}", p.label);
            }
        }
    }

    /// Cumulative distribution of the replication delay per payload, beside the floor.
    pub fn svg(&self) -> Option<String> {
        let l = self.latency.as_ref()?;
        let mut series: Vec<(String, &[f64], &str, &str)> = Vec::new();
        const COLORS: [&str; 6] = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
        ];
        for (i, p) in l.payloads.iter().enumerate() {
            if !p.quantiles.is_empty() {
                series.push((
                    format!("kvsync {}", p.label),
                    &p.quantiles,
                    COLORS[i % COLORS.len()],
                    "",
                ));
            }
        }
        if let Some(f) = &self.floor {
            if !f.quantiles.is_empty() {
                series.push((
                    "floor: Kafka + one write".into(),
                    &f.quantiles,
                    "#000",
                    "6 4",
                ));
                series.push((
                    "Kafka produce → consume".into(),
                    &f.kafka_quantiles,
                    "#777",
                    "2 3",
                ));
            }
        }
        if series.is_empty() {
            return None;
        }
        let p99max = series.iter().map(|(_, q, _, _)| q[99]).fold(0.0, f64::max);
        let xmax = nice_ceil(p99max * 1.15);
        let (w, h) = (980.0, 460.0);
        let (left, right, top, bottom) = (60.0, 340.0, 40.0, 50.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let x = |v: f64| left + (v / xmax).min(1.02) * pw;
        let y = |q: f64| top + (1.0 - q) * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r##"<rect width="{w}" height="{h}" fill="#fff"/>"##);
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="22" font-size="14" font-weight="bold">Replication delay, node 1 PUT → node 2 change event ({} writes/s): cumulative distribution</text>"#,
            l.rate_per_s
        );
        let _ = writeln!(
            s,
            r#"<clipPath id="plot"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath>"#
        );
        // Grid and axes.
        let step = xmax / 10.0;
        for i in 0..=10 {
            let v = step * i as f64;
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1}" stroke="#e5e5e5"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
                x(v),
                top + ph,
                top + ph + 16.0,
                trim_num(v)
            );
        }
        for q in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0] {
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#e5e5e5"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
                y(q),
                left + pw,
                left - 6.0,
                y(q) + 4.0,
                trim_num(q)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">milliseconds</text>"#,
            left + pw / 2.0,
            h - 12.0
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">fraction of writes arrived</text>"#,
            top + ph / 2.0
        );
        for (i, (name, q, color, dash)) in series.iter().enumerate() {
            let points: Vec<String> = q
                .iter()
                .enumerate()
                .map(|(k, v)| format!("{:.1},{:.1}", x(*v), y(k as f64 / 100.0)))
                .collect();
            let dash = if dash.is_empty() {
                String::new()
            } else {
                format!(r#" stroke-dasharray="{dash}""#)
            };
            let _ = writeln!(
                s,
                r#"<polyline clip-path="url(#plot)" fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" ")
            );
            let ly = top + 10.0 + 20.0 * i as f64;
            let lx = left + pw + 16.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>"#,
                lx + 24.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{} (p50 {}, p99 {})</text>"#,
                lx + 30.0,
                ly + 4.0,
                xml_escape(name),
                trim_num(q[50]),
                trim_num(q[99])
            );
        }
        s.push_str("</svg>\n");
        Some(s)
    }
}

fn floor_section(s: &mut String, f: &FloorResult) {
    let _ = writeln!(
        s,
        "## Floor: the broker and the database alone, with the node's client code and settings\n"
    );
    let _ = writeln!(
        s,
        "The cluster's broker with a fresh topic ({} partitions, fetch.wait.max.ms = {}); database writes on {} \
         (nx-27017 keeps one set of collections per server whatever the database name, so writing to node 2's \
         server would mix the floor's keys into node 2's pairs). Payloads {}. Milliseconds.\n",
        f.partitions, f.fetch_wait_ms, f.db_server, f.payload
    );
    let _ = writeln!(
        s,
        "| component | count | mean | p50 | p90 | p99 | max |\n|---|--:|--:|--:|--:|--:|--:|"
    );
    let line = |s: &mut String, name: &str, st: &Stats| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            st.count,
            fmt_ms(st.mean_ms),
            fmt_ms(st.p50_ms),
            fmt_ms(st.p90_ms),
            fmt_ms(st.p99_ms),
            fmt_ms(st.max_ms)
        );
    };
    line(
        s,
        "Kafka produce → consume (Publisher → Subscriber)",
        &f.kafka,
    );
    line(s, "publish acknowledged (acks=all)", &f.publish_ack);
    line(
        s,
        "one MongoDB write (`Store::apply_remote`, new key)",
        &f.db_write,
    );
    line(
        s,
        "local write of a new key (`Store::write_local`, one insert)",
        &f.db_local_write,
    );
    let _ = writeln!(
        s,
        "| **floor** = Kafka + one MongoDB write | | {} | {} | {} | {} | |\n",
        fmt_ms(f.floor_mean_ms),
        fmt_ms(f.floor_p50_ms),
        fmt_ms(f.floor_p90_ms),
        fmt_ms(f.floor_p99_ms)
    );
    if f.outbox_scan.count > 0 {
        let _ = writeln!(
            s,
            "Not part of the floor, but it shares the database: the node's relay scans for unpublished changes \
             (`Store::pending(512)` + `Store::count_pending()`) at start-up, while publications fail and every 10 \
             minutes as a sweep. With nothing pending, over {} documents, one scan takes p50 {} ms, max {} ms.\n",
            f.scan_documents,
            fmt_ms(f.outbox_scan.p50_ms),
            fmt_ms(f.outbox_scan.max_ms)
        );
    }
    if f.kafka_errors + f.db_errors > 0 {
        let _ = writeln!(
            s,
            "Floor errors: Kafka {}, MongoDB {}.\n",
            f.kafka_errors, f.db_errors
        );
    }
}

fn breakdown_section(s: &mut String, l: &LatencyResult, f: &FloorResult) {
    let mut all = Samples::default();
    let mut acks = Vec::new();
    for p in &l.payloads {
        all.extend(p.samples.clone());
        if p.write_ack.count > 0 {
            acks.push(p.write_ack.p50_ms);
        }
    }
    if all.is_empty() || acks.is_empty() {
        return;
    }
    acks.sort_by(f64::total_cmp);
    let ack = acks[acks.len() / 2];
    let ours = all.stats().p50_ms;
    let _ = writeln!(s, "## Where the time goes (medians, all payloads)\n");
    let _ = writeln!(s, "| step | ms |\n|---|--:|");
    let _ = writeln!(
        s,
        "| PUT acknowledged on node 1 (HTTP, local write with its outbox mark) | {} |",
        fmt_ms(ack)
    );
    let _ = writeln!(
        s,
        "| Kafka produce → consume (floor) | {} |",
        fmt_ms(f.kafka.p50_ms)
    );
    let _ = writeln!(
        s,
        "| one MongoDB write on node 2 (floor) | {} |",
        fmt_ms(f.db_write.p50_ms)
    );
    let sum = ack + f.kafka.p50_ms + f.db_write.p50_ms;
    let _ = writeln!(s, "| sum of the above | {} |", fmt_ms(sum));
    let _ = writeln!(s, "| measured replication delay | {} |", fmt_ms(ours));
    let _ = writeln!(
        s,
        "| remainder (relay hand-off, consumer and apply bookkeeping, change feed, overlap of the PUT's response with the publication) | {} |\n",
        fmt_ms(ours - sum)
    );
    let _ = writeln!(
        s,
        "The floor counts the broker and one database write; a replicated change also waits for its own local \
         write on node 1 (the outbox pattern publishes only a durable change), so the smallest possible \
         replication delay is about the floor plus that write ({} ms here).\n",
        fmt_ms(f.floor_p50_ms + f.db_local_write.p50_ms)
    );
}

fn throughput_section(s: &mut String, t: &ThroughputResult, rss_start: Option<Rss>) {
    let _ = writeln!(s, "## Throughput\n");
    let _ = writeln!(
        s,
        "{} concurrent writers on node 1, {}-byte values over {} keys. Write latency in milliseconds.\n",
        t.writers, t.value_bytes, t.keys
    );
    let _ = writeln!(
        s,
        "| seconds | acknowledged | writes/s | errors | p50 | p90 | p99 | max | node 2 converged after |\n|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    let w = &t.write_latency;
    let _ = writeln!(
        s,
        "| {:.1} | {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
        t.seconds,
        t.acknowledged,
        t.writes_per_s,
        t.errors,
        fmt_ms(w.p50_ms),
        fmt_ms(w.p90_ms),
        fmt_ms(w.p99_ms),
        fmt_ms(w.max_ms),
        match (t.converged_after_ms, t.digest_round_ms) {
            (Some(c), Some(r)) => format!("{} ms (one digest round: {} ms)", fmt_ms(c), fmt_ms(r)),
            _ => format!("no: {}", t.converge_error.clone().unwrap_or_default()),
        }
    );
    for e in &t.error_samples {
        let _ = writeln!(s, "- error: {e}");
    }
    if let Some(db) = t.db_alone_writes_per_s {
        let _ = writeln!(
            s,
            "The same {} writers inserting new keys (the document and outbox mark a local write stores, one driver call each, as any \
             client of the database makes them) directly on a dedicated nx-27017 (no HTTP, no node, no replication, no group commit): \
             **{:.0} writes/s**; kvsync reaches {:.2}× that.\n",
            t.writers,
            db,
            t.writes_per_s / db
        );
    }
    if !t.cpu.is_empty() {
        let _ = writeln!(s, "CPU used during the writes ({:.1} s):\n", t.seconds);
        let _ = writeln!(
            s,
            "| process | CPU seconds | share of the machine |\n|---|--:|--:|"
        );
        for c in &t.cpu {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {:.0} % |",
                c.process,
                c.cpu_seconds,
                c.share_of_machine * 100.0
            );
        }
        s.push('\n');
    }
    if let (Some(b), Some(a)) = (t.rss_before, t.rss_after) {
        let _ = writeln!(s, "## Node memory (VmRSS, MiB)\n");
        let _ = writeln!(s, "| when | node 1 | node 2 |\n|---|--:|--:|");
        let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
        if let Some(r) = rss_start {
            let _ = writeln!(s, "| cluster ready | {} | {} |", mib(r.a_kib), mib(r.b_kib));
        }
        let _ = writeln!(
            s,
            "| before the throughput run | {} | {} |",
            mib(b.a_kib),
            mib(b.b_kib)
        );
        if let Some(p) = t.rss_peak {
            let _ = writeln!(
                s,
                "| peak during it | {} | {} |",
                mib(p.a_kib),
                mib(p.b_kib)
            );
        }
        let _ = writeln!(
            s,
            "| after it ({} writes) and convergence | {} | {} |\n",
            t.acknowledged,
            mib(a.a_kib),
            mib(a.b_kib)
        );
        if t.rss_series.len() > 2 {
            let points: Vec<String> = t
                .rss_series
                .iter()
                .map(|r| format!("{}: {} / {}", r.writes, mib(r.a_kib), mib(r.b_kib)))
                .collect();
            let _ = writeln!(
                s,
                "During the run (writes issued: node 1 / node 2 MiB; the last after convergence): {}.\n",
                points.join(", ")
            );
        }
    }
}

pub fn fmt_ms(v: f64) -> String {
    if v.is_infinite() {
        "∞".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(nice_ceil(13.2), 20.0);
        assert_eq!(nice_ceil(0.7), 1.0);
        assert_eq!(nice_ceil(22.0), 25.0);
        assert_eq!(fmt_ms(1.23456), "1.23");
        assert_eq!(trim_num(0.5), "0.5");
        assert_eq!(trim_num(10.0), "10");
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        let m = Machine {
            cpu: "Intel(R) Xeon(R) Processor".into(),
            cores: 2,
            memory_gib: 1.0,
            os: String::new(),
            kernel: String::new(),
            rustc: String::new(),
            tansu: String::new(),
            nx_27017: String::new(),
            librdkafka: String::new(),
            kvsync_commit: String::new(),
        };
        assert_eq!(machine_tag(&m), "intel-xeon-2c");
    }
}
