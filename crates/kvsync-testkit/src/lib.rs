//! Real services for tests, benchmarks and local runs: a Kafka-protocol broker (tansu),
//! MongoDB-protocol servers (nx-27017) and kvsync nodes, each a child process on a free
//! loopback port, stopped when dropped. No mocks.

mod client;
mod clock;
mod process;
mod proxy;
pub mod raw;
mod rng;
pub mod sse;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub use client::{Client, Element, Pair};
pub use clock::{build_shim, ClockOffset};
pub use process::{free_port, listens_on, Proc};
pub use proxy::{Cut, Proxy};
pub use rng::{test_seed, Rng};

/// Where the external tools live: `$KVSYNC_TOOLS` (default `~/.cache/kvsync-tools`), as
/// installed by `scripts/install-deps.sh`, else the `PATH`.
#[derive(Debug, Clone)]
pub struct Tools {
    pub tansu: PathBuf,
    pub nx_27017: PathBuf,
}

impl Tools {
    pub fn locate() -> Result<Self> {
        let root = std::env::var_os("KVSYNC_TOOLS")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kvsync-tools"))
            });
        let find = |rel: &str, name: &str| -> Result<PathBuf> {
            if let Some(p) = root.as_ref().map(|r| r.join(rel)).filter(|p| p.is_file()) {
                return Ok(p);
            }
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .with_context(|| format!("{name} not found: run scripts/install-deps.sh"))
        };
        Ok(Self {
            tansu: find("bin/tansu", "tansu")?,
            nx_27017: find("venv/bin/nx-27017", "nx-27017")?,
        })
    }
}

/// The `kvsync-node` binary: `$KVSYNC_NODE_BIN`, else next to the running executable
/// (or its parent, for test binaries in `target/*/deps`).
pub fn node_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KVSYNC_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("kvsync-node");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("kvsync-node binary not found next to {exe:?}: build it or set KVSYNC_NODE_BIN")
}

async fn wait_for_port(port: u16, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let pid = proc.pid();
    wait_until(
        timeout,
        &format!("{} to listen on {port}", proc.name()),
        || {
            // Exited (reported below), or listening itself: whatever else may hold
            // the port does not count.
            let done = !proc.is_running() || listens_on(pid, port);
            async move { done }
        },
    )
    .await?;
    if !proc.is_running() {
        bail!(
            "{} exited during start-up; log: {}",
            proc.name(),
            proc.log_tail(20)
        );
    }
    Ok(())
}

/// Starts a server on `port`, or if it is 0 on a free port. A free port can be taken by
/// someone else before the server binds it; the server then exits, and another port is
/// tried.
async fn on_free_port<T, F, Fut>(port: u16, mut start: F) -> Result<T>
where
    F: FnMut(u16) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    if port != 0 {
        return start(port).await;
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        match start(free_port()?).await {
            Err(e) if attempts < 3 => eprintln!("start-up failed, trying another port: {e:#}"),
            result => return result,
        }
    }
}

/// A `KEY=VALUE` command-line argument (split at the first `=`), e.g. for `--node-env`:
/// a clap `value_parser`.
pub fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))
}

/// Polls `check` until it holds, or fails after `timeout` naming `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// An external server that can be killed and started again on the same port with the
/// same data directory.
struct Service {
    name: &'static str,
    port: u16,
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Service {
    fn new(name: &'static str, program: &Path, dir: &Path, port: u16) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            name,
            port,
            program: program.to_owned(),
            args: Vec::new(),
            dir: dir.to_owned(),
            proc: None,
        })
    }

    async fn start(&mut self) -> Result<()> {
        let mut proc = Proc::spawn(
            self.name,
            std::process::Command::new(&self.program)
                .args(&self.args)
                .current_dir(&self.dir),
            &self.dir.join(format!("{}.log", self.name)),
        )?;
        wait_for_port(self.port, &mut proc, Duration::from_secs(30)).await?;
        self.proc = Some(proc);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(p) = &self.proc {
            p.signal(signal);
        }
    }
}

/// Real servers to test against instead of the test servers, when set: the Kafka
/// bootstrap servers (`KVSYNC_TEST_KAFKA_BROKERS`), and a MongoDB connection string
/// (`KVSYNC_TEST_MONGODB_URI`; each server this kit would start gets a database of its
/// own there). Tests that kill, pause or cut off a server need the test servers.
fn external(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// A name no other run shares: for topics and databases on external servers.
fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}_{}_{nanos:x}_{n}", std::process::id())
}

/// A tansu broker with durable (SQLite) storage in its own directory, or the external
/// brokers of `KVSYNC_TEST_KAFKA_BROKERS`.
pub struct Broker {
    /// The port clients connect to (the proxy's, if the broker is behind one).
    pub port: u16,
    service: Service,
    proxy: Option<Proxy>,
    external: Option<String>,
}

impl Broker {
    /// On `port`, or on a free port if 0.
    pub async fn start(tools: &Tools, dir: &Path, port: u16) -> Result<Self> {
        if let Some(brokers) = external("KVSYNC_TEST_KAFKA_BROKERS") {
            return Ok(Self {
                port: 0,
                service: Service::new("tansu", &tools.tansu, dir, 0)?,
                proxy: None,
                external: Some(brokers),
            });
        }
        on_free_port(port, |port| Self::start_on(tools, dir, port, None)).await
    }

    /// Whether this is an external broker (shared by every test: topics must be unique).
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// Behind a [`Proxy`] that every client goes through (the broker advertises the
    /// proxy's address), so that a test can cut one client process off the broker.
    pub async fn start_behind_proxy(tools: &Tools, dir: &Path) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let advertised = listener.local_addr()?.port();
        let proxy = Proxy::start_on(listener, ([127, 0, 0, 1], 0).into())?;
        let mut broker =
            on_free_port(0, |port| Self::start_on(tools, dir, port, Some(advertised))).await?;
        proxy.set_upstream(([127, 0, 0, 1], broker.service.port).into());
        broker.proxy = Some(proxy);
        Ok(broker)
    }

    async fn start_on(
        tools: &Tools,
        dir: &Path,
        port: u16,
        advertised_port: Option<u16>,
    ) -> Result<Self> {
        let mut service = Service::new("tansu", &tools.tansu, dir, port)?;
        let url = format!("tcp://127.0.0.1:{}", service.port);
        let advertised = match advertised_port {
            Some(p) => format!("tcp://127.0.0.1:{p}"),
            None => url.clone(),
        };
        service.args = [
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ]
        // tansu resolves sqlite:// paths against its working directory.
        .into_iter()
        .chain(["--storage-engine", "sqlite://broker.db"])
        .map(Into::into)
        .collect();
        service.start().await?;
        Ok(Self {
            port: advertised_port.unwrap_or(service.port),
            service,
            proxy: None,
            external: None,
        })
    }

    pub fn addr(&self) -> String {
        match &self.external {
            Some(brokers) => brokers.clone(),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// The proxy in front of the broker, if it was started behind one.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// Starts the broker again (same port, same data) after [`Broker::kill`].
    pub async fn resume_service(&mut self) -> Result<()> {
        self.service.start().await
    }

    /// SIGKILL: the broker vanishes mid-flight.
    pub fn kill(&mut self) {
        self.service.kill();
    }

    /// SIGSTOP / SIGCONT: the broker hangs with its connections open.
    pub fn pause(&self) {
        self.service.signal(libc::SIGSTOP);
    }

    pub fn unpause(&self) {
        self.service.signal(libc::SIGCONT);
    }

    /// Writes one record straight onto `topic`, past every node: for feeding consumers
    /// what no node would publish (garbage, forged, oversized or future events).
    pub async fn produce(&self, topic: &str, key: &str, payload: &[u8]) -> Result<()> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .set("acks", "all")
            // Room for events beyond the nodes' own size limit.
            .set("message.max.bytes", "16000000")
            .set("message.timeout.ms", "10000")
            .create()?;
        let record = FutureRecord::to(topic).key(key).payload(payload);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("producing {} bytes to {topic}", payload.len()))?;
        Ok(())
    }

    /// Commits, for consumer group `group`, the end of every partition of `topic`: the
    /// group's next consumer skips every record there now, applied or not. Returns the
    /// offsets committed.
    pub async fn commit_end(&self, group: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
        let (addr, group, topic) = (self.addr(), group.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || -> Result<Vec<(i32, i64)>> {
            use rdkafka::{
                consumer::{BaseConsumer, CommitMode, Consumer},
                Offset, TopicPartitionList,
            };
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .create()?;
            let timeout = Duration::from_secs(10);
            let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
            let partitions = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len() as i32)
                .unwrap_or(0);
            let mut list = TopicPartitionList::new();
            let mut ends = Vec::new();
            for p in 0..partitions {
                let (_, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
                list.add_partition_offset(&topic, p, Offset::Offset(high))?;
                ends.push((p, high));
            }
            consumer.commit(&list, CommitMode::Sync)?;
            Ok(ends)
        })
        .await?
    }
}

/// An nx-27017 MongoDB-protocol server on SQLite, or a database of its own on the
/// external server of `KVSYNC_TEST_MONGODB_URI`.
pub struct Mongo {
    pub port: u16,
    service: Service,
    external: Option<String>,
    database: String,
}

impl Mongo {
    /// On `port`, or on a free port if 0.
    pub async fn start(tools: &Tools, dir: &Path, port: u16) -> Result<Self> {
        if let Some(uri) = external("KVSYNC_TEST_MONGODB_URI") {
            return Ok(Self {
                port: 0,
                service: Service::new("nx-27017", &tools.nx_27017, dir, 0)?,
                external: Some(uri),
                database: unique_name("kvsync_test"),
            });
        }
        on_free_port(port, |port| Self::start_on(tools, dir, port)).await
    }

    /// The database a node on this server keeps its pairs in.
    pub fn database(&self) -> &str {
        &self.database
    }

    async fn start_on(tools: &Tools, dir: &Path, port: u16) -> Result<Self> {
        let mut service = Service::new("nx-27017", &tools.nx_27017, dir, port)?;
        // Own pid and log files: their defaults are shared by every instance.
        service.args = [
            "--db",
            "data.db",
            "-p",
            &service.port.to_string(),
            "--pid-file",
            "nx.pid",
            "--log-file",
            "nx.log",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        service.start().await?;
        Ok(Self {
            port: service.port,
            service,
            external: None,
            database: "kvsync".into(),
        })
    }

    pub fn uri(&self) -> String {
        match &self.external {
            Some(uri) => uri.clone(),
            None => format!("mongodb://127.0.0.1:{}", self.port),
        }
    }

    pub async fn resume_service(&mut self) -> Result<()> {
        self.service.start().await
    }

    pub fn kill(&mut self) {
        self.service.kill();
    }

    /// SIGSTOP / SIGCONT: the server hangs with its connections open.
    pub fn pause(&self) {
        self.service.signal(libc::SIGSTOP);
    }

    pub fn unpause(&self) {
        self.service.signal(libc::SIGCONT);
    }
}

/// How to run one kvsync node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: String,
    pub http_port: u16,
    pub mongodb_uri: String,
    pub brokers: String,
    pub topic: String,
    /// Further `KVSYNC_*` settings.
    pub env: Vec<(String, String)>,
}

pub struct Node {
    pub spec: NodeSpec,
    pub url: String,
    bin: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    /// Starts the node; it is reachable (healthz) on return, not necessarily ready.
    pub async fn start(bin: &Path, dir: &Path, spec: NodeSpec) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut n = Self {
            url: format!("http://127.0.0.1:{}", spec.http_port),
            spec,
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            proc: None,
        };
        n.restart().await?;
        Ok(n)
    }

    pub async fn restart(&mut self) -> Result<()> {
        let s = &self.spec;
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KVSYNC_NODE_ID", &s.id)
            .env("KVSYNC_HTTP_ADDR", format!("127.0.0.1:{}", s.http_port))
            .env("KVSYNC_MONGODB_URI", &s.mongodb_uri)
            .env("KVSYNC_KAFKA_BROKERS", &s.brokers)
            .env("KVSYNC_KAFKA_TOPIC", &s.topic)
            .env("KVSYNC_LOG", "info")
            // The test broker holds every fetch for the whole wait (Apache Kafka answers
            // when data arrives, which the node's default of 100 ms suits).
            .env("KVSYNC_KAFKA_FETCH_WAIT_MS", "5")
            .envs(s.env.iter().map(|(k, v)| (k, v)));
        let mut proc = Proc::spawn(&format!("kvsync-node {}", s.id), &mut cmd, &self.log_path())?;
        wait_for_port(s.http_port, &mut proc, Duration::from_secs(30)).await?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops the node gracefully, lets `edit` change how it runs, and starts it again.
    pub async fn reconfigure(&mut self, edit: impl FnOnce(&mut NodeSpec)) -> Result<()> {
        self.terminate(Duration::from_secs(30)).await?;
        edit(&mut self.spec);
        self.restart().await
    }

    /// A client for this node, carrying its API token if it was started with one.
    pub fn client(&self) -> Client {
        let client = Client::new(&self.url);
        match self.spec.env.iter().find(|(k, _)| k == "KVSYNC_API_TOKEN") {
            Some((_, token)) => client.with_token(token),
            None => client,
        }
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let c = self.client();
        wait_until(timeout, &format!("{} to be ready", self.spec.id), || {
            let c = c.clone();
            async move { c.ready().await }
        })
        .await
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM, then wait for a graceful exit. Returns the exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        match self.proc.take() {
            Some(mut p) => p.terminate(timeout).await,
            None => Ok(None),
        }
    }

    pub fn pause(&self) {
        if let Some(p) = &self.proc {
            p.signal(libc::SIGSTOP);
        }
    }

    pub fn unpause(&self) {
        if let Some(p) = &self.proc {
            p.signal(libc::SIGCONT);
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// `Some(exit code)` once the process has exited (`Some(None)`: killed by a
    /// signal); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<Option<i32>> {
        self.proc.as_mut().and_then(Proc::exit_status)
    }

    /// The node's resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// Everything this node has logged, over all its restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.spec.id))
    }
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub topic: String,
    /// Settings for every node (`KVSYNC_*`).
    pub env: Vec<(String, String)>,
    /// 0: free ports. Otherwise node i listens on `http_port + i`.
    pub http_port: u16,
    pub broker_port: u16,
    /// 0: free ports. Otherwise MongoDB i listens on `mongo_port + i`.
    pub mongo_port: u16,
    /// Where data and logs go; a temporary directory (removed on drop) if `None`.
    pub dir: Option<PathBuf>,
    /// Every client reaches the broker through a [`Proxy`] (see [`Broker::proxy`]).
    pub broker_proxy: bool,
    /// Every node runs with a wall clock the test can move ([`Cluster::clock`]).
    pub movable_clocks: bool,
}

impl ClusterOptions {
    /// `nodes` nodes, every other option at its default.
    pub fn nodes(nodes: usize) -> Self {
        Self {
            nodes,
            ..Default::default()
        }
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            topic: "kvsync.pairs".into(),
            env: Vec::new(),
            http_port: 0,
            broker_port: 0,
            mongo_port: 0,
            dir: None,
            broker_proxy: false,
            movable_clocks: false,
        }
    }
}

/// A broker, and per node a MongoDB-protocol server and a kvsync node.
pub struct Cluster {
    pub broker: Broker,
    pub mongos: Vec<Mongo>,
    pub nodes: Vec<Node>,
    clocks: Vec<ClockOffset>,
    options: ClusterOptions,
    tools: Tools,
    bin: PathBuf,
    dir: PathBuf,
    /// The temporary directory behind `dir`, removed on drop (unless a test failed).
    tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts everything and waits until every node is ready.
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        let tools = Tools::locate()?;
        let bin = node_binary()?;
        let (dir, tmp) = match &options.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new().prefix("kvsync-test-").tempdir()?;
                (t.path().to_owned(), Some(t))
            }
        };
        let broker = if options.broker_proxy {
            Broker::start_behind_proxy(&tools, &dir.join("broker")).await?
        } else {
            Broker::start(&tools, &dir.join("broker"), options.broker_port).await?
        };
        let mut options = options;
        if broker.is_external() {
            options.topic = unique_name(&options.topic);
        }
        let mut c = Self {
            broker,
            mongos: Vec::new(),
            nodes: Vec::new(),
            clocks: Vec::new(),
            options: options.clone(),
            tools,
            bin,
            dir,
            tmp,
        };
        for _ in 0..options.nodes {
            c.add_node_unready().await?;
        }
        for n in &c.nodes {
            n.wait_ready(Duration::from_secs(90)).await?;
        }
        Ok(c)
    }

    /// Starts one more node (with its own MongoDB), as a node joining later would.
    pub async fn add_node(&mut self) -> Result<&Node> {
        self.add_node_unready().await?;
        let node = self.nodes.last().expect("just added");
        node.wait_ready(Duration::from_secs(90)).await?;
        Ok(node)
    }

    /// Starts one more node (with its own MongoDB) with further settings of its own on
    /// top of the cluster's, and returns once it answers, without waiting for it to be
    /// ready: for timing a join from its very start.
    pub async fn start_node(&mut self, env: &[(String, String)]) -> Result<&Node> {
        self.start_node_with(env).await?;
        Ok(self.nodes.last().expect("just added"))
    }

    async fn add_node_unready(&mut self) -> Result<()> {
        self.start_node_with(&[]).await
    }

    async fn start_node_with(&mut self, extra: &[(String, String)]) -> Result<()> {
        let i = self.nodes.len();
        // 0: free ports. Otherwise node i's servers listen on `base + i`.
        let port = |base: u16| if base == 0 { 0 } else { base + i as u16 };
        let mongo = Mongo::start(
            &self.tools,
            &self.dir.join(format!("mongo{}", i + 1)),
            port(self.options.mongo_port),
        )
        .await?;
        let mut env = vec![("KVSYNC_MONGODB_DB".to_owned(), mongo.database().to_owned())];
        env.extend(self.options.env.iter().cloned());
        env.extend(extra.iter().cloned());
        if self.options.movable_clocks {
            let shim = build_shim(&self.dir.join("clock"))?;
            let clock = ClockOffset {
                file: self.dir.join("clock").join(format!("node{}.offset", i + 1)),
            };
            clock.set(0)?;
            env.extend(clock.env(&shim));
            self.clocks.push(clock);
        }
        let spec = NodeSpec {
            id: format!("node{}", i + 1),
            http_port: 0,
            mongodb_uri: mongo.uri(),
            brokers: self.broker.addr(),
            topic: self.options.topic.clone(),
            env,
        };
        let (bin, dir) = (&self.bin, self.dir.join("nodes"));
        let node = on_free_port(port(self.options.http_port), |http_port| {
            let spec = NodeSpec {
                http_port,
                ..spec.clone()
            };
            Node::start(bin, &dir, spec)
        })
        .await?;
        self.mongos.push(mongo);
        self.nodes.push(node);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `i`'s movable wall clock (with [`ClusterOptions::movable_clocks`]).
    pub fn clock(&self, i: usize) -> &ClockOffset {
        &self.clocks[i]
    }

    pub fn clients(&self) -> Vec<Client> {
        self.nodes.iter().map(Node::client).collect()
    }

    /// The topic every node publishes to and consumes.
    pub fn topic(&self) -> &str {
        &self.options.topic
    }

    /// Waits until every node holds the same state (equal digests, tombstones
    /// included) and returns that digest.
    pub async fn converged(&self, timeout: Duration) -> Result<(u64, String)> {
        let clients = self.clients();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut digests = Vec::new();
            for c in &clients {
                digests.push(c.digest().await.map_err(|e| e.to_string()));
            }
            if let [Ok(first), rest @ ..] = digests.as_slice() {
                if rest.iter().all(|d| d.as_ref() == Ok(first)) {
                    return Ok(first.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("nodes did not converge within {timeout:?}; digests: {digests:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node holds the same state, compared in full: equal digests
    /// (tombstones included) and the same live pairs with the same values, versions and
    /// origins. Returns those pairs.
    pub async fn identical(&self, timeout: Duration) -> Result<Vec<Pair>> {
        let clients = self.clients();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.converged(left).await?;
            let mut lists = Vec::new();
            for c in &clients {
                lists.push(c.list_all().await?);
            }
            let difference = lists[1..]
                .iter()
                .zip(&clients[1..])
                .find_map(|(list, c)| first_difference(&lists[0], list).map(|d| (c.base(), d)));
            match difference {
                None => return Ok(lists.swap_remove(0)),
                Some((node, d)) if tokio::time::Instant::now() >= deadline => {
                    bail!(
                        "digests are equal but {node} differs from {}: {d}",
                        clients[0].base()
                    )
                }
                // A change may have landed between the digests and the listings.
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Cluster {
    /// When a test fails, its logs are what explains it: show each node's last lines
    /// and keep the directory with every log and database.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for n in &self.nodes {
            eprintln!("--- last lines of {} ---\n{}", n.spec.id, n.log_tail(40));
        }
        if let Some(tmp) = self.tmp.take() {
            eprintln!("--- logs and data kept in {} ---", tmp.keep().display());
        }
    }
}

/// The first pair that differs between two listings, described.
fn first_difference(a: &[Pair], b: &[Pair]) -> Option<String> {
    if let Some((x, y)) = a.iter().zip(b).find(|(x, y)| x != y) {
        return Some(format!("{x:?} vs {y:?}"));
    }
    (a.len() != b.len()).then(|| format!("{} pairs vs {}", a.len(), b.len()))
}
