//! Stored procedures and data sessions: arguments by position or name,
//! atomic runs, isolation between sessions, commit, rollback, expiry.

use crate::harness::{
    Node, assert_denied, assert_error, assert_unordered_points_refused, points_in,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use busbar_client::{
    Client, ErrorCode, Interval, ProcedureArgs, Resolution, Right, SeriesSpec, flags, points,
};

const DB: &str = "/home/admin/bank";

async fn bank(node: &Node) -> Client {
    node.admin_with_database(
        DB,
        &[
            "CREATE TABLE accounts (name TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0))",
            "INSERT INTO accounts VALUES ('alice', 100), ('bob', 0)",
        ],
    )
    .await
}

async fn balances(client: &Client) -> Vec<i64> {
    let result = client
        .sql(DB, "SELECT balance FROM accounts ORDER BY name")
        .await
        .unwrap();
    result
        .batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

async fn create_total(admin: &Client) {
    let sql = "SELECT sum(balance) AS total FROM accounts";
    admin
        .create_procedure(DB, "total", &[], sql, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn procedures_take_args_or_kwargs_and_run_atomically() {
    let node = Node::start(&[]);
    let admin = bank(&node).await;
    let transfer = "UPDATE accounts SET balance = balance + :amount WHERE name = :to;
                    UPDATE accounts SET balance = balance - :amount WHERE name = :from;
                    SELECT name, balance FROM accounts ORDER BY name";
    admin
        .create_procedure(DB, "transfer", &["from", "to", "amount"], transfer, false)
        .await
        .unwrap();
    assert_error(
        admin
            .create_procedure(DB, "transfer", &["x"], "SELECT 1", false)
            .await,
        ErrorCode::AlreadyExists,
        "replace",
    );

    let by_position = ProcedureArgs::new().arg("alice").arg("bob").arg(30);
    let result = admin
        .run_procedure(DB, "transfer", by_position)
        .await
        .unwrap();
    let balances_after = result.batches[0].column(1).as_primitive::<Int64Type>();
    assert_eq!(balances_after.values().to_vec(), vec![70, 30]);
    let by_name = ProcedureArgs::new()
        .kwarg("amount", 20)
        .kwarg("to", "alice")
        .kwarg("from", "bob");
    admin.run_procedure(DB, "transfer", by_name).await.unwrap();
    assert_eq!(balances(&admin).await, vec![90, 10]);

    // The second statement fails the CHECK: the first one's credit is undone.
    let overdraw = ProcedureArgs::new().arg("bob").arg("alice").arg(500);
    assert_error(
        admin.run_procedure(DB, "transfer", overdraw).await,
        ErrorCode::FailedPrecondition,
        "statement 2",
    );
    assert_eq!(
        balances(&admin).await,
        vec![90, 10],
        "nothing of a failed run stays"
    );

    let both = ProcedureArgs::new().arg("bob").kwarg("to", "alice");
    let invalid = ErrorCode::InvalidArgument;
    for (name, args, code, words) in [
        ("transfer", both, invalid, "not both"),
        (
            "transfer",
            ProcedureArgs::new().arg(1),
            invalid,
            "takes 3 arguments (from, to, amount) but 1 were given",
        ),
        (
            "transfer",
            ProcedureArgs::new().kwarg("sum", 1),
            invalid,
            "has no parameter sum",
        ),
        (
            "nope",
            ProcedureArgs::new(),
            ErrorCode::NotFound,
            "no procedure named nope",
        ),
    ] {
        assert_error(admin.run_procedure(DB, name, args).await, code, words);
    }
    assert_error(
        admin
            .create_procedure(DB, "1bad", &[], "SELECT 1", false)
            .await,
        ErrorCode::InvalidArgument,
        "bad procedure name",
    );

    // Replace, list, drop; the CLI sees the same.
    create_total(&admin).await;
    admin
        .create_procedure(
            DB,
            "total",
            &["min"],
            "SELECT sum(balance) AS total FROM accounts WHERE balance >= :min",
            true,
        )
        .await
        .unwrap();
    let procedures = admin.procedures(DB).await.unwrap();
    let names: Vec<&str> = procedures.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["total", "transfer"]);
    let out = node.cli_ok(&["proc", "run", DB, "total", "min=50"]);
    assert_eq!(out, "total\n-----\n90\n");
    let out = node.cli(&["proc", "list", DB]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("from, to, amount"));
    admin.drop_procedure(DB, "total").await.unwrap();
    assert_error(
        admin.drop_procedure(DB, "total").await,
        ErrorCode::NotFound,
        "total",
    );

    // Read rights run procedures that only read, and nothing that writes.
    let carol = node
        .new_user_granted(&admin, "carol", "carol-password", DB, Right::Read)
        .await;
    create_total(&admin).await;
    assert_eq!(
        carol
            .run_procedure(DB, "total", ProcedureArgs::new())
            .await
            .unwrap()
            .summary
            .rows,
        1
    );
    assert_denied(
        carol
            .run_procedure(
                DB,
                "transfer",
                ProcedureArgs::new().arg("alice").arg("bob").arg(1),
            )
            .await,
        "read",
    );
    assert_denied(
        carol
            .create_procedure(DB, "mine", &[], "SELECT 1", false)
            .await,
        "write",
    );
    assert_eq!(balances(&admin).await, vec![90, 10]);
}

#[tokio::test]
async fn sessions_isolate_commit_and_roll_back_sql_and_series_together() {
    let mut node = Node::start(&[]);
    let admin = bank(&node).await;
    let series = "/home/admin/meter";
    admin
        .create_series(series, &SeriesSpec::new(Resolution::Breakpoint), false)
        .await
        .unwrap();
    let other = node.admin().await;

    let session = admin.session().await.unwrap();
    session
        .sql(DB, "UPDATE accounts SET balance = 1 WHERE name = 'alice'")
        .await
        .unwrap();
    session
        .write_series(
            series,
            Interval::all(),
            vec![points(vec![1, 2, 3], vec![flags::OK; 3], vec![1.0, 2.0, 3.0]).unwrap()],
        )
        .await
        .unwrap();
    // The session reads its own changes; another client does not see them.
    assert_eq!(balances(&session).await, vec![1, 0]);
    assert_eq!(points_in(&session, series).await, 3);
    assert_eq!(balances(&other).await, vec![100, 0]);
    assert_eq!(points_in(&other, series).await, 0);
    // A second session cannot write the rows the first holds: it waits, then CONFLICT.
    let second = other.session().await.unwrap();
    let blocked = second
        .sql(DB, "UPDATE accounts SET balance = 2 WHERE name = 'bob'")
        .await;
    assert_error(blocked, ErrorCode::Conflict, "open session");
    second.rollback().await.unwrap();

    let ended = session.commit().await.unwrap();
    assert_eq!((ended.databases, ended.series), (1, 1));
    // A commit is acknowledged once durable: kill -9, and both changes are there.
    node.restart();
    let admin = node.admin().await;
    let other = node.admin().await;
    assert_eq!(balances(&other).await, vec![1, 0]);
    let values: Vec<f64> = other
        .read_series(series, Interval::all())
        .await
        .unwrap()
        .batches[0]
        .column(2)
        .as_primitive::<Float64Type>()
        .values()
        .to_vec();
    assert_eq!(values, vec![1.0, 2.0, 3.0]);

    // Rollback discards both; a rejected write inside a session leaves the
    // session's earlier work in place.
    let session = admin.session().await.unwrap();
    session.sql(DB, "DELETE FROM accounts").await.unwrap();
    session
        .write_series(
            series,
            Interval::new(0, 10),
            vec![points(vec![5], vec![0], vec![5.0]).unwrap()],
        )
        .await
        .unwrap();
    assert_unordered_points_refused(&session, series).await;
    assert_eq!(points_in(&session, series).await, 1);
    let id = session.id().to_string();
    session.rollback().await.unwrap();
    assert_eq!(balances(&other).await, vec![1, 0]);
    assert_eq!(points_in(&other, series).await, 3);

    // An ended session is gone, and a session belongs to its identity.
    let raw = serde_json::json!({"session": id});
    let gone = admin.call("busbar.v1.Sessions/KeepAlive", raw).await;
    assert_error(gone, ErrorCode::NotFound, "no open session");
    let eve = node.new_user(&admin, "eve", "eve-password").await;
    let mine = admin.session().await.unwrap();
    let theirs = eve
        .call(
            "busbar.v1.Sessions/Commit",
            serde_json::json!({"session": mine.id()}),
        )
        .await;
    assert_error(theirs, ErrorCode::PermissionDenied, "another identity");
    mine.rollback().await.unwrap();
}

#[tokio::test]
async fn idle_sessions_expire_and_the_client_keeps_its_own_alive() {
    let node = Node::start(&["--data-session-idle", "1"]);
    let admin = bank(&node).await;
    // Opened through the raw API, nobody keeps this one alive: it expires and
    // its change is rolled back, releasing the database for other writers.
    let opened = admin
        .call("busbar.v1.Sessions/Open", serde_json::json!({}))
        .await
        .unwrap();
    let id = opened["session"].as_str().unwrap().to_string();
    assert_eq!(opened["idle_timeout_ms"], 1000, "{opened}");
    let execute = serde_json::json!({"database": DB, "sql": "UPDATE accounts SET balance = 0", "session": id});
    let mut call = admin
        .stream("busbar.v1.Sql/Execute", Some(execute))
        .await
        .unwrap();
    use futures::StreamExt;
    while call.next().await.is_some() {}
    // Any call naming the session would keep it alive, so wait, then ask once.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let gone = admin
        .call(
            "busbar.v1.Sessions/KeepAlive",
            serde_json::json!({"session": id}),
        )
        .await;
    assert_error(gone, ErrorCode::NotFound, "expired");
    assert_eq!(balances(&admin).await, vec![100, 0]);
    admin
        .sql(DB, "UPDATE accounts SET balance = 5 WHERE name = 'bob'")
        .await
        .unwrap();

    // The client's session outlives several idle timeouts.
    let session = admin.session().await.unwrap();
    session
        .sql(DB, "UPDATE accounts SET balance = 7 WHERE name = 'bob'")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    session.commit().await.unwrap();
    assert_eq!(balances(&admin).await, vec![100, 7]);
}
