//! A TCP proxy on loopback that can cut one client process off from its upstream, the
//! way networks fail: a blackhole (bytes stop flowing both ways, connections stay open,
//! no reset) or a reset (every connection of that process closed with RST, new ones
//! refused the same way). Connections are told apart by the process that owns the
//! client socket, so one broker address can serve several nodes while only one of
//! them is cut off.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

/// What happens to a cut-off process's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing is forwarded; connections stay open; new ones are accepted but silent.
    Blackhole,
    /// Connections are reset (RST), new ones too.
    Reset,
}

#[derive(Default)]
struct Rules {
    /// Cut-off processes.
    cut: Vec<(u32, Cut)>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    rules: Mutex<Rules>,
    /// Bumped on every rule change so that connections look again.
    changed: watch::Sender<u64>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::start_on(listener, upstream)
    }

    /// Forwards connections accepted on `listener` to `upstream`.
    pub fn start_on(listener: TcpListener, upstream: SocketAddr) -> Result<Self> {
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            rules: Mutex::default(),
            changed: watch::channel(0).0,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            port,
            shared,
            tasks,
        })
    }

    /// Where new connections go from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Cuts process `pid` off (its current and future connections).
    pub fn cut(&self, pid: u32, how: Cut) {
        self.shared.rules.lock().unwrap().cut.push((pid, how));
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Lets every process through again; blackholed connections resume where they were.
    pub fn heal(&self) {
        self.shared.rules.lock().unwrap().cut.clear();
        self.shared.changed.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let upstream = *shared.upstream.lock().unwrap();
        conns.spawn(connection(client, peer, upstream, shared.clone()));
        // Reap finished connections.
        while conns.try_join_next().is_some() {}
    }
}

/// The cut that applies to the process owning the client end `peer`, if any.
fn cut_for(shared: &Shared, peer: SocketAddr) -> Option<Cut> {
    let cut = shared.rules.lock().unwrap().cut.clone();
    cut.into_iter()
        .find(|(pid, _)| owned_ports(*pid).contains(&peer.port()))
        .map(|(_, how)| how)
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut changed = shared.changed.subscribe();
    // A blackholed process's new connections wait silently; reset ones are refused.
    loop {
        match cut_for(&shared, peer) {
            None => break,
            Some(Cut::Reset) => return reset(client),
            Some(Cut::Blackhole) => {
                if changed.changed().await.is_err() {
                    return;
                }
            }
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut buf_up = vec![0u8; 64 * 1024];
    let mut buf_down = vec![0u8; 64 * 1024];
    // Which cut applies is looked up again only when the rules change.
    let mut cut = cut_for(&shared, peer);
    loop {
        // Forward while not cut off; stop reading (so bytes wait in the kernel, as
        // with dropped packets that TCP later retransmits) while blackholed.
        match cut {
            Some(Cut::Reset) => {
                let client = cr.reunite(cw).expect("same stream");
                return reset(client);
            }
            Some(Cut::Blackhole) => {
                if changed.changed().await.is_err() {
                    return;
                }
                cut = cut_for(&shared, peer);
                continue;
            }
            None => {}
        }
        tokio::select! {
            _ = changed.changed() => cut = cut_for(&shared, peer),
            n = cr.read(&mut buf_up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if sw.write_all(&buf_up[..n]).await.is_err() { return },
            },
            n = sr.read(&mut buf_down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if cw.write_all(&buf_down[..n]).await.is_err() { return },
            },
        }
    }
}

/// Closes with RST rather than FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Local ports of the TCP sockets that process `pid` holds.
#[cfg(target_os = "linux")]
fn owned_ports(pid: u32) -> HashSet<u16> {
    let held = crate::process::socket_inodes(pid);
    crate::process::tcp_sockets()
        .filter(|s| held.contains(&s.inode))
        .map(|s| s.local_port)
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn owned_ports(_pid: u32) -> HashSet<u16> {
    HashSet::new()
}
