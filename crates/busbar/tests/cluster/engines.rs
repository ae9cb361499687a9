//! Real PostgreSQL and NATS servers for the cluster tests, from Debian's
//! packages (`make test-cluster` installs them): each on a free loopback
//! port with its data in a temp directory, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// PostgreSQL refuses to run as root; as root, its commands run as the
/// `postgres` user the Debian package creates.
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server is installed (make test-cluster installs it)")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with initdb")
}

/// A CA and a certificate it issued for 127.0.0.1, as PEM files in `dir`
/// (`ca.pem`, `server.pem`, `server.key`), for the engines' TLS.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn write(dir: &Path) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca = TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&ca.ca, ca_cert.pem()).unwrap();
        std::fs::write(&ca.cert, cert.pem()).unwrap();
        std::fs::write(&ca.key, key.serialize_pem()).unwrap();
        // PostgreSQL reads its key only when no one else may.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ca.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        ca
    }
}

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    tls: Option<TestCa>,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// With `tls`, the server takes TLS connections only (`hostssl`), with
    /// a certificate from a CA of the test's own ([`Postgres::tls`]).
    pub fn start_with(tls: bool) -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("pg");
        std::fs::create_dir(&data).unwrap();
        let tls = tls.then(|| TestCa::write(dir.path()));
        // Owned by whoever runs the server (postgres, under root).
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let bin = postgres_bin();
        let initdb = as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "busbar", "-A", "trust", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        // The node's own user is trusted on loopback; every other role (the
        // SQL databases' roles) logs in with its password, as in production.
        let host = if tls.is_some() { "hostssl" } else { "host" };
        let hba = format!(
            "local all all trust\n{host} all busbar 127.0.0.1/32 trust\n\
             {host} all all 127.0.0.1/32 scram-sha-256\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
            tls,
        };
        pg.ctl("start");
        wait_for_port(pg.port, "PostgreSQL");
        pg
    }

    /// Runs `sql` as the node's PostgreSQL user over the server's socket
    /// (for a test to play a node that died halfway through something).
    pub fn psql(&self, sql: &str) {
        let out = as_postgres(&self.bin.join("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "busbar",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server at once (as a crash would), keeping its data.
    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        self.ctl("start");
        wait_for_port(self.port, "PostgreSQL");
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("pg");
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if let Some(tls) = &self.tls {
            options += &format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                tls.cert.display(),
                tls.key.display()
            );
        }
        let mut command = as_postgres(&self.bin.join("pg_ctl"));
        command.arg("-D").arg(&data).args(["-w", "-m", "immediate"]);
        if action == "start" {
            command
                .args(["-o", &options, "-l"])
                .arg(self.dir.path().join("pg.log"));
        }
        let status = command
            .arg(action)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(
            status.success() || action == "stop",
            "pg_ctl {action} failed"
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://busbar@127.0.0.1:{}/postgres", self.port)
    }

    /// The CA of its certificate, when it serves TLS.
    pub fn tls(&self) -> Option<&TestCa> {
        self.tls.as_ref()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.ctl("stop");
    }
}

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    tls: Option<(tempfile::TempDir, TestCa)>,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_with(false)
    }

    /// With `tls`, clients must speak TLS, to a certificate from a CA of
    /// the test's own ([`Nats::ca`]).
    pub fn start_with(tls: bool) -> Nats {
        let tls = tls.then(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let ca = TestCa::write(dir.path());
            (dir, ca)
        });
        let mut nats = Nats {
            child: None,
            port: free_port(),
            tls,
        };
        nats.restart();
        nats
    }

    /// Starts it (again) on its port.
    pub fn restart(&mut self) {
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .unwrap_or("nats-server");
        let mut command = Command::new(program);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((_, ca)) = &self.tls {
            command
                .arg("--tlscert")
                .arg(&ca.cert)
                .arg("--tlskey")
                .arg(&ca.key);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (make test-cluster installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "nats-server");
    }

    /// Kills it at once.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA of its certificate, when it serves TLS.
    pub fn ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(_, ca)| ca.ca.as_path())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
