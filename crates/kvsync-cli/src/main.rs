//! `kvsync`: a command-line client for a kvsync node's HTTP API.

mod api;
mod commands;
mod input;
mod watch;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use api::{exit, Api, Error};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  not found (no such key), or `ready`: the node is not ready
  2  usage error (bad arguments or input; `clear` not confirmed)
  3  precondition failed (--if-match: the pair changed or is gone; HTTP 412)
  4  any other error answered by the node (HTTP 4xx/5xx) or a malformed answer
  5  cannot reach the node (refused, unresolvable, or no answer within --timeout)
  6  --wait: the write was made, but not enough peers confirmed it within --wait-timeout";

/// A command-line client for kvsync, talking HTTP to any node.
///
/// Every change made through one node reaches the others through replication.
#[derive(Parser)]
#[command(name = "kvsync", version, after_help = EXIT_CODES)]
struct Cli {
    /// The node's base URL.
    #[arg(
        long,
        env = "KVSYNC_URL",
        default_value = "http://127.0.0.1:3003",
        global = true
    )]
    url: String,
    /// The node's API token, sent as `Authorization: Bearer` (prefer the environment
    /// variable: arguments show in process lists).
    #[arg(long, env = "KVSYNC_API_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Machine output: JSON (one document, or one per line for `ls` and `watch`).
    #[arg(long, global = true)]
    json: bool,
    /// How long to wait for the node (connecting, and each request; for `clear`, the
    /// longest pause in its answer).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a pair's values, one per line (--json: the pair).
    Get {
        /// The key (percent-encoded for the URL by kvsync).
        #[arg(value_parser = non_empty())]
        key: String,
    },
    /// Create or replace a pair.
    ///
    /// Values come from the arguments, or one per line from --file or standard input
    /// (`-`); with --json-values, from a JSON array (the one argument, the file or
    /// standard input). No values at all stores an empty list.
    Put {
        /// The key (percent-encoded for the URL by kvsync).
        #[arg(value_parser = non_empty())]
        key: String,
        /// The values; `-` alone: read them from standard input.
        #[arg(conflicts_with = "file")]
        values: Vec<String>,
        /// Read the values from this file (`-`: standard input).
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// The input is a JSON array of strings (for values with newlines).
        #[arg(long)]
        json_values: bool,
        /// Only if the pair is still in this state: its entity tag (`etag` in
        /// `get --json`, or the ETag header).
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Append one value to a pair, creating it if needed.
    Append {
        /// The key (percent-encoded for the URL by kvsync).
        #[arg(value_parser = non_empty())]
        key: String,
        value: String,
        /// Only if the pair is still in this state (its `etag`).
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a pair.
    Rm {
        /// The key (percent-encoded for the URL by kvsync).
        #[arg(value_parser = non_empty())]
        key: String,
        /// Only if the pair is still in this state (its `etag`).
        #[arg(long, value_name = "ETAG")]
        if_match: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Write every pair (with --tombstones, deleted keys too) as JSON lines: a backup
    /// that `import` restores on any node of any cluster.
    Export {
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Include deleted keys (so a restore also deletes what the backup deleted).
        #[arg(long)]
        tombstones: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Merge an export into the node under the normal merge rule: what the node holds
    /// newer stays, and what changes replicates. Sent in requests of 1,000 lines; a bad
    /// line stops the import (the lines before it are merged; importing again is safe).
    Import {
        /// The export (`-`: standard input).
        file: PathBuf,
    },
    /// Show the cluster as this node sees it: each member, its status and how far
    /// behind it is (--json: the whole `/api/cluster` answer).
    Cluster,
    /// List keys in key order, optionally only those starting with PREFIX (--json: the
    /// pairs, one JSON document per line).
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        /// Stop after this many pairs.
        #[arg(long)]
        limit: Option<usize>,
        /// Pairs asked for per request.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        page_size: u16,
    },
    /// Print changes to keys starting with PREFIX as this node applies them (its own and
    /// its peers'), until interrupted; reconnects after a disconnection.
    Watch {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Delete every pair (on every node, through replication).
    Clear {
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Show the node's status: id, topic, consumer, clock, outbox backlog, counters.
    Node,
    /// Check whether the node is ready to serve (exit code 0) or not (1), and why.
    Ready,
}

/// Waiting for a write's replication to the node's peers.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WaitArgs {
    /// Return once the live peers (`all`) or this many of them have applied the write;
    /// exit code 6 if they have not within --wait-timeout (the write stands).
    #[arg(long, value_name = "all|N")]
    pub wait: Option<String>,
    /// How long --wait waits.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, requires = "wait")]
    pub wait_timeout: Duration,
}

/// Keys must not be empty; the node checks the other rules.
fn non_empty() -> clap::builder::NonEmptyStringValueParser {
    clap::builder::NonEmptyStringValueParser::new()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        // `kvsync ls | head`: the reader has all it wanted.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            eprintln!("kvsync: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    // The event stream sends a keep-alive every 15 s: silence for longer means a
    // dead connection, whatever --timeout says.
    let idle = match cli.command {
        Command::Watch { .. } => cli.timeout.max(Duration::from_secs(45)),
        _ => cli.timeout,
    };
    let api = Api::new(&cli.url, cli.token, cli.timeout, idle)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("starting the runtime: {e}")))?;
    let out = commands::Out { json: cli.json };
    runtime.block_on(commands::run(&api, &out, cli.command))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }
}
