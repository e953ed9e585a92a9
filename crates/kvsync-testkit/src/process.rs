use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Whether process `pid` itself holds a TCP socket listening on `port`: not merely
/// whether something listens there, since a "free" port can be taken by another test's
/// server between [`free_port`] and the bind.
#[cfg(target_os = "linux")]
pub fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let held = socket_inodes(pid);
    tcp_sockets().any(|s| s.state == LISTEN && s.local_port == port && held.contains(&s.inode))
}

/// Inodes of the sockets that process `pid` holds open.
#[cfg(target_os = "linux")]
pub(crate) fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// One row of the kernel's TCP tables.
#[cfg(target_os = "linux")]
pub(crate) struct TcpSocket {
    pub local_port: u16,
    pub state: String,
    pub inode: u64,
}

/// Every TCP socket (IPv4 and IPv6) from the kernel's tables.
#[cfg(target_os = "linux")]
pub(crate) fn tcp_sockets() -> impl Iterator<Item = TcpSocket> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            // Columns: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    Some(TcpSocket {
                        local_port: fields
                            .get(1)
                            .and_then(|a| a.rsplit_once(':'))
                            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())?,
                        state: (*fields.get(3)?).to_owned(),
                        inode: fields.get(9)?.parse().ok()?,
                    })
                })
                .collect::<Vec<_>>()
        })
}

/// Elsewhere: whether anything listens on `port`.
#[cfg(not(target_os = "linux"))]
pub fn listens_on(_pid: u32, port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A child process whose output goes to a log file, killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // Die with the test process even if it is killed before its destructors run.
            // SAFETY: the closure only calls `prctl`, which is async-signal-safe.
            #[allow(unsafe_code)]
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(code)` once exited (`Some(None)` if a signal ended it), `None` while running.
    pub fn exit_status(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: the pid is our own child's, and it is not reaped before we drop it.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGCONT); // A stopped process must not linger as one.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `timeout` for the exit (SIGKILL after that).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        self.signal(libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                anyhow::bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the process's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
