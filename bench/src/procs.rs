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
    /// The WebSocket gateway's URL, when `extra` turned it on.
    pub websocket: Option<String>,
}

impl Busbar {
    pub fn start(binary: &Path, data: &Path) -> Result<Busbar> {
        Busbar::start_with(binary, data, "127.0.0.1:0", &[])
    }

    /// A node listening on `listen`, with `extra` flags (a cluster node's
    /// `--store` and `--bus`); its log is appended to, so a node started
    /// again on the same data keeps one log.
    pub fn start_with(binary: &Path, data: &Path, listen: &str, extra: &[&str]) -> Result<Busbar> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", listen, "--metrics-listen", "off"])
            // The gateway is off unless a scenario asks for it.
            .args(if extra.contains(&"--ws-listen") {
                &[][..]
            } else {
                &["--ws-listen", "off"][..]
            })
            .args(extra)
            .args(["--grace", "0"])
            .env(
                "RUST_LOG",
                std::env::var("BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
        let mut websocket = None;
        for line in &lines {
            if let Some(rest) = line.split(" serving on ").nth(1) {
                address = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(path) = line.strip_prefix("admin config: ") {
                admin_config = Some(PathBuf::from(path));
            } else if let Some(url) = line.strip_prefix("websocket: ") {
                websocket = Some(url.trim().to_string());
            }
        }
        Ok(Busbar {
            guard,
            address: address.ok_or("busbar serve printed no address")?,
            admin_config: admin_config.ok_or("busbar serve printed no admin config")?,
            websocket,
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
    /// The WebSocket listener's URL (`wss://127.0.0.1:PORT`), when asked for.
    pub websocket: Option<String>,
}

impl Nats {
    pub fn start(binary: &Path, tls: &crate::tls::Files, log: &Path) -> Result<Nats> {
        Nats::start_inner(binary, tls, log, false)
    }

    /// [`Nats::start`] plus a WebSocket listener with TLS (the same
    /// certificate) on another free loopback port. The listener can only be
    /// set in a configuration file, written next to `log`.
    pub fn start_with_websocket(
        binary: &Path,
        tls: &crate::tls::Files,
        log: &Path,
    ) -> Result<Nats> {
        Nats::start_inner(binary, tls, log, true)
    }

    fn start_inner(
        binary: &Path,
        tls: &crate::tls::Files,
        log: &Path,
        websocket: bool,
    ) -> Result<Nats> {
        let port = free_port()?;
        let websocket_port = if websocket { Some(free_port()?) } else { None };
        let mut command = Command::new(binary);
        if let Some(websocket_port) = websocket_port {
            let config = log.with_extension("conf");
            std::fs::write(&config, websocket_config(websocket_port, tls))?;
            command.arg("-c").arg(&config);
        }
        let log = std::fs::File::create(log)?;
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
        for listening in std::iter::once(port).chain(websocket_port) {
            wait_for_listener("nats-server", listening, Duration::from_secs(10))?;
        }
        Ok(Nats {
            guard,
            url: format!("tls://127.0.0.1:{port}"),
            websocket: websocket_port.map(|p| format!("wss://127.0.0.1:{p}")),
        })
    }
}

/// nats-server's configuration for a WebSocket listener on `port` with TLS.
/// The paths are written as quoted strings (`{:?}`), which the
/// configuration's syntax reads the same way.
fn websocket_config(port: u16, tls: &crate::tls::Files) -> String {
    format!(
        "websocket {{\n  listen: \"127.0.0.1:{port}\"\n  tls {{\n    cert_file: {:?}\n    key_file: {:?}\n  }}\n}}\n",
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    )
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
fn wait_for_listener(name: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(
                format!("{name} did not listen on 127.0.0.1:{port} within {timeout:?}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
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
        let mut args: Vec<std::ffi::OsString> = vec![
            "--cert".into(),
            tls.cert.clone().into(),
            "--key".into(),
            tls.key.clone().into(),
            "--ca".into(),
            tls.ca.clone().into(),
        ];
        if let Some(url) = nats_url {
            args.extend(["--nats".into(), url.into()]);
        }
        let (guard, lines) = start_own("peer-server", &args)?;
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

/// Starts this binary as the child `mode` (`peer-server`, `mesh-peer`) with
/// `args`; returns its guard and the lines it printed up to `ready`. The
/// child serves until its stdin closes, which the guard holds open. Call it
/// from the main thread (see [`spawn`]).
pub fn start_own(mode: &'static str, args: &[std::ffi::OsString]) -> Result<(Guard, Vec<String>)> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg(mode)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn(command)?;
    let stdin = child.stdin.take();
    let lines = read_lines_until(mode, &mut child, Duration::from_secs(30), |l| l == "ready");
    let guard = Guard {
        name: mode,
        child: Some(child),
        _stdin: stdin,
    };
    Ok((guard, lines?))
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

/// The bench venv's python (`BUSBAR_BENCH_PYTHON` overrides), when it exists.
pub fn bench_python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("BUSBAR_BENCH_PYTHON") {
        return Some(PathBuf::from(python));
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    python.is_file().then_some(python)
}

/// bench/flight_peer.py: the pyarrow.flight peer and the Flight / ADBC clients.
pub fn flight_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("flight_peer.py")
}

/// `flight_peer.py serve`: the in-memory pyarrow.flight server with TLS.
pub struct FlightPeer {
    pub guard: Guard,
    /// `grpc+tls://127.0.0.1:PORT`.
    pub location: String,
}

impl FlightPeer {
    pub fn start(python: &Path, tls: &crate::tls::Files) -> Result<FlightPeer> {
        let mut command = Command::new(python);
        command
            .arg(flight_script())
            .arg("serve")
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child =
            spawn(command).map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        let stdin = child.stdin.take();
        let lines = read_lines_until(
            "pyarrow.flight peer",
            &mut child,
            Duration::from_secs(30),
            |l| l.starts_with("location "),
        );
        let guard = Guard {
            name: "pyarrow.flight peer",
            child: Some(child),
            _stdin: stdin,
        };
        let location = lines?
            .iter()
            .find_map(|l| l.strip_prefix("location "))
            .ok_or("the pyarrow.flight peer printed no location")?
            .to_string();
        Ok(FlightPeer { guard, location })
    }
}

/// Runs `python flight_peer.py <args>`; see [`run_script_json`].
pub fn run_python_json(
    python: &Path,
    args: &[String],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Result<serde_json::Value> {
    run_script_json(python, &flight_script(), args, envs, timeout)
}

/// How much of a failed script's stderr the bench prints.
const STDERR_LINES_SHOWN: usize = 30;

/// Runs `python <script> <args>` to the end (killed at `timeout`) and parses
/// the JSON object it prints last. Blocks the calling thread, which is the
/// main thread (so the child dies with the benchmark); nothing else of the
/// benchmark runs meanwhile.
pub fn run_script_json(
    python: &Path,
    script: &Path,
    args: &[String],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> Result<serde_json::Value> {
    let name = script
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let first = args.first().map_or("", String::as_str);
    let mut command = Command::new(python);
    command
        .arg(script)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child =
        spawn(command).map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    let mut stdout = child.stdout.take().ok_or("child stdout not piped")?;
    let mut stderr = child.stderr.take().ok_or("child stderr not piped")?;
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let last_err = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match status {
        None => Err(format!("{name} {first} timed out after {timeout:?}").into()),
        Some(status) if !status.success() => {
            // The last line says what failed; the lines before it (a child's
            // traceback, say) say why.
            let lines: Vec<&str> = err.lines().collect();
            let why = lines[lines.len().saturating_sub(STDERR_LINES_SHOWN)..].join("\n");
            eprintln!("bench: {name} {first} wrote to stderr before it failed:\n{why}");
            Err(format!("{name} {first} failed ({status}): {last_err}").into())
        }
        Some(_) => {
            let line = out
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .ok_or_else(|| format!("{name} {first} printed no result: {last_err}"))?;
            Ok(serde_json::from_str(line)?)
        }
    }
}

/// CPU time (user + system, all threads) of process `pid` ("self" for this
/// one) in seconds, from /proc/<pid>/stat; 0 when it cannot be read.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / per_second
}
