//! Child processes the benchmark starts: `busbar serve`, `nats-server` and
//! this binary's own `peer-server`. Each sits in a guard that kills it on
//! drop (so also when a scenario panics), and each child is also asked to die
//! with its parent (PR_SET_PDEATHSIG) in case the benchmark itself is killed.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

/// A running child; killed (SIGKILL) and reaped on drop.
pub struct Guard {
    name: &'static str,
    child: Option<Child>,
    /// Held open: `peer-server` exits when its stdin closes.
    _stdin: Option<ChildStdin>,
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("bench: stopped {} (pid {})", self.name, child.id());
        }
    }
}

/// Spawns `command` so that it dies with this process. Must be called from
/// the main thread (the death signal follows the spawning thread).
fn spawn(mut command: Command) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn()
}

/// Reads a child's stdout lines on a thread until `done` says stop or the
/// deadline passes; returns the lines read.
fn read_lines_until(
    name: &str,
    child: &mut Child,
    timeout: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> Result<Vec<String>> {
    let stdout = child.stdout.take().ok_or("child stdout not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let stop = done(&line);
                lines.push(line);
                if stop {
                    return Ok(lines);
                }
            }
            Err(_) => {
                return Err(format!(
                    "{name} did not report ready within {timeout:?} (read so far: {lines:?})"
                )
                .into());
            }
        }
    }
}

/// A `busbar serve` process on a free loopback port with a fresh data dir.
pub struct Busbar {
    pub guard: Guard,
    pub address: String,
    pub admin_config: PathBuf,
}

impl Busbar {
    pub fn start(binary: &Path, data: &Path) -> Result<Busbar> {
        let log = std::fs::File::create(data.with_extension("log"))?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .args(["--grace", "0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = spawn(command).map_err(|e| {
            format!(
                "cannot start {}: {e} (run `make bench`, which builds it)",
                binary.display()
            )
        })?;
        let lines = read_lines_until("busbar serve", &mut child, Duration::from_secs(30), |l| {
            l.starts_with("try: ")
        });
        let guard = Guard {
            name: "busbar serve",
            child: Some(child),
            _stdin: None,
        };
        let lines = lines?;
        let mut address = None;
        let mut admin_config = None;
        for line in &lines {
            if let Some(rest) = line.split(" serving on ").nth(1) {
                address = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(path) = line.strip_prefix("admin config: ") {
                admin_config = Some(PathBuf::from(path));
            }
        }
        Ok(Busbar {
            guard,
            address: address.ok_or("busbar serve printed no address")?,
            admin_config: admin_config.ok_or("busbar serve printed no admin config")?,
        })
    }
}

/// Finds `nats-server` on PATH or in /usr/sbin (where Debian installs it).
pub fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// A free loopback port (bound then released; good enough on a quiet loopback).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `nats-server` with TLS on a free loopback port.
pub struct Nats {
    pub guard: Guard,
    pub url: String,
}

impl Nats {
    pub fn start(binary: &Path, tls: &crate::tls::Files, log: &Path) -> Result<Nats> {
        let port = free_port()?;
        let log = std::fs::File::create(log)?;
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("--tls")
            .arg("--tlscert")
            .arg(&tls.cert)
            .arg("--tlskey")
            .arg(&tls.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child =
            spawn(command).map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let guard = Guard {
            name: "nats-server",
            child: Some(child),
            _stdin: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(
                    format!("nats-server did not listen on 127.0.0.1:{port} within 10 s").into(),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nats {
            guard,
            url: format!("tls://127.0.0.1:{port}"),
        })
    }
}

/// This binary's `peer-server` child: the bare tonic server and, when NATS
/// runs, the NATS request/reply responder.
pub struct Peers {
    pub guard: Guard,
    pub tonic_address: String,
    pub nats_responder: bool,
}

impl Peers {
    pub fn start(tls: &crate::tls::Files, nats_url: Option<&str>) -> Result<Peers> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("peer-server")
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .arg("--ca")
            .arg(&tls.ca);
        if let Some(url) = nats_url {
            command.args(["--nats", url]);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = spawn(command)?;
        let stdin = child.stdin.take();
        let lines = read_lines_until("peer-server", &mut child, Duration::from_secs(30), |l| {
            l == "ready"
        });
        let guard = Guard {
            name: "peer-server",
            child: Some(child),
            _stdin: stdin,
        };
        let lines = lines?;
        let tonic_address = lines
            .iter()
            .find_map(|l| l.strip_prefix("tonic "))
            .ok_or("peer-server printed no tonic address")?
            .to_string();
        let nats_responder = lines.iter().any(|l| l == "nats-responder ready");
        Ok(Peers {
            guard,
            tonic_address,
            nats_responder,
        })
    }
}

/// Resident memory of a process in KiB (VmRSS from /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
}

/// Raises the soft open-files limit to the hard one; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
