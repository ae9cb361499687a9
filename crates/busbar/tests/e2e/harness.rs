//! Starts and stops real `busbar serve` processes for the tests.

use busbar_client::Client;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BUSBAR: &str = env!("CARGO_BIN_EXE_busbar");

/// Mallory's own database (see [`Node::mallory`]).
pub const MALLORYS: &str = "/home/mallory/notes";

/// The admin's database `/home/admin/payroll`, holding a table `pay`: what
/// the attack lists try to reach from mallory's.
pub async fn payroll(admin: &Client) -> busbar_client::Resource {
    let path = "/home/admin/payroll";
    let kind = busbar_client::ResourceKind::Database;
    let payroll = admin.create(path, kind, false).await.unwrap();
    let table = "CREATE TABLE pay (who TEXT, amount INTEGER)";
    admin.sql(path, table).await.unwrap();
    payroll
}

pub struct Node {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub address: String,
    pub admin_config: PathBuf,
    pub metrics: String,
    /// The WebSocket gateway's URL (`wss://127.0.0.1:PORT/ws`), when on.
    pub websocket: String,
    listen: String,
    extra: Vec<String>,
}

impl Node {
    /// A node with a fresh data directory; `extra` are more `serve` flags.
    pub fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut node = Node {
            child: None,
            dir,
            address: String::new(),
            admin_config: PathBuf::new(),
            metrics: String::new(),
            websocket: String::new(),
            listen: "127.0.0.1:0".into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let mut child = Command::new(BUSBAR)
            .arg("serve")
            .arg("--data")
            .arg(self.dir.path().join("data"))
            .args(["--listen", &self.listen, "--metrics-listen", "127.0.0.1:0"])
            .args(if self.extra.iter().any(|a| a == "--grace") {
                &[][..]
            } else {
                &["--grace", "0.3"][..]
            })
            // A free port for the gateway, unless the test picks one (or
            // requires client certificates, which turns it off).
            .args(
                if self
                    .extra
                    .iter()
                    .any(|a| a == "--ws-listen" || a == "required")
                {
                    &[][..]
                } else {
                    &["--ws-listen", "127.0.0.1:0"][..]
                },
            )
            .args(&self.extra)
            .env("RUST_LOG", "info")
            // A panic in a node shows where in its log (and a caught one
            // must not cost the symbolising: security.rs checks).
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start busbar serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("busbar serve did not start; its log:\n{}", self.log()));
            if let Some(rest) = line.split(" serving on ").nth(1) {
                self.address = rest.split_whitespace().next().expect("address").to_string();
            } else if let Some(path) = line.strip_prefix("admin config: ") {
                self.admin_config = PathBuf::from(path);
            } else if let Some(url) = line.strip_prefix("metrics: ") {
                self.metrics = url.to_string();
            } else if let Some(url) = line.strip_prefix("websocket: ") {
                self.websocket = url.to_string();
            } else if line.starts_with("try: ") {
                break;
            }
        }
        // Restarts reuse the port, so clients' configs stay valid.
        self.listen = self.host_port().to_string();
    }

    /// The node's `host:port`, for raw connections.
    pub fn host_port(&self) -> &str {
        self.address.rsplit("://").next().expect("host:port")
    }

    /// The gateway's `host:port` (from `wss://host:port/ws`).
    pub fn websocket_host_port(&self) -> &str {
        let url = self.websocket.split("://").nth(1).expect("a websocket URL");
        url.trim_end_matches("/ws")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub async fn admin(&self) -> Client {
        Client::from_config_file(&self.admin_config)
            .await
            .expect("admin connects")
    }

    pub fn admin_json(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.admin_config).unwrap()).unwrap()
    }

    /// Writes a client config like admin.json but with `credential`.
    pub fn config_with(&self, name: &str, credential: serde_json::Value) -> PathBuf {
        let mut config = self.admin_json();
        config["credential"] = credential;
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }

    /// The admin, with a new resource of `kind` at `path`.
    pub async fn admin_with(&self, path: &str, kind: busbar_client::ResourceKind) -> Client {
        let admin = self.admin().await;
        admin.create(path, kind, false).await.unwrap();
        admin
    }

    /// The admin, with a new database at `path` after `statements` ran on it.
    pub async fn admin_with_database(&self, path: &str, statements: &[&str]) -> Client {
        let admin = self
            .admin_with(path, busbar_client::ResourceKind::Database)
            .await;
        for statement in statements {
            admin.sql(path, *statement).await.unwrap();
        }
        admin
    }

    /// The attack lists' cast: the admin, and mallory, an ordinary user (no
    /// admin, no grants) who owns the database [`MALLORYS`] with a table `t`.
    pub async fn mallory(&self) -> (Client, Client) {
        let admin = self.admin().await;
        let mallory = self.new_user(&admin, "mallory", "mallory-password").await;
        let kind = busbar_client::ResourceKind::Database;
        mallory.create(MALLORYS, kind, false).await.unwrap();
        mallory
            .sql(MALLORYS, "CREATE TABLE t (x INTEGER)")
            .await
            .unwrap();
        (admin, mallory)
    }

    /// Creates a password user (as `admin`) and connects as it.
    pub async fn new_user(&self, admin: &Client, user: &str, password: &str) -> Client {
        admin.create_user(user, password, false).await.unwrap();
        self.user(user, password).await.unwrap()
    }

    /// [`Node::start`], and the admin connected to it.
    pub async fn start_with_admin(extra: &[&str]) -> (Node, Client) {
        let node = Node::start(extra);
        let admin = node.admin().await;
        (node, admin)
    }

    /// [`Node::start`], and the admin with a new resource of `kind` at `path`.
    pub async fn start_with(
        extra: &[&str],
        path: &str,
        kind: busbar_client::ResourceKind,
    ) -> (Node, Client) {
        let node = Node::start(extra);
        let admin = node.admin_with(path, kind).await;
        (node, admin)
    }

    /// A fresh node (no extra flags), its admin, and a new password user
    /// connected as itself: the cast of most rights tests.
    pub async fn start_with_user(user: &str, password: &str) -> (Node, Client, Client) {
        let (node, admin) = Node::start_with_admin(&[]).await;
        let client = node.new_user(&admin, user, password).await;
        (node, admin, client)
    }

    /// Creates a password user (as `admin`), grants it `right` on `path`
    /// and connects as it.
    pub async fn new_user_granted(
        &self,
        admin: &Client,
        user: &str,
        password: &str,
        path: &str,
        right: busbar_client::Right,
    ) -> Client {
        admin.create_user(user, password, false).await.unwrap();
        admin.grant(path, user, right).await.unwrap();
        self.user(user, password).await.unwrap()
    }

    /// Connects as a password user.
    pub async fn user(&self, user: &str, password: &str) -> busbar_client::Result<Client> {
        let config = self.config_with(
            user,
            serde_json::json!({"kind": "password", "user": user, "password": password}),
        );
        Client::from_config_file(config).await
    }

    /// `busbar --config admin.json ARGS...`, which must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        succeeded(args, self.cli(args))
    }

    /// `busbar --config admin.json ARGS...`
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BUSBAR);
        command.arg("--config").arg(&self.admin_config).args(args);
        command
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends SIGTERM and returns the child to wait on.
    pub fn terminate(&mut self) -> Child {
        let child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child
    }

    /// Resident memory of the server process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The Prometheus text of the metrics endpoint.
    pub fn metrics_text(&self) -> String {
        let host = self
            .metrics
            .trim_start_matches("http://")
            .trim_end_matches("/metrics");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `busbar serve` with `flags` on a fresh data directory (loopback,
/// no metrics, no gateway), which must refuse to start; what it printed.
pub fn serve_refused(flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BUSBAR)
        .arg("serve")
        .arg("--data")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--ws-listen", "off"])
        .args(flags)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "busbar serve {flags:?} must not start"
    );
    String::from_utf8_lossy(&output.stderr).to_string() + &String::from_utf8_lossy(&output.stdout)
}

/// Runs `command` (made from `args`), which must succeed; its stdout.
#[track_caller]
pub fn succeeded(args: &[&str], mut command: Command) -> String {
    let output = command.output().expect("the CLI runs");
    assert!(
        output.status.success(),
        "busbar {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Asserts an error's code and that its message mentions `words`.
#[track_caller]
pub fn assert_error<T>(
    result: busbar_client::Result<T>,
    code: busbar_client::ErrorCode,
    words: &str,
) {
    let Err(error) = result else {
        panic!("expected {code:?} mentioning {words:?}, but the call succeeded")
    };
    assert_eq!(error.code(), code, "{error}");
    assert!(
        error.message().contains(words),
        "{error:?} should mention {words:?}"
    );
}

/// Asserts a refusal for want of a right, and that it mentions `words`.
#[track_caller]
pub fn assert_denied<T>(result: busbar_client::Result<T>, words: &str) {
    assert_error(result, busbar_client::ErrorCode::PermissionDenied, words);
}

/// Asserts an error's code, whatever its message says.
#[track_caller]
pub fn assert_code<T>(result: busbar_client::Result<T>, code: busbar_client::ErrorCode) {
    assert_error(result, code, "");
}

/// Retries `attempt` every 100 ms for up to 5 s (a node restarting, a slot
/// freeing up) and returns its first success; panics naming `what` otherwise.
pub async fn eventually<T, E, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    for _ in 0..50 {
        if let Ok(value) = attempt().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 5 s");
}

/// A membership's next event, which must come within 30 s, without error.
pub async fn next_event(member: &mut busbar_client::RoomMembership) -> busbar_client::RoomEvent {
    tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(member))
        .await
        .expect("an event within 30 s")
        .expect("the membership goes on")
        .expect("no error")
}

/// Asserts that less than `limit` has passed since `started`.
#[track_caller]
pub fn assert_within(started: std::time::Instant, limit: Duration) {
    let elapsed = started.elapsed();
    assert!(elapsed < limit, "{elapsed:?}");
}

/// A TLS channel to the node at `address` (`https://host:port`) trusting
/// `ca_pem`, as a stock tonic client makes it.
pub async fn tls_channel(ca_pem: &str, address: String) -> tonic::transport::Channel {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    tonic::transport::Endpoint::from_shared(address)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// How many points a read of the whole series at `path` gives.
pub async fn points_in(client: &Client, path: &str) -> usize {
    client
        .read_series(path, busbar_client::Interval::all())
        .await
        .unwrap()
        .num_points()
}

/// Points out of time order written to the series at `path` through
/// `client` (a session, often) are refused, naming the row, and nothing
/// of them is kept.
pub async fn assert_unordered_points_refused(client: &Client, path: &str) {
    let before = points_in(client, path).await;
    let unordered = busbar_client::points(vec![9, 8], vec![0, 0], vec![0.0, 0.0]).unwrap();
    let all = busbar_client::Interval::all();
    let written = client.write_series(path, all, vec![unordered]).await;
    assert_error(written, busbar_client::ErrorCode::InvalidArgument, "row 2");
    assert_eq!(points_in(client, path).await, before);
}
