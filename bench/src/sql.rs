//! Scenario: SQL (the scenario 5). One query whose result is N rows
//! of four typed columns (INTEGER, REAL, TEXT, TIMESTAMP), fetched into
//! Arrow, in rows per second:
//!
//! * Busbar native: `Client::sql` (`Sql/Execute`, one Arrow IPC stream);
//! * Busbar Flight SQL: the stock ADBC Flight SQL driver from Python
//!   (`flight_peer.py sql`: `execute` + `fetch_arrow_table`, header
//!   `x-busbar-database`), against the same node and database.
//!
//! Both measure the query alone: the connection and login happen before the
//! clock starts.

use crate::ctx::Ctx;
use crate::procs::{self, Result};
use crate::report::{Better, Row};
use busbar_client::ResourceKind;
use std::time::{Duration, Instant};

const QUERY: &str = "SELECT id, value, name, at FROM readings";

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let n: usize = ctx.pick(50_000, 1_000_000);
    let turns = ctx.pick(2, 3);
    let timeout = ctx.pick(Duration::from_secs(30), Duration::from_secs(120));
    let database = "/home/admin/bench-sql";
    ctx.admin
        .create(database, ResourceKind::Database, true)
        .await?;
    ctx.admin
        .sql(
            database,
            "CREATE TABLE readings (id INTEGER PRIMARY KEY, value REAL NOT NULL, name TEXT NOT NULL, at TIMESTAMP NOT NULL)",
        )
        .await?;
    eprintln!("bench: sql, inserting {n} rows");
    ctx.admin
        .sql(
            database,
            busbar_client::Statement::new(
                "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?) \
                 INSERT INTO readings SELECT i, i * 0.25, 'sensor-' || (i % 1000), 1767225600000 + i * 1000 FROM seq",
            )
            .bind(n as i64),
        )
        .await?;

    let mut notes = vec![format!(
        "{QUERY}: {n} rows of INTEGER, REAL, TEXT, TIMESTAMP into Arrow; best of {turns} turns; connection and login before the clock"
    )];
    let client = ctx.busbar_client().await?;
    let python = procs::bench_python();
    let location = ctx.busbar_config.address.replace("https://", "grpc+tls://");
    let ca = ctx.work_dir.join("busbar-ca.pem");
    std::fs::write(&ca, ctx.busbar_config.ca_pem.as_deref().unwrap_or_default())?;
    let mut args = vec![
        "sql".to_string(),
        "--location".into(),
        location,
        "--ca".into(),
        ca.display().to_string(),
        "--database".into(),
        database.into(),
        "--query".into(),
        QUERY.into(),
    ];
    if let Some(name) = &ctx.busbar_config.server_name {
        args.extend(["--server-name".into(), name.clone()]);
    }
    if python.is_none() {
        notes.push("ADBC row skipped: no bench venv python (make bench installs .venv)".into());
    }

    let mut native = 0f64;
    let mut adbc: Option<f64> = None;
    let mut columns = String::new();
    for turn in 0..turns {
        eprintln!("bench: sql turn {}: native", turn + 1);
        let started = Instant::now();
        let result = client.sql(database, QUERY).await?;
        let seconds = started.elapsed().as_secs_f64();
        let rows: usize = result.batches.iter().map(|b| b.num_rows()).sum();
        if rows != n {
            return Err(format!("native query returned {rows} of {n} rows").into());
        }
        if let Some(schema) = &result.schema {
            columns = schema
                .fields()
                .iter()
                .map(|f| format!("{}", f.data_type()))
                .collect::<Vec<_>>()
                .join(", ");
        }
        native = native.max(n as f64 / seconds);

        let Some(python) = &python else { continue };
        eprintln!("bench: sql turn {}: ADBC Flight SQL", turn + 1);
        let envs = [("BUSBAR_BENCH_TOKEN", ctx.busbar_token.as_str())];
        match procs::run_python_json(python, &args, &envs, timeout) {
            Ok(out) => {
                let rows = out["rows"].as_u64().unwrap_or(0) as usize;
                match out["seconds"].as_f64() {
                    Some(seconds) if rows == n => {
                        let rate = n as f64 / seconds;
                        adbc = Some(adbc.map_or(rate, |best| best.max(rate)));
                    }
                    _ => notes.push(format!("ADBC returned {rows} of {n} rows: {out}")),
                }
            }
            Err(error) => notes.push(format!("ADBC turn failed: {error}")),
        }
    }
    notes.push(format!("Arrow columns (native): {columns}"));
    let _ = ctx.admin.rm(database, false).await;

    let label = crate::report::count_label(n);
    let row = Row::new(
        format!("sql {label}-row result to Arrow: native vs Flight SQL (ADBC)"),
        "rows/s",
        Better::Higher,
        native,
    )
    .peer("adbc", adbc);
    Ok(vec![notes.into_iter().fold(row, Row::note)])
}
