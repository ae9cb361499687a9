//! SQL databases: bound parameters, Arrow types, read-only rights enforced
//! by the engine, clear errors, durability.

use crate::harness::{Node, assert_denied, assert_error};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_schema::{DataType, TimeUnit};
use busbar_client::{ErrorCode, Right, SqlParam, Statement};

const DB: &str = "/home/admin/shop";

async fn shop(node: &Node) -> busbar_client::Client {
    node.admin_with_database(
        DB,
        &["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, photo BLOB, in_stock BOOLEAN, added TIMESTAMP)"],
    )
    .await
}

#[tokio::test]
async fn parameters_types_and_nulls_round_trip_into_arrow() {
    let node = Node::start(&[]);
    let admin = shop(&node).await;
    let insert = Statement::new("INSERT INTO items (name, price, photo, in_stock, added) VALUES (:name, :price, :photo, :stock, :added)")
        .bind_named("name", "apple")
        .bind_named(":price", 1.25)
        .bind_named("photo", vec![0u8, 255, 7])
        .bind_named("stock", true)
        .bind_named("added", SqlParam::TimestampMs(1_795_000_000_123));
    let summary = admin.sql(DB, insert).await.unwrap().summary;
    assert_eq!((summary.rows_affected, summary.last_insert_rowid), (1, 1));
    let positional = Statement::new("INSERT INTO items (name, price) VALUES (?, ?)")
        .bind("pear")
        .bind(None::<f64>);
    admin.sql(DB, positional).await.unwrap();

    let result = admin
        .sql(
            DB,
            "SELECT id, name, price, photo, in_stock, added FROM items ORDER BY id",
        )
        .await
        .unwrap();
    let schema = result.schema.unwrap();
    let types: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        vec![
            DataType::Int64,
            DataType::Utf8,
            DataType::Float64,
            DataType::Binary,
            DataType::Boolean,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        ]
    );
    let batch = &result.batches[0];
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.column(1).as_string::<i32>().value(1), "pear");
    assert_eq!(batch.column(2).as_primitive::<Float64Type>().value(0), 1.25);
    assert!(batch.column(2).is_null(1), "NULL stays NULL");
    assert_eq!(batch.column(3).as_binary::<i32>().value(0), &[0u8, 255, 7]);
    assert!(batch.column(4).as_boolean().value(0));
    assert_eq!(
        batch
            .column(5)
            .as_primitive::<TimestampMillisecondType>()
            .value(0),
        1_795_000_000_123
    );

    let (rows, _) = admin
        .sql_json(DB, "SELECT name, added, photo FROM items WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows[0]["added"], "2026-11-18T11:06:40.123Z");
    assert_eq!(rows[0]["photo"], "AP8H");

    // Expressions take the type of their values.
    let result = admin
        .sql(
            DB,
            Statement::new("SELECT count(*) AS n, ? AS echo FROM items").bind(7),
        )
        .await
        .unwrap();
    let batch = &result.batches[0];
    assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 2);
    let echo = batch.column(1).as_primitive::<Int64Type>();
    assert_eq!((echo.len(), echo.value(0)), (1, 7));

    // Many rows stream in several batches.
    admin.sql(DB, "CREATE TABLE n (v INTEGER)").await.unwrap();
    admin.sql(DB, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) INSERT INTO n SELECT x FROM c").await.unwrap();
    let result = admin.sql(DB, "SELECT v FROM n ORDER BY v").await.unwrap();
    assert!(result.batches.len() > 1);
    let total: usize = result.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!((total, result.summary.rows), (20_000, 20_000));
}

#[tokio::test]
async fn bad_statements_get_clear_errors_and_change_nothing() {
    let node = Node::start(&[]);
    let admin = shop(&node).await;
    let insert = "INSERT INTO items (name, price) VALUES (?, ?)";
    assert_error(
        admin.sql(DB, Statement::new(insert).bind("x")).await,
        ErrorCode::InvalidArgument,
        "takes 2 parameters but 1 were given",
    );
    assert_error(
        admin
            .sql(DB, Statement::new(insert).bind("x").bind(1).bind(2))
            .await,
        ErrorCode::InvalidArgument,
        "takes 2 parameters but 3",
    );
    let named = "INSERT INTO items (name) VALUES (:name)";
    assert_error(
        admin
            .sql(DB, Statement::new(named).bind_named("nom", "x"))
            .await,
        ErrorCode::InvalidArgument,
        "no parameter named \"nom\"",
    );
    assert_error(
        admin
            .sql(DB, Statement::new(named).bind("x").bind_named("name", "y"))
            .await,
        ErrorCode::InvalidArgument,
        "not both",
    );
    assert_error(
        admin.sql(DB, "SELEC * FROM items").await,
        ErrorCode::InvalidArgument,
        "at byte 0: near \"SELEC\": syntax error",
    );
    assert_error(
        admin.sql(DB, "SELECT 1; DROP TABLE items").await,
        ErrorCode::InvalidArgument,
        "one statement per call",
    );
    assert_error(
        admin
            .sql(DB, Statement::new(insert).bind(None::<String>).bind(1.0))
            .await,
        ErrorCode::FailedPrecondition,
        "NOT NULL",
    );
    assert_error(
        admin.sql("/home/admin", "SELECT 1").await,
        ErrorCode::FailedPrecondition,
        "not a database",
    );
    assert_error(
        admin.sql("/home/admin/nope", "SELECT 1").await,
        ErrorCode::NotFound,
        "does not exist",
    );
    let (rows, _) = admin
        .sql_json(DB, "SELECT count(*) AS n FROM items")
        .await
        .unwrap();
    assert_eq!(rows[0]["n"], 0, "nothing was written");
}

#[tokio::test]
async fn read_rights_allow_reads_and_the_engine_refuses_disguised_writes() {
    let node = Node::start(&[]);
    let admin = shop(&node).await;
    admin
        .sql(
            DB,
            Statement::new("INSERT INTO items (name) VALUES (?)").bind("apple"),
        )
        .await
        .unwrap();
    let bob = node.new_user(&admin, "bob", "bob-password").await;
    assert_denied(
        bob.sql(DB, "SELECT * FROM items").await,
        "bob lacks read on /home/admin/shop",
    );

    admin.grant(DB, "bob", Right::Read).await.unwrap();
    assert_eq!(
        bob.sql(DB, "SELECT * FROM items")
            .await
            .unwrap()
            .summary
            .rows,
        1
    );
    for write in [
        "DELETE FROM items",
        "WITH doomed AS (SELECT id FROM items) DELETE FROM items WHERE id IN (SELECT id FROM doomed)",
        "INSERT INTO items (name) SELECT name FROM items",
        "DROP TABLE items",
        "PRAGMA user_version = 5",
    ] {
        let error = bob.sql(DB, write).await.unwrap_err();
        assert!(
            matches!(
                error.code(),
                ErrorCode::PermissionDenied | ErrorCode::InvalidArgument
            ),
            "{write}: {error}"
        );
        assert!(
            error.message().contains("readonly") || error.message().contains("read"),
            "{write}: {error}"
        );
    }
    assert_eq!(
        admin
            .sql(DB, "SELECT * FROM items")
            .await
            .unwrap()
            .summary
            .rows,
        1,
        "nothing changed"
    );
    admin.grant(DB, "bob", Right::Write).await.unwrap();
    bob.sql(DB, "DELETE FROM items").await.unwrap();
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_and_deleting_removes_the_database() {
    let mut node = Node::start(&[]);
    let admin = shop(&node).await;
    for i in 0..50 {
        admin
            .sql(
                DB,
                Statement::new("INSERT INTO items (name, price) VALUES (?, ?)")
                    .bind(format!("item {i}"))
                    .bind(i),
            )
            .await
            .unwrap();
    }
    node.restart(); // SIGKILL right after the last acknowledged write
    let admin = node.admin().await;
    let (rows, _) = admin
        .sql_json(DB, "SELECT count(*) AS n, max(name) AS last FROM items")
        .await
        .unwrap();
    assert_eq!(rows[0]["n"], 50);

    let files = || {
        std::fs::read_dir(node.dir.path().join("data/databases"))
            .unwrap()
            .count()
    };
    assert!(files() >= 1);
    admin.rm(DB, false).await.unwrap();
    assert_eq!(files(), 0, "the database's files go with it");
    assert_error(
        admin.sql(DB, "SELECT 1").await,
        ErrorCode::NotFound,
        "does not exist",
    );
}

#[tokio::test]
async fn a_slow_reader_does_not_hold_up_writers() {
    let node = Node::start(&[]);
    let admin = shop(&node).await;
    admin.sql(DB, "CREATE TABLE n (v INTEGER)").await.unwrap();
    admin
        .sql(DB, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) INSERT INTO n SELECT x FROM c")
        .await
        .unwrap();
    // 800 MB of rows (far more than every buffer on the way), read by a
    // caller that stops after the first
    // message: the node's engine stalls mid-result, waiting for room.
    let request = serde_json::json!({"database": DB, "sql": "SELECT v, printf('%2000d', v) AS padded FROM n"});
    let mut stalled = admin
        .stream("busbar.v1.Sql/Execute", Some(request))
        .await
        .unwrap();
    futures::StreamExt::next(&mut stalled)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let write = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        admin.sql(
            DB,
            Statement::new("INSERT INTO items (name) VALUES (?)").bind("during the read"),
        ),
    )
    .await;
    assert!(write.expect("a stalled read must not block writes").is_ok());
    drop(stalled); // cancelling the read frees the engine
    let (rows, _) = admin
        .sql_json(DB, "SELECT count(*) AS n FROM items")
        .await
        .unwrap();
    assert_eq!(rows[0]["n"], 1);
}

#[tokio::test]
async fn results_larger_than_the_message_limit_arrive_in_pieces_within_it() {
    // 64 KiB messages: a result of about 1.5 MiB goes out in many pieces,
    // each (with what carries it) within the node's limit.
    let node = Node::start(&["--max-message-bytes", "65536"]);
    let admin = node.admin_with_database(DB, &[]).await;
    let result = admin
        .sql(
            DB,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20000) \
             SELECT x, printf('%070d', x) AS padded FROM c",
        )
        .await
        .unwrap();
    assert_eq!(result.summary.rows, 20_000);
    let last = result.batches.last().unwrap();
    let xs = last.column(0).as_primitive::<Int64Type>();
    assert_eq!(xs.value(xs.len() - 1), 20_000);
}
