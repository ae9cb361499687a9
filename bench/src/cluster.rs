//! Scenario: a cluster (issue 24's rows). Two `busbar serve` nodes sharing
//! one PostgreSQL (Debian's package, `initdb` into the work directory) and
//! the benchmark's NATS, each compared with the engine it adds to:
//!
//! * fan-out: a publisher on node A, subscribers on node B (one room), against
//!   the same publisher and subscribers on NATS alone;
//! * SQL statements per second through node A (a cluster database, 8 callers)
//!   against the same statements sent straight to the same PostgreSQL with
//!   tokio-postgres over 8 connections, each statement prepared once per
//!   connection (what a stock driver's user does);
//! * failover: a client given both nodes; the node it uses is killed with
//!   SIGKILL, and the time to its first successful call on the other is
//!   taken, p50 and p99 over repeats.

use crate::ctx::Ctx;
use crate::procs::{self, Result};
use crate::report::{Better, Row, Target};
use crate::stats::Samples;
use busbar_client::{Client, ClientConfig, ConnectOptions, ResourceKind, Statement};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Concurrent SQL callers on each side.
const CALLERS: usize = 8;

/// A PostgreSQL server in the work directory, stopped on drop.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            // PostgreSQL refuses to run as root.
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn start(dir: &Path) -> Result<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "PostgreSQL is not installed (apt-get install -y postgresql)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .ok_or("PostgreSQL's initdb is not installed (apt-get install -y postgresql)")?;
        std::fs::create_dir_all(dir)?;
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let pg = Postgres {
            bin,
            data: dir.join("pg"),
            port: procs::free_port()?,
            as_postgres,
        };
        if as_postgres {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()?;
        }
        let initdb = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "busbar", "-A", "trust", "--no-sync"])
            .output()?;
        if !initdb.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&initdb.stderr)).into());
        }
        // The nodes' own user is trusted on loopback; the databases' roles
        // log in with their passwords, as in production.
        let hba = "local all all trust\nhost all busbar 127.0.0.1/32 trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        let hba_path = pg.data.join("pg_hba.conf");
        if as_postgres {
            let status = Command::new("runuser")
                .args(["-u", "postgres", "--", "sh", "-c"])
                .arg(format!(
                    "printf '{}' > {}",
                    hba.replace('\n', "\\n"),
                    hba_path.display()
                ))
                .status()?;
            if !status.success() {
                return Err("writing pg_hba.conf failed".into());
            }
        } else {
            std::fs::write(&hba_path, hba)?;
        }
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            pg.port,
            dir.display()
        );
        let started = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .args(["-w", "-o", &options, "-l"])
            .arg(dir.join("pg.log"))
            .arg("start")
            .output()?;
        if !started.status.success() {
            return Err(
                format!("pg_ctl start: {}", String::from_utf8_lossy(&started.stderr)).into(),
            );
        }
        Ok(pg)
    }

    fn url(&self) -> String {
        format!("postgres://busbar@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A cluster node that can be killed and started again on its port.
struct Node {
    binary: PathBuf,
    data: PathBuf,
    listen: String,
    extra: Vec<String>,
    running: Option<procs::Busbar>,
}

impl Node {
    fn start(binary: &Path, data: PathBuf, extra: Vec<String>) -> Result<Node> {
        let listen = format!("127.0.0.1:{}", procs::free_port()?);
        let mut node = Node {
            binary: binary.to_path_buf(),
            data,
            listen,
            extra,
            running: None,
        };
        node.restart()?;
        Ok(node)
    }

    fn restart(&mut self) -> Result<()> {
        self.running = None;
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.running = Some(procs::Busbar::start_with(
            &self.binary,
            &self.data,
            &self.listen,
            &extra,
        )?);
        Ok(())
    }

    fn kill(&mut self) {
        self.running = None; // the guard kills with SIGKILL
    }

    fn address(&self) -> &str {
        self.running.as_ref().map_or("", |b| b.address.as_str())
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let (Some(nats_url), Some(ca)) = (&ctx.nats_url, Some(&ctx.tls.ca)) else {
        return Err("the cluster rows need nats-server (make bench installs it)".into());
    };
    let dir = ctx.work_dir.join("cluster");
    let pg = Postgres::start(&dir)?;
    let extra = vec![
        "--store".to_string(),
        pg.url(),
        "--bus".into(),
        nats_url.clone(),
        "--bus-ca".into(),
        ca.display().to_string(),
    ];
    let mut nodes = vec![
        Node::start(&ctx.busbar_binary, dir.join("a"), extra.clone())?,
        Node::start(&ctx.busbar_binary, dir.join("b"), extra)?,
    ];
    let admin_json = nodes[0]
        .running
        .as_ref()
        .expect("started")
        .admin_config
        .clone();
    let config_a = ClientConfig::from_file(&admin_json)?;
    let admin = Client::from_config_file(&admin_json).await?;
    let (token, _) = admin.create_token("bench-cluster", None).await?;
    let connect = |address: &str, also: Vec<String>| {
        let mut config = config_a.clone();
        config.address = address.to_string();
        let token = token.clone();
        async move {
            Ok::<Client, procs::BoxError>(
                ConnectOptions::from_config(&config)?
                    .token(token)
                    .addresses(also)
                    .connect_timeout(Duration::from_secs(10))
                    .connect()
                    .await?,
            )
        }
    };

    let mut rows = Vec::new();
    rows.extend(fanout(ctx, &admin, &connect, &nodes).await?);
    rows.extend(sql(ctx, &admin, &connect, &nodes, &pg).await?);
    rows.push(failover(ctx, &connect, &mut nodes).await?);
    drop(nodes);
    drop(pg);
    Ok(rows)
}

async fn fanout<F, Fut>(ctx: &Ctx, admin: &Client, connect: &F, nodes: &[Node]) -> Result<Vec<Row>>
where
    F: Fn(&str, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Client>>,
{
    let subscribers = 10;
    let total: u64 = ctx.pick(20_000, 100_000);
    let cap = ctx.pick(Duration::from_secs(6), Duration::from_secs(20));
    let publisher = connect(nodes[0].address(), Vec::new()).await?;
    let mut on_b = Vec::new();
    for _ in 0..subscribers {
        on_b.push(connect(nodes[1].address(), Vec::new()).await?);
    }
    let nats_publisher = ctx.nats_client().await?.ok_or("NATS went away")?;
    let mut nats_subscribers = Vec::new();
    for _ in 0..subscribers {
        nats_subscribers.push(ctx.nats_client().await?.ok_or("NATS went away")?);
    }
    admin.mkdir("/home/admin/bench-cluster", true).await?;
    let run = crate::fanout::Run {
        ctx,
        size: 64,
        total,
        cap,
    };
    let turns = ctx.pick(1, 3);
    let (mut busbar_turns, mut nats_turns) = (Vec::new(), Vec::new());
    for turn in 0..turns {
        let room = format!("/home/admin/bench-cluster/r{turn}");
        busbar_turns.push(run.busbar_with(admin, &publisher, &on_b, &room).await?);
        let subject = format!("bench.cluster.{turn}");
        nats_turns.push(
            run.nats(&nats_publisher, &nats_subscribers, subject)
                .await?,
        );
    }
    let busbar = crate::fanout::RunResult::median(busbar_turns);
    let nats = crate::fanout::RunResult::median(nats_turns);
    let mut row = Row::new(
        format!("cluster fan-out A→B, {subscribers} sub, 64 B: delivered"),
        "msgs/s",
        Better::Higher,
        busbar.rate,
    )
    .peer("nats", Some(nats.rate))
    .target(Target::ratio_at_least("nats", 0.8))
    .note(format!(
        "cluster: publisher on node A, {subscribers} subscribers on node B (one room), events between the nodes over NATS; peer: the same clients on that NATS alone; {total} messages, median of {turns} turn(s)"
    ));
    for note in busbar.notes.iter().chain(&nats.notes) {
        row = row.note(note.clone());
    }
    Ok(vec![row])
}

/// Runs `statements` calls of `call` from [`CALLERS`] tasks; statements per second.
async fn per_second<F, Fut>(statements: u64, call: F) -> Result<f64>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let (call, next) = (call.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= statements {
                    return Ok::<(), procs::BoxError>(());
                }
                call(caller, n).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(statements as f64 / started.elapsed().as_secs_f64())
}

async fn sql<F, Fut>(
    ctx: &Ctx,
    admin: &Client,
    connect: &F,
    nodes: &[Node],
    pg: &Postgres,
) -> Result<Vec<Row>>
where
    F: Fn(&str, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Client>>,
{
    let database = "/home/admin/bench-cluster-sql";
    let created = admin.create(database, ResourceKind::Database, true).await?;
    admin
        .sql(
            database,
            "CREATE TABLE kv (k bigint PRIMARY KEY, v text NOT NULL)",
        )
        .await?;
    admin
        .sql(
            database,
            "INSERT INTO kv SELECT i, 'value-' || i FROM generate_series(1, 10000) i",
        )
        .await?;
    // The same table, reached straight: the schema of the database.
    let schema = format!(
        "db_{}",
        created
            .id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .collect::<String>()
            .to_lowercase()
    );
    let mut direct = Vec::new();
    for _ in 0..CALLERS {
        let (client, connection) =
            tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path = {schema}"))
            .await?;
        direct.push(Arc::new(client));
    }
    let node = Arc::new(connect(nodes[0].address(), Vec::new()).await?);
    let statements: u64 = ctx.pick(3_000, 20_000);
    let mut rows = Vec::new();
    for (label, sql) in [
        ("point SELECT", "SELECT v FROM kv WHERE k = $1"),
        ("UPDATE", "UPDATE kv SET v = 'x' WHERE k = $1"),
    ] {
        let through = {
            let node = node.clone();
            per_second(statements, move |_, n| {
                let node = node.clone();
                async move {
                    let key = (n % 10_000 + 1) as i64;
                    node.sql(database, Statement::new(sql).bind(key)).await?;
                    Ok(())
                }
            })
            .await?
        };
        let mut prepared = Vec::new();
        for client in &direct {
            prepared.push(client.prepare(sql).await?);
        }
        let (direct, prepared) = (direct.clone(), Arc::new(prepared));
        let straight = per_second(statements, move |caller, n| {
            let (client, statement) = (direct[caller].clone(), prepared[caller].clone());
            async move {
                let key = (n % 10_000 + 1) as i64;
                client.query(&statement, &[&key]).await?;
                Ok(())
            }
        })
        .await?;
        rows.push(
            Row::new(
                format!("cluster SQL {label}, {CALLERS} callers: statements"),
                "stmt/s",
                Better::Higher,
                through,
            )
            .peer("postgres", Some(straight))
            .target(Target::ratio_at_least("postgres", 0.7))
            .note(format!(
                "cluster SQL: `{sql}` through node A (Sql/Execute, its own transaction, as the database's role; writes keep their idempotency key) vs tokio-postgres straight to the same server, prepared once per connection; {CALLERS} concurrent callers, {statements} statements"
            )),
        );
    }
    admin.rm(database, false).await?;
    Ok(rows)
}

async fn failover<F, Fut>(ctx: &Ctx, connect: &F, nodes: &mut [Node]) -> Result<Row>
where
    F: Fn(&str, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Client>>,
{
    let repeats = ctx.pick(3, 10);
    let mut samples = Samples::default();
    for repeat in 0..repeats {
        let (dies, lives) = (repeat % 2, 1 - repeat % 2);
        let client = connect(
            nodes[dies].address(),
            vec![nodes[lives].address().to_string()],
        )
        .await?;
        client.whoami().await?;
        let killed = Instant::now();
        nodes[dies].kill();
        loop {
            if client.whoami().await.is_ok() {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                return Err("no call succeeded on the other node within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(killed.elapsed());
        nodes[dies].restart()?;
    }
    Ok(Row::new(
        "cluster failover: kill -9 → first call on the other node, p99",
        "ms",
        Better::Lower,
        samples.percentile_us(99.0) / 1000.0,
    )
    .target(Target::absolute_at_most(2000.0))
    .note(format!(
        "failover: a client given both nodes calls whoami; its node is killed with SIGKILL and the time to its first successful call (on the other node) is taken; {repeats} repeats, p50 {:.0} ms",
        samples.percentile_us(50.0) / 1000.0
    )))
}
