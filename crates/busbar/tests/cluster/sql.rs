//! SQL databases on a cluster: PostgreSQL schemas reached through any node,
//! in PostgreSQL's dialect, and user SQL held to its own schema: the
//! security suite's attacks, repeated against PostgreSQL.

use super::{Cluster, collected};
use crate::harness::{MALLORYS as MINE, assert_code, assert_denied, assert_error, payroll};
use busbar_client::{Client, ErrorCode, ProcedureArgs, ResourceKind, Right, Statement};
use std::time::{Duration, Instant};

const DB: &str = "/home/admin/shop";

async fn json(
    client: &Client,
    db: &str,
    statement: impl Into<Statement>,
) -> Vec<serde_json::Value> {
    client
        .sql_json(db, statement)
        .await
        .expect("the statement runs")
        .0
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn sql_written_through_one_node_is_read_through_another_in_postgresqls_dialect() {
    let cluster = Cluster::start(2);
    let (a, b) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    a.create(DB, ResourceKind::Database, false).await.unwrap();
    a.sql(
        DB,
        "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, price numeric(10, 2), \
         small int4, ok boolean, added timestamptz, day date, doc jsonb, key uuid, photo bytea, \
         ratio float8)",
    )
    .await
    .unwrap();
    // :name parameters (the embedded node's spelling) and $n both bind;
    // text is read as whatever the column is (numeric, date, jsonb, uuid).
    let inserted = a
        .sql(
            DB,
            Statement::new(
                "INSERT INTO items (name, price, small, ok, added, day, doc, key, photo, ratio) \
                 VALUES (:name, :price, :small, :ok, :added, :day, :doc, :key, :photo, :ratio) \
                 RETURNING id",
            )
            .bind_named("name", "lamp")
            .bind_named("price", "19.90")
            .bind_named("small", 7i64)
            .bind_named("ok", true)
            .bind_named(
                "added",
                busbar_client::SqlParam::TimestampMs(1_700_000_000_123),
            )
            .bind_named("day", "2024-02-29")
            .bind_named("doc", r#"{"color": "red"}"#)
            .bind_named("key", "5f0e8c1a-9b7d-4c2e-8a6f-1d3b5c7e9f00")
            .bind_named("photo", vec![0u8, 159, 146, 150])
            .bind_named("ratio", 0.25),
        )
        .await
        .unwrap();
    assert_eq!(inserted.summary.rows, 1);
    a.sql(
        DB,
        Statement::new("INSERT INTO items (name, price) VALUES ($1, $2), ($3, NULL)")
            .bind("desk")
            .bind(120i64)
            .bind("chair"),
    )
    .await
    .unwrap();

    // Read through the other node: the same rows, typed as Arrow.
    let read = b.sql(DB, "SELECT * FROM items ORDER BY id").await.unwrap();
    assert_eq!(read.summary.rows, 3);
    let schema = read.schema.clone().expect("columns");
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        [
            "id:Int64",
            "name:Utf8",
            "price:Utf8",
            "small:Int32",
            "ok:Boolean",
            "added:Timestamp(µs, \"UTC\")",
            "day:Date32",
            "doc:Utf8",
            "key:Utf8",
            "photo:Binary",
            "ratio:Float64",
        ]
    );
    let rows = json(
        &b,
        DB,
        "SELECT name, price, small, ok, doc, key, ratio FROM items ORDER BY id",
    )
    .await;
    assert_eq!(
        rows[0],
        serde_json::json!({"name": "lamp", "price": "19.90", "small": 7, "ok": true,
            "doc": "{\"color\": \"red\"}", "key": "5f0e8c1a-9b7d-4c2e-8a6f-1d3b5c7e9f00", "ratio": 0.25})
    );
    assert_eq!(rows[1]["price"], "120.00");
    assert!(rows[2]["price"].is_null());

    // Bad input: clear errors, nothing changed.
    assert_code(b.sql(DB, "SELEC 1").await, ErrorCode::InvalidArgument);
    assert_error(
        b.sql(DB, Statement::new("SELECT $1, $2").bind(1i64)).await,
        ErrorCode::InvalidArgument,
        "takes 2 parameters",
    );
    assert_error(
        b.sql(DB, "SELECT 1; DELETE FROM items").await,
        ErrorCode::InvalidArgument,
        "one statement per call",
    );
    assert_error(
        b.sql(DB, "SELECT '1 day'::interval AS span").await,
        ErrorCode::InvalidArgument,
        "cast it",
    );
    assert_code(
        b.sql(DB, "INSERT INTO items (id, name) VALUES (1, 'again')")
            .await,
        ErrorCode::AlreadyExists,
    );
    // executemany is all or none: the third row fails, none are kept.
    let many = b
        .sql_many(
            DB,
            "INSERT INTO items (name) VALUES ($1)",
            [
                Statement::new("").bind("x"),
                Statement::new("").bind("y"),
                Statement::new("").bind(busbar_client::SqlParam::Null),
            ],
        )
        .await;
    assert_code(many, ErrorCode::FailedPrecondition);
    assert_eq!(
        json(&a, DB, "SELECT count(*) AS n FROM items").await[0]["n"],
        3
    );

    // Procedures: made through one node, run through the other, atomic.
    a.create_procedure(
        DB,
        "restock",
        &["name", "price"],
        "INSERT INTO items (name, price) VALUES (:name, :price);\n\
         SELECT count(*) AS n, max(price) AS top FROM items WHERE name = :name",
        false,
    )
    .await
    .unwrap();
    let ran = b
        .run_procedure_json(
            DB,
            "restock",
            ProcedureArgs::new()
                .kwarg("name", "stool")
                .kwarg("price", "5.50"),
        )
        .await
        .unwrap();
    assert_eq!(ran.0, [serde_json::json!({"n": 1, "top": "5.50"})]);
    let failed = b
        .run_procedure(
            DB,
            "restock",
            ProcedureArgs::new()
                .kwarg("name", "stool")
                .kwarg("price", "not a number"),
        )
        .await;
    assert_error(
        failed,
        ErrorCode::InvalidArgument,
        "procedure restock statement 1",
    );
    assert_eq!(
        json(&a, DB, "SELECT count(*) AS n FROM items").await[0]["n"],
        4
    );

    // A session: its writes are its own until commit; a failed statement
    // leaves its earlier work; rollback keeps nothing.
    let session = b.session().await.unwrap();
    session
        .sql(DB, "INSERT INTO items (name) VALUES ('in session')")
        .await
        .unwrap();
    assert_code(
        session.sql(DB, "SELECT 1/0").await,
        ErrorCode::InvalidArgument,
    );
    let seen = json(&session, DB, "SELECT count(*) AS n FROM items").await;
    assert_eq!(seen[0]["n"], 5, "the session sees its own insert");
    assert_eq!(
        json(&a, DB, "SELECT count(*) AS n FROM items").await[0]["n"],
        4
    );
    session.commit().await.unwrap();
    assert_eq!(
        json(&a, DB, "SELECT count(*) AS n FROM items").await[0]["n"],
        5
    );
    let session = a.session().await.unwrap();
    session.sql(DB, "DELETE FROM items").await.unwrap();
    session.rollback().await.unwrap();
    assert_eq!(
        json(&b, DB, "SELECT count(*) AS n FROM items").await[0]["n"],
        5
    );

    // Deleting the database drops its schema and roles.
    let id = a.get(DB).await.unwrap().id;
    let hex: String = id.chars().filter(char::is_ascii_hexdigit).collect();
    a.rm(DB, false).await.unwrap();
    a.create("/home/admin/other", ResourceKind::Database, false)
        .await
        .unwrap();
    let left = json(
        &b,
        "/home/admin/other",
        Statement::new(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname LIKE :roles) AS roles, \
             (SELECT count(*) FROM pg_namespace WHERE nspname = :schema) AS schemas",
        )
        .bind_named("roles", format!("bb_{}%", hex.to_lowercase()))
        .bind_named("schema", format!("db_{}", hex.to_lowercase())),
    )
    .await;
    assert_eq!(left[0], serde_json::json!({"roles": 0, "schemas": 0}));
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn user_sql_on_postgresql_reaches_only_its_own_schema() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let (admin, mallory) = node.mallory().await;
    let payroll = payroll(&admin).await;
    let theirs: String = payroll.id.chars().filter(char::is_ascii_hexdigit).collect();
    let stolen = node.dir.path().join("stolen.txt");

    let attacks = [
        // The node's metadata and secrets.
        "SELECT * FROM busbar.secrets".to_string(),
        "SELECT * FROM busbar.identities".to_string(),
        // The nodes' locks (row locks, not advisory ones any role could hold).
        "LOCK TABLE busbar.locks".to_string(),
        "SELECT * FROM busbar.locks FOR UPDATE".to_string(),
        // Another identity's database.
        format!("SELECT * FROM db_{}.pay", theirs.to_lowercase()),
        // The server's files and programs.
        "SELECT pg_read_file('/etc/passwd')".to_string(),
        "SELECT pg_ls_dir('.')".to_string(),
        "SELECT lo_import('/etc/passwd')".to_string(),
        format!("COPY t TO '{}'", stolen.display()),
        "COPY t FROM PROGRAM 'id'".to_string(),
        // Other roles and privileges.
        "SET ROLE busbar".to_string(),
        "SET SESSION AUTHORIZATION busbar".to_string(),
        "CREATE ROLE sneaky LOGIN SUPERUSER".to_string(),
        "ALTER ROLE CURRENT_USER SUPERUSER".to_string(),
        "CREATE SCHEMA elsewhere".to_string(),
        // The node's transactions.
        "BEGIN".to_string(),
        "COMMIT".to_string(),
        "ROLLBACK".to_string(),
        "SAVEPOINT s".to_string(),
    ];
    let session = mallory.session().await.unwrap();
    for attack in &attacks {
        assert_denied(mallory.sql(MINE, attack.as_str()).await, "");
        assert_denied(session.sql(MINE, attack.as_str()).await, "");
    }
    session.rollback().await.unwrap();
    // RESET ROLE changes nothing either: the login role is the boundary.
    mallory.sql(MINE, "RESET ROLE").await.unwrap();
    assert_denied(mallory.sql(MINE, "SELECT * FROM busbar.secrets").await, "");
    assert!(!stolen.exists(), "COPY wrote {}", stolen.display());
    // Extensions that reach outside cannot be made.
    assert!(mallory.sql(MINE, "CREATE EXTENSION dblink").await.is_err());
    assert!(
        mallory
            .sql(MINE, "CREATE EXTENSION file_fdw")
            .await
            .is_err()
    );

    // Read rights are a role that cannot write, however the transaction is set.
    let bob = node
        .new_user_granted(&admin, "bob", "bob-password", MINE, Right::Read)
        .await;
    json(&bob, MINE, "SELECT count(*) AS n FROM t").await;
    assert_denied(bob.sql(MINE, "INSERT INTO t VALUES (1)").await, "");
    let bobs = bob.session().await.unwrap();
    bobs.sql(MINE, "SET TRANSACTION READ WRITE").await.ok();
    assert_denied(bobs.sql(MINE, "INSERT INTO t VALUES (1)").await, "");
    assert_denied(bobs.sql(MINE, "DROP TABLE t").await, "");
    drop(bobs);
    assert_eq!(
        json(&mallory, MINE, "SELECT count(*) AS n FROM t").await[0]["n"],
        0
    );

    // A runaway statement stops at the call's deadline, even with
    // statement_timeout switched off by the user, and PostgreSQL stops it.
    mallory
        .sql(MINE, "SET statement_timeout = 0")
        .await
        .unwrap();
    let timed = mallory.with_timeout(Duration::from_secs(2));
    for runaway in [
        "SELECT pg_sleep(30)",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    ] {
        let started = Instant::now();
        assert_code(timed.sql(MINE, runaway).await, ErrorCode::Timeout);
        assert!(started.elapsed() < Duration::from_secs(6), "{runaway}");
    }
    // Also when its caller goes away.
    let caller = mallory.clone();
    let running = tokio::spawn(async move { caller.sql(MINE, "SELECT pg_sleep(31)").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.abort();
    // The database's own role sees its own sessions in pg_stat_activity.
    let still = "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE query LIKE 'SELECT pg_sleep(3%' AND state = 'active'";
    crate::harness::eventually("PostgreSQL stops the abandoned statements", || async {
        let n = json(&mallory, MINE, still).await[0]["n"].as_i64();
        if n == Some(0) {
            Ok(())
        } else {
            Err(format!("{n:?} still running"))
        }
    })
    .await;
}

/// The value of column `column` of the first row of a SQL result.
fn first_i64(result: &busbar_client::SqlResult, column: usize) -> i64 {
    use arrow_array::cast::AsArray;
    result.batches[0]
        .column(column)
        .as_primitive::<arrow_array::types::Int64Type>()
        .value(0)
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_keyed_write_is_applied_once_whichever_node_gets_it_again() {
    let mut cluster = Cluster::start(2);
    let (a, b) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    a.create(DB, ResourceKind::Database, false).await.unwrap();
    a.sql(DB, "CREATE TABLE t (id bigserial PRIMARY KEY, v int)")
        .await
        .unwrap();
    let count = |client: Client| async move {
        json(&client, DB, "SELECT count(*) AS n FROM t").await[0]["n"]
            .as_i64()
            .unwrap()
    };

    // One key, sent through each node: applied once, the first outcome
    // (the id it made) given back each time.
    let insert = "INSERT INTO t (v) VALUES (1) RETURNING id";
    let mut outcomes = Vec::new();
    for node in [&a, &b] {
        let keyed = node.with_idempotency_key("order-1").unwrap();
        outcomes.push(keyed.sql(DB, insert).await.unwrap());
    }
    let (first, again) = (&outcomes[0], &outcomes[1]);
    assert_eq!(first_i64(first, 0), first_i64(again, 0));
    assert_eq!(again.summary.rows_affected, 1);
    assert_eq!(count(a.clone()).await, 1);
    // executemany and procedures likewise.
    let many = || {
        [1i64, 2, 3]
            .into_iter()
            .map(|v| Statement::new("").bind(v))
            .collect::<Vec<_>>()
    };
    for client in [&a, &b] {
        let summary = client
            .with_idempotency_key("batch-1")
            .unwrap()
            .sql_many(DB, "INSERT INTO t (v) VALUES ($1)", many())
            .await
            .unwrap();
        assert_eq!(summary.rows_affected, 3);
    }
    // A procedure made again under its key through the other node is the
    // first one; under another key the name is taken.
    let mut made = Vec::new();
    for client in [&a, &b] {
        let procedure = client
            .with_idempotency_key("make-add")
            .unwrap()
            .create_procedure(DB, "add", &["v"], "INSERT INTO t (v) VALUES (:v)", false)
            .await
            .unwrap();
        made.push(procedure.created_ms);
    }
    assert_eq!(made[0], made[1], "the first try's procedure");
    assert_error(
        b.create_procedure(DB, "add", &["v"], "SELECT :v", false)
            .await,
        ErrorCode::AlreadyExists,
        "a procedure named add exists",
    );
    for client in [&a, &b] {
        client
            .with_idempotency_key("proc-1")
            .unwrap()
            .run_procedure(DB, "add", ProcedureArgs::new().kwarg("v", 9i64))
            .await
            .unwrap();
    }
    assert_eq!(count(a.clone()).await, 5);
    // The same key with another request is refused and changes nothing.
    assert_error(
        b.with_idempotency_key("order-1")
            .unwrap()
            .sql(DB, "INSERT INTO t (v) VALUES (2) RETURNING id")
            .await,
        ErrorCode::InvalidArgument,
        "used for another call",
    );
    assert_eq!(count(a.clone()).await, 5);
    // A key is its caller's own: another identity's same key is another call.
    let bob = cluster.nodes[0]
        .new_user_granted(&a, "bob", "bob-password", DB, Right::Write)
        .await;
    bob.with_idempotency_key("order-1")
        .unwrap()
        .sql(DB, insert)
        .await
        .unwrap();
    assert_eq!(count(a.clone()).await, 6);
    // Reads are not recorded: a key used for a read can still key a write.
    let read = b.with_idempotency_key("read-then-write").unwrap();
    json(&read, DB, "SELECT count(*) AS n FROM t").await;
    read.sql(DB, insert).await.unwrap();
    assert_eq!(count(a.clone()).await, 7);
    // A keyed statement that reads by its first word but writes after all
    // (a data-modifying WITH, a function that inserts) goes out as a read,
    // is rolled back when it is found to have written, and runs again
    // keyed: applied once, through either node.
    a.sql(
        DB,
        "CREATE FUNCTION add_five() RETURNS bigint LANGUAGE sql \
         AS 'INSERT INTO t (v) VALUES (5) RETURNING id'",
    )
    .await
    .unwrap();
    a.sql(DB, "CREATE SEQUENCE tickets").await.unwrap();
    for (key, sql) in [
        (
            "with-1",
            "WITH made AS (INSERT INTO t (v) VALUES (4) RETURNING id) SELECT id FROM made",
        ),
        ("function-1", "SELECT add_five() AS id"),
        // nextval writes no row and takes no transaction id, yet a repeat
        // must get the first number (the repeat's own draw is a gap, as
        // with any rolled-back nextval).
        ("sequence-1", "SELECT nextval('tickets') AS id"),
    ] {
        let mut ids = Vec::new();
        for node in [&a, &b] {
            let outcome = node.with_idempotency_key(key).unwrap().sql(DB, sql).await;
            ids.push(first_i64(&outcome.unwrap(), 0));
        }
        assert_eq!(ids[0], ids[1], "{sql}: the first outcome given again");
    }
    assert_eq!(count(a.clone()).await, 9);
    // Bad keys are refused before anything is sent.
    assert!(a.with_idempotency_key("has space").is_err());
    assert!(a.with_idempotency_key("").is_err());

    // A write in flight when its node dies: the client, given both nodes,
    // sends it again to the other with the same key; applied once.
    let mut config = cluster.nodes[0].admin_json();
    config["addresses"] = serde_json::json!([cluster.nodes[1].address]);
    let path = cluster.nodes[0].dir.path().join("both.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let client = Client::from_config_file(&path).await.unwrap();
    let slow = "INSERT INTO t (v) SELECT 42 FROM pg_sleep(1.5) RETURNING id";
    let writing = tokio::spawn(async move { client.sql(DB, slow).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes[0].kill9();
    let written = writing.await.unwrap().expect("retried on the other node");
    assert_eq!(written.summary.rows, 1);
    let fortytwo = json(&b, DB, "SELECT count(*) AS n FROM t WHERE v = 42").await;
    assert_eq!(fortytwo[0]["n"], 1, "applied exactly once");
}

/// A call's statement goes out in one round trip with its `BEGIN` and its
/// `COMMIT`: it must still run between them, inside the call's own
/// transaction (where `SET LOCAL` gave it the call's deadline), whoever
/// calls: a keyed writer, a caller holding read, a stock client with no key.
#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_statement_runs_inside_its_own_transaction() {
    let (cluster, admin) = one_node_with_a_database().await;
    let reader = cluster.nodes[0]
        .new_user_granted(&admin, "rita", "rita-password", DB, Right::Read)
        .await;
    let inside = "SELECT current_setting('statement_timeout') AS timeout";
    for client in [&admin, &reader] {
        let rows = json(client, DB, inside).await;
        assert_ne!(rows[0]["timeout"], "0", "{rows:?}");
    }
    let show = json(&reader, DB, "SHOW statement_timeout").await;
    assert_ne!(show[0]["statement_timeout"], "0", "{show:?}");
    // No key: a stock client's call (the dynamic one sends none).
    let request =
        serde_json::json!({"database": DB, "sql": inside, "format": "RESULT_FORMAT_JSON"});
    let replies = collected(
        admin
            .stream("busbar.v1.Sql/Execute", Some(request))
            .await
            .unwrap(),
    )
    .await;
    let text = replies[0]["json_rows"]
        .as_str()
        .unwrap_or_else(|| panic!("{replies:?}"));
    let rows: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
    assert_ne!(rows[0]["timeout"], "0", "{rows:?}");
    // A reader's transaction is read only, whatever the statement.
    assert_denied(
        reader.sql(DB, "CREATE TABLE nope (x int)").await,
        "only read",
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn flight_sql_reaches_a_cluster_database_through_either_node() {
    let cluster = Cluster::start(2);
    let a = cluster.admin_on(0).await;
    a.create(DB, ResourceKind::Database, false).await.unwrap();
    a.sql(DB, "CREATE TABLE t (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    for n in 0..2 {
        // A stock Flight SQL client (arrow-flight's), as ADBC drives it.
        let (channel, user, password) = cluster.channel_to(n).await;
        let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
        client.handshake(&user, &password).await.unwrap();
        client.set_header("x-busbar-database", DB);
        let inserted = client
            .execute_update(
                format!("INSERT INTO t VALUES ({n}, 'through node {n}')"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(inserted, 1);
        let info = client
            .execute("SELECT id, name FROM t ORDER BY id".into(), None)
            .await
            .unwrap();
        let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
        let batches = collected(client.do_get(ticket).await.unwrap()).await;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, n + 1, "what either node wrote, through node {n}");
        // Bad SQL is a clear error and changes nothing.
        let bad = client
            .execute_update("INSERT INTO nowhere VALUES (1)".into(), None)
            .await;
        assert!(bad.is_err(), "an unknown table is refused");
    }
    assert_eq!(json(&a, DB, "SELECT count(*) AS n FROM t").await[0]["n"], 2);
}

/// Thousands of calls from concurrent tasks over one connection, each
/// ending its HTTP/2 stream cleanly. (A client that dropped a result as
/// soon as it had the summary reset the stream while the node's trailers
/// were on the way; h2 took the frames that then arrived as abuse and,
/// past about a thousand, closed the connection with
/// `too_many_internal_resets`, failing every call on it. A cluster node's
/// summary waits for the COMMIT, which opens that gap.)
#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn thousands_of_concurrent_statements_share_one_connection_to_the_end() {
    let (_cluster, admin) = one_node_with_a_database().await;
    let callers = (0..8i64).map(|caller| {
        let admin = admin.clone();
        tokio::spawn(async move {
            for n in 0..1500i64 {
                let result = admin
                    .sql(
                        DB,
                        Statement::new("SELECT $1::bigint AS n").bind(caller * 10_000 + n),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("call {n} of caller {caller}: {e}"));
                assert_eq!(first_i64(&result, 0), caller * 10_000 + n);
            }
        })
    });
    for caller in futures::future::join_all(callers).await {
        caller.unwrap();
    }
}

/// One node, and its admin with the database at [`DB`].
async fn one_node_with_a_database() -> (Cluster, Client) {
    let cluster = Cluster::start(1);
    let admin = cluster.admin_on(0).await;
    admin
        .create(DB, ResourceKind::Database, false)
        .await
        .unwrap();
    (cluster, admin)
}
