use kvsync_node::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load();
    if config.health_check {
        std::process::exit(match health_check(config.local_http_addr()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("unhealthy: {e}");
                1
            }
        });
    }
    init_tracing(&config);
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    kvsync_node::run(config, shutdown).await
}

/// One blocking GET /healthz, so container images need no curl.
fn health_check(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use std::io::{Error, Read, Write};
    let timeout = std::time::Duration::from_secs(3);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    if head.ends_with(b" 200") {
        Ok(())
    } else {
        Err(Error::other(format!(
            "{addr} answered {:?}",
            String::from_utf8_lossy(&head)
        )))
    }
}

fn init_tracing(config: &Config) {
    // rdkafka reports every second that it ignored librdkafka's error events, which our
    // client context already logs (once per outage).
    let quiet = "rdkafka::producer::base_producer=error";
    let filter = EnvFilter::try_new(format!("{quiet},{}", config.log)).unwrap_or_else(|e| {
        eprintln!("invalid KVSYNC_LOG filter ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}
