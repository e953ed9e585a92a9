//! Starts a local kvsync cluster (a broker, and per node a MongoDB-protocol server and
//! a kvsync node), prints one line of JSON describing it once every node is ready (each
//! node's id, url, mongodb URI and pid), and runs until SIGINT/SIGTERM or until its
//! standard input closes.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use kvsync_testkit::{parse_key_value, Cluster, ClusterOptions};
use serde_json::json;
use tokio::io::AsyncReadExt;

#[derive(Parser)]
#[command(name = "kvsync-cluster", about)]
struct Args {
    /// Number of nodes (node1, node2, ...).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// HTTP port of node1; node i gets this + i - 1. 0 picks free ports.
    #[arg(long, default_value_t = 0)]
    http_port: u16,
    /// Broker port. 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    broker_port: u16,
    /// Port of node1's MongoDB-protocol server; node i's gets this + i - 1. 0: free ports.
    #[arg(long, default_value_t = 0)]
    mongo_port: u16,
    /// Directory for data and logs, kept after exit. Default: a temporary one, removed.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Topic name.
    #[arg(long, default_value = "kvsync.pairs")]
    topic: String,
    /// Extra node setting, KEY=VALUE (repeatable), e.g. KVSYNC_API_TOKEN=secret.
    #[arg(long = "node-env", value_parser = parse_key_value)]
    node_env: Vec<(String, String)>,
    /// Keep running when standard input closes (for running in the background).
    #[arg(long)]
    ignore_stdin: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cluster = Cluster::start(ClusterOptions {
        nodes: args.nodes,
        topic: args.topic,
        env: args.node_env,
        http_port: args.http_port,
        broker_port: args.broker_port,
        mongo_port: args.mongo_port,
        dir: args.dir,
        ..Default::default()
    })
    .await?;
    let nodes: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| json!({ "id": n.spec.id, "url": n.url, "mongodb": n.spec.mongodb_uri, "pid": n.pid() }))
        .collect();
    println!(
        "{}",
        json!({ "broker": cluster.broker.addr(), "nodes": nodes, "dir": cluster.dir() })
    );
    eprintln!("kvsync cluster ready; Ctrl-C to stop");

    let stdin_closed = async {
        if args.ignore_stdin {
            return std::future::pending().await;
        }
        let mut buf = [0u8; 256];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        _ = stdin_closed => {},
    }
    eprintln!("stopping");
    drop(cluster);
    Ok(())
}
