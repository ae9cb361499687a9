//! Cluster tests: real PostgreSQL and NATS processes and several
//! `busbar serve --store ... --bus ...` processes sharing them. They need
//! Debian's `postgresql` and `nats-server`, which `make test-cluster` (run by
//! `make test`) installs, so they are marked ignored for a bare `cargo test`
//! and run with `--ignored` there.

mod engines;
#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;
mod mesh;
mod sql;
mod timeseries;

use busbar_client::{Client, ErrorCode, ResourceKind, RoomEventKind};
use bytes::Bytes;
use engines::{Nats, Postgres};
use futures::StreamExt;
use harness::{Node, assert_error, eventually, next_event};
use std::collections::HashMap;
use std::time::Duration;

/// Everything a stream of results (a Flight read's batches, a put's
/// results) yields; the first error fails the test.
async fn collected<T, E: std::fmt::Debug>(
    stream: impl futures::Stream<Item = Result<T, E>>,
) -> Vec<T> {
    futures::TryStreamExt::try_collect(stream).await.unwrap()
}

/// PostgreSQL, NATS and `count` nodes on them; the first node made the admin.
struct Cluster {
    nodes: Vec<Node>,
    pg: Postgres,
    nats: Nats,
}

impl Cluster {
    fn start(count: usize) -> Cluster {
        let pg = Postgres::start();
        let nats = Nats::start();
        let (store, bus) = (pg.url(), nats.url());
        let nodes = (0..count)
            .map(|_| Node::start(&["--store", &store, "--bus", &bus]))
            .collect();
        Cluster { nodes, pg, nats }
    }

    /// A plain gRPC channel to node `n` (TLS, the cluster's CA), for stock
    /// clients, and the admin's user and password to log them in.
    async fn channel_to(&self, n: usize) -> (tonic::transport::Channel, String, String) {
        let admin = self.nodes[0].admin_json();
        let ca = admin["ca_pem"]
            .as_str()
            .expect("the cluster's CA in admin.json");
        let address = format!("https://{}", self.nodes[n].host_port());
        let credential = &admin["credential"];
        (
            harness::tls_channel(ca, address).await,
            credential["user"].as_str().unwrap().to_string(),
            credential["password"].as_str().unwrap().to_string(),
        )
    }

    /// The admin, logged in on node `n` with the first node's credential.
    async fn admin_on(&self, n: usize) -> Client {
        let credential = self.nodes[0].admin_json()["credential"].clone();
        let config = self.nodes[n].config_with("admin-here", credential);
        Client::from_config_file(config)
            .await
            .expect("admin logs in")
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn every_node_sees_one_world_and_revocations_reach_all_at_once() {
    let cluster = Cluster::start(2);
    let (a, b) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    let status = b.status().await.unwrap();
    assert_eq!(
        (status.store.as_str(), status.bus.as_str()),
        ("postgres", "nats")
    );
    assert!(status.store_healthy && status.bus_healthy, "{status:?}");
    let mut listed: Vec<&str> = status.nodes.iter().map(|n| n.address.as_str()).collect();
    listed.sort();
    let mut expected: Vec<&str> = cluster.nodes.iter().map(|n| n.address.as_str()).collect();
    expected.sort();
    assert_eq!(listed, expected, "every node, as each reported itself");
    assert!(
        cluster.nodes[1].admin_json()["credential"].is_null(),
        "a later node leaves the cluster's admin password alone"
    );

    // Made through one node, used through the other.
    a.create_user("bob", "bob-password", false).await.unwrap();
    a.create("/home/admin/shared", ResourceKind::Folder, false)
        .await
        .unwrap();
    let bob_on_b = cluster.nodes[1].user("bob", "bob-password").await.unwrap();
    assert_error(
        bob_on_b.ls("/home/admin/shared", false).await,
        ErrorCode::PermissionDenied,
        "",
    );
    b.grant("/home/admin/shared", "bob", busbar_client::Right::Read)
        .await
        .unwrap();
    // A grant made on B reaches A's cache at once (an invalidation on the bus).
    let bob_on_a = cluster.nodes[0].user("bob", "bob-password").await.unwrap();
    bob_on_a.ls("/home/admin/shared", false).await.unwrap();
    b.revoke("/home/admin/shared", "bob").await.unwrap();
    eventually("the revoked grant refused on the other node", || async {
        match bob_on_a.ls("/home/admin/shared", false).await {
            Err(error) if error.code() == ErrorCode::PermissionDenied => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // An API token made on A, revoked on B, is refused by A.
    let token = bob_on_a.create_token("ci", None).await.unwrap();
    let token_config = cluster.nodes[0].config_with(
        "bob-token",
        serde_json::json!({"kind": "token", "token": token.0}),
    );
    let by_token = Client::from_config_file(&token_config).await.unwrap();
    assert_eq!(by_token.whoami().await.unwrap().name, "bob");
    bob_on_b.revoke_token("ci").await.unwrap();
    eventually("the revoked token refused on the other node", || async {
        match by_token.whoami().await {
            Err(error) if error.code() == ErrorCode::Unauthenticated => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A token made under a key whose answer was lost, made again through
    // the other node with the same key: the lost one (whose secret nobody
    // saw) is revoked on every node, the new one works, and bob has one
    // live token of that name. The key with another request is refused.
    let lost = bob_on_a
        .with_idempotency_key("deploy-token-1")
        .unwrap()
        .create_token("deploy", None)
        .await
        .unwrap();
    let made = bob_on_b
        .with_idempotency_key("deploy-token-1")
        .unwrap()
        .create_token("deploy", None)
        .await
        .unwrap();
    assert_ne!(lost.0, made.0, "a new secret");
    let login = |n: usize, secret: &str| {
        cluster.nodes[n].config_with(
            "bob-deploy",
            serde_json::json!({"kind": "token", "token": secret}),
        )
    };
    for n in [0, 1] {
        let with_made = Client::from_config_file(login(n, &made.0)).await.unwrap();
        assert_eq!(with_made.whoami().await.unwrap().name, "bob");
        eventually("the lost try's token refused", || async {
            match Client::from_config_file(login(n, &lost.0)).await {
                Err(error) if error.code() == ErrorCode::Unauthenticated => Ok(()),
                Err(error) => Err(error.to_string()),
                Ok(_) => Err("still logs in".to_string()),
            }
        })
        .await;
    }
    let live: Vec<_> = bob_on_a
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.name == "deploy" && !t.revoked)
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_error(
        bob_on_a
            .with_idempotency_key("deploy-token-1")
            .unwrap()
            .create_token("other", None)
            .await,
        ErrorCode::InvalidArgument,
        "used for another call",
    );

    // Changes to the tree under a key: a repeat through the other node
    // answers with the first outcome (the same resource, the same count
    // deleted) instead of ALREADY_EXISTS or NOT_FOUND, and applies nothing.
    let keyed = |client: &Client, key: &str| client.with_idempotency_key(key).unwrap();
    let mut made = Vec::new();
    for client in [&a, &b] {
        let client = keyed(client, "make-room");
        let room = client.create("/home/admin/k", ResourceKind::Room, false);
        made.push(room.await.unwrap());
    }
    assert_eq!(made[0].id, made[1].id);
    let mut moved = Vec::new();
    for client in [&a, &b] {
        moved.push(
            keyed(client, "move-room")
                .mv("/home/admin/k", "/home/admin/k2")
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        (moved[0].id.as_str(), moved[1].path.as_str()),
        (made[0].id.as_str(), "/home/admin/k2")
    );
    for client in [&a, &b] {
        assert_eq!(
            keyed(client, "remove-room")
                .rm("/home/admin/k2", false)
                .await
                .unwrap(),
            1
        );
    }
    assert_error(
        keyed(&b, "remove-room")
            .rm("/home/admin/other", false)
            .await,
        ErrorCode::InvalidArgument,
        "used for another call",
    );
    // A user made again under its key is the first one.
    let mut users = Vec::new();
    for client in [&a, &b] {
        let client = keyed(client, "make-carol");
        users.push(
            client
                .create_user("carol", "carol-password", false)
                .await
                .unwrap(),
        );
    }
    assert_eq!(users[0].id, users[1].id);
    cluster.nodes[1]
        .user("carol", "carol-password")
        .await
        .unwrap();
    // A certificate issued again under its key (with its identity) is the
    // first one; a new key for the same name meets the identity it made.
    use rcgen::PublicKeyData;
    let public_key = rcgen::KeyPair::generate()
        .unwrap()
        .subject_public_key_info();
    let request = busbar_client::proto::IssueCertificateRequest {
        name: "laptop".into(),
        public_key: public_key.into(),
        days: 0,
        create: true,
        admin: false,
    };
    let mut issued = Vec::new();
    for client in [&a, &b] {
        let answer = keyed(client, "cert-laptop")
            .issue_certificate(request.clone())
            .await
            .unwrap();
        issued.push(answer);
    }
    assert_eq!(issued[0].certificate_pem, issued[1].certificate_pem);
    assert_eq!(issued[0].identity, issued[1].identity);
    assert_eq!(a.certificates("laptop").await.unwrap().len(), 1);
    assert_error(
        keyed(&b, "cert-laptop-2")
            .issue_certificate(request.clone())
            .await,
        ErrorCode::AlreadyExists,
        "already exists",
    );
    // A database made again under its key is the first one, and works (the
    // repeat does not make, or undo, its schema).
    for client in [&a, &b] {
        let client = keyed(client, "make-db");
        let db = client.create("/home/admin/kdb", ResourceKind::Database, false);
        db.await.unwrap();
    }
    b.sql("/home/admin/kdb", "CREATE TABLE t (x int)")
        .await
        .unwrap();
    // A node that died after the resource's commit and before its schema:
    // played by dropping the schema and roles behind the cluster's back.
    // The key's repeat makes them again, and the database works.
    let id = a.get("/home/admin/kdb").await.unwrap().id;
    let hex: String = id.chars().filter(char::is_ascii_hexdigit).collect();
    cluster.pg.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename IN ('bb_{hex}_w', 'bb_{hex}_r');\
         DROP SCHEMA db_{hex} CASCADE; DROP ROLE bb_{hex}_w; DROP ROLE bb_{hex}_r;"
    ));
    let gone = b.sql("/home/admin/kdb", "SELECT 1").await;
    assert!(gone.is_err(), "the schema is gone: {gone:?}");
    let again = keyed(&b, "make-db")
        .create("/home/admin/kdb", ResourceKind::Database, false)
        .await
        .unwrap();
    assert_eq!(again.id, id, "the first try's database");
    b.sql("/home/admin/kdb", "CREATE TABLE t (x int)")
        .await
        .unwrap();

    // The tree: moved and deleted through one node, seen so through the other.
    a.create("/home/admin/t/x/y", ResourceKind::Room, true)
        .await
        .unwrap();
    b.grant("/home/admin/t/x", "bob", busbar_client::Right::Read)
        .await
        .unwrap();
    b.mv("/home/admin/t", "/home/admin/u").await.unwrap();
    let below: Vec<String> = a
        .ls("/home/admin/u", true)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(below, ["/home/admin/u/x", "/home/admin/u/x/y"]);
    assert_eq!(
        a.grants("/home/admin/u/x", false).await.unwrap().len(),
        1,
        "grants move too"
    );
    assert_error(
        a.rm("/home/admin/u", false).await,
        ErrorCode::FailedPrecondition,
        "not empty",
    );
    b.rm("/home/admin/u", true).await.unwrap();
    // A hears of the removal over the bus (at most 2 s stale, docs/cluster.md).
    eventually("the removal reaches A", || async {
        match a.get("/home/admin/u/x").await {
            Err(_) => Ok(()),
            Ok(_) => Err("still there"),
        }
    })
    .await;

    // Names are unique across the cluster.
    assert_error(
        b.create_user("bob", "other-password", false).await,
        ErrorCode::AlreadyExists,
        "bob",
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn room_members_and_wire_subscribers_on_other_nodes_get_everything_once_in_order() {
    let cluster = Cluster::start(2);
    let (a, b) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    a.create("/home/admin/chat", ResourceKind::Room, false)
        .await
        .unwrap();
    let mut on_a = a.join("/home/admin/chat").await.unwrap();
    let mut on_b = b.join("/home/admin/chat").await.unwrap();
    for seq in 0..100 {
        a.emit("/home/admin/chat", "seq", vec![seq.into()])
            .await
            .unwrap();
    }
    b.emit("/home/admin/chat", "from-b", vec![]).await.unwrap();
    a.rm("/home/admin/chat", false).await.unwrap();
    for member in [&mut on_a, &mut on_b] {
        let mut seqs = Vec::new();
        let mut from_b = 0;
        loop {
            let event = next_event(member).await;
            match event.kind {
                RoomEventKind::Deleted => break,
                _ if event.event == "seq" => seqs.push(event.args[0].as_i64().unwrap()),
                _ if event.event == "from-b" => from_b += 1,
                _ => {}
            }
        }
        assert_eq!(seqs, (0..100).collect::<Vec<i64>>(), "once each, in order");
        assert_eq!(from_b, 1, "the other node's emit arrives once");
    }

    // A wire: published through A, read through B, in order, nothing lost.
    a.create("/home/admin/pipe", ResourceKind::Wire, false)
        .await
        .unwrap();
    let mut reader = b.subscribe("/home/admin/pipe").await.unwrap();
    let chunks: Vec<bytes::Bytes> = (0..200u32)
        .map(|n| bytes::Bytes::from(n.to_be_bytes().to_vec()))
        .collect();
    a.publish("/home/admin/pipe", futures::stream::iter(chunks.clone()))
        .await
        .unwrap();
    for expected in &chunks {
        let got = tokio::time::timeout(Duration::from_secs(20), reader.next())
            .await
            .expect("chunks keep coming")
            .expect("open")
            .expect("no error");
        assert_eq!(&got, expected);
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn service_resources_are_shared_and_a_killed_node_loses_nothing() {
    let mut cluster = Cluster::start(2);
    let a = cluster.admin_on(0).await;
    // A service made through one node is there through the other (mesh
    // services span nodes: tests/cluster/mesh.rs).
    a.create("/services/shop.Orders", ResourceKind::Service, false)
        .await
        .unwrap();
    assert_error(
        a.create("/services/1bad", ResourceKind::Service, false)
            .await,
        ErrorCode::InvalidArgument,
        "bad service name",
    );
    let on_b = cluster.admin_on(1).await;
    assert_eq!(
        on_b.get("/services/shop.Orders").await.unwrap().kind(),
        ResourceKind::Service
    );

    // Acknowledged writes through A outlive A (PostgreSQL has them).
    for n in 0..20 {
        a.create_user(&format!("user{n}"), "password-1234", false)
            .await
            .unwrap();
    }
    cluster.nodes[0].kill9();
    let b = cluster.admin_on(1).await;
    let names: Vec<String> = b
        .identities()
        .await
        .unwrap()
        .into_iter()
        .map(|identity| identity.name)
        .collect();
    for n in 0..20 {
        assert!(names.contains(&format!("user{n}")), "user{n} in {names:?}");
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn postgresql_down_fails_calls_clearly_and_the_cluster_recovers_by_itself() {
    let cluster = Cluster::start(1);
    let admin = cluster.admin_on(0).await;
    cluster.pg.stop();
    // Status still answers when it can (from the caches), and says so.
    match admin.status().await {
        Ok(status) => assert!(!status.store_healthy, "{status:?}"),
        Err(error) => assert_eq!(error.code(), ErrorCode::Unavailable, "{error}"),
    }
    assert_error(
        admin.create_user("carol", "carol-password", false).await,
        ErrorCode::Unavailable,
        "PostgreSQL",
    );
    cluster.pg.restart();
    eventually("calls work again once PostgreSQL is back", || async {
        admin.create_user("carol", "carol-password", false).await
    })
    .await;
    assert_eq!(
        cluster.nodes[0]
            .user("carol", "carol-password")
            .await
            .unwrap()
            .whoami()
            .await
            .unwrap()
            .name,
        "carol"
    );
}

/// The next event of a resuming wire subscription, within 10 s.
async fn next_wire_event(
    pipe: &mut busbar_client::BoxStream<busbar_client::WireEvent>,
) -> busbar_client::WireEvent {
    tokio::time::timeout(Duration::from_secs(10), pipe.next())
        .await
        .expect("in time")
        .expect("still open")
        .expect("no error")
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_client_given_every_node_moves_on_when_its_node_dies() {
    let mut cluster = Cluster::start(2);
    let on_b = cluster.admin_on(1).await;
    on_b.create("/home/admin/chat", ResourceKind::Room, false)
        .await
        .unwrap();

    // One config naming both nodes, A first.
    let mut config = cluster.nodes[0].admin_json();
    config["addresses"] = serde_json::json!([cluster.nodes[1].address]);
    let path = cluster.nodes[0].dir.path().join("both.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let client = Client::from_config_file(&path).await.unwrap();
    let mut member = client.join("/home/admin/chat").await.unwrap();
    let before = member.member_id().to_string();
    on_b.create("/home/admin/pipe", ResourceKind::Wire, false)
        .await
        .unwrap();
    let mut pipe = client.subscribe_resuming("/home/admin/pipe").await.unwrap();

    cluster.nodes[0].kill9();

    // The wire subscription opens again through B and says what it missed.
    assert_eq!(
        next_wire_event(&mut pipe).await,
        busbar_client::WireEvent::Resubscribed
    );
    on_b.publish(
        "/home/admin/pipe",
        futures::stream::iter([Bytes::from("after the move")]),
    )
    .await
    .unwrap();
    assert_eq!(
        next_wire_event(&mut pipe).await,
        busbar_client::WireEvent::Chunk(Bytes::from("after the move"))
    );

    // The membership goes on through B, announced as a rejoin.
    let rejoined = next_event(&mut member).await;
    assert_eq!(rejoined.kind, RoomEventKind::Rejoined);
    assert_ne!(member.member_id(), before, "a new membership, on B");
    on_b.emit("/home/admin/chat", "after", vec![])
        .await
        .unwrap();
    let event = next_event(&mut member).await;
    assert_eq!(event.event, "after");
    // Plain calls go to B too, on the session A issued.
    let identity = eventually("a call after the loss", || client.whoami()).await;
    assert_eq!(identity.name, "admin");
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn transport_queues_are_shared_durable_and_wake_pops_on_other_nodes() {
    let mut cluster = Cluster::start(2);
    let (a, b) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    a.transport_open("job", HashMap::new()).await.unwrap();
    b.transport_open("job", HashMap::new()).await.unwrap();

    // A pop waiting on B is woken by a push through A.
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            b.transport_pop("job", "req", Duration::from_secs(20), None)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.transport_push("job", "req", Bytes::from("first"), HashMap::new())
        .await
        .unwrap();
    let popped = waiting.await.unwrap().unwrap().expect("the push came");
    assert_eq!(popped.payload, "first");

    // A lease taken through B is settled through A, once.
    a.transport_push("job", "req", Bytes::from("leased"), HashMap::new())
        .await
        .unwrap();
    let leased = b
        .transport_pop("job", "req", Duration::ZERO, Some(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    a.transport_ack("job", &leased.receipt).await.unwrap();
    assert_error(
        b.transport_ack("job", &leased.receipt).await,
        ErrorCode::NotFound,
        "no live lease",
    );

    // A keyed push sent again through the other node is queued once, and
    // the retry answers with the first push's id.
    let push_once = |client: &Client| {
        let keyed = client.with_idempotency_key("push-1").unwrap();
        async move {
            keyed
                .transport_push("job", "keyed", Bytes::from("once"), HashMap::new())
                .await
                .unwrap()
        }
    };
    let first = push_once(&a).await;
    let again = push_once(&b).await;
    assert_eq!(first, again);
    let once = b.transport_pop("job", "keyed", Duration::ZERO, None).await;
    assert_eq!(once.unwrap().expect("queued").payload, "once");
    let twice = b.transport_pop("job", "keyed", Duration::ZERO, None).await;
    assert!(twice.unwrap().is_none(), "the retry queued nothing more");

    // Pushed through A and acknowledged, then A is killed: B pops them all,
    // in order, once.
    for n in 0..10 {
        a.transport_push("job", "req", Bytes::from(format!("m{n}")), HashMap::new())
            .await
            .unwrap();
    }
    cluster.nodes[0].kill9();
    for n in 0..10 {
        let message = b
            .transport_pop("job", "req", Duration::ZERO, None)
            .await
            .unwrap()
            .expect("every acknowledged push is there");
        assert_eq!(message.payload, format!("m{n}"));
    }
    assert!(
        b.transport_pop("job", "req", Duration::ZERO, None)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn the_engines_are_reached_over_tls_and_credentials_are_never_printed() {
    let pg = Postgres::start_with(true);
    let nats = Nats::start_with(true);
    let pg_ca = pg.tls().expect("TLS").ca.to_str().unwrap().to_string();
    let nats_ca = nats.ca().expect("TLS").to_str().unwrap().to_string();
    // A password in the URL (the server trusts loopback, so any will do).
    let store = format!("postgres://busbar:s3cret-pw@127.0.0.1:{}/postgres", pg.port);

    // Without TLS both engines turn the node away, and it says which.
    let refused = |store: String, bus: String| {
        let said = harness::serve_refused(&["--store", &store, "--bus", &bus]);
        assert!(
            !said.contains("s3cret-pw"),
            "the password was printed: {said}"
        );
        said
    };
    let said = refused(
        format!("{store}?sslmode=disable"),
        format!("nats://127.0.0.1:{}", nats.port),
    );
    assert!(said.contains("store postgres://busbar@127.0.0.1"), "{said}");
    let said = refused(
        format!("{store}?sslmode=require"),
        format!("nats://127.0.0.1:{}", nats.port),
    );
    assert!(said.contains("bus"), "{said}");

    // With TLS and the engines' CAs it serves, and status says so.
    let node = Node::start(&[
        "--store",
        &format!("{store}?sslmode=require"),
        "--store-ca",
        &pg_ca,
        "--bus",
        &nats.url(),
        "--bus-ca",
        &nats_ca,
    ]);
    assert!(!node.log().contains("s3cret-pw"), "the password was logged");
    let admin = node.admin().await;
    admin
        .create_user("dana", "dana-password", false)
        .await
        .unwrap();
    let status = admin.status().await.unwrap();
    assert!(status.store_healthy && status.bus_healthy, "{status:?}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn rooms_span_nodes_again_after_nats_restarts() {
    let mut cluster = Cluster::start(2);
    let (a, b) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    a.create("/home/admin/chat", ResourceKind::Room, false)
        .await
        .unwrap();
    let mut on_b = b.join("/home/admin/chat").await.unwrap();

    cluster.nats.stop();
    // Within a node, rooms go on.
    let mut on_a = a.join("/home/admin/chat").await.unwrap();
    assert_eq!(
        a.emit("/home/admin/chat", "alone", vec![]).await.unwrap(),
        1
    );
    assert_eq!(next_event(&mut on_a).await.event, "alone");
    let status = a.status().await.unwrap();
    assert!(!status.bus_healthy, "{status:?}");

    // NATS back on its port: the nodes reconnect and subscribe again by
    // themselves, and events cross again.
    cluster.nats.restart();
    eventually("the bus healthy again", || async {
        match a.status().await {
            Ok(status) if status.bus_healthy => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // (What B hears first may be older: A's member joining, or the emit
    // A's client held while NATS was away.)
    let mut crossed = false;
    for _ in 0..50 {
        a.emit("/home/admin/chat", "again", vec![]).await.unwrap();
        while let Ok(Some(Ok(event))) =
            tokio::time::timeout(Duration::from_millis(200), on_b.next()).await
        {
            crossed |= event.event == "again";
        }
        if crossed {
            break;
        }
    }
    assert!(
        crossed,
        "an event from A reached B within 10 s of NATS's return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_rolling_restart_under_write_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    let admin = cluster.admin_on(0).await;
    admin.transport_open("load", HashMap::new()).await.unwrap();

    // Three writers, each given every node (starting at a different one),
    // pushing numbered messages; what each saw acknowledged is recorded.
    let addresses: Vec<String> = cluster.nodes.iter().map(|n| n.address.clone()).collect();
    let credential = cluster.nodes[0].admin_json()["credential"].clone();
    admin
        .create("/home/admin/read-me", ResourceKind::Folder, false)
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for w in 0..3 {
        let mut config = cluster.nodes[0].admin_json();
        config["credential"] = credential.clone();
        config["address"] = addresses[w].clone().into();
        config["addresses"] = addresses
            .iter()
            .filter(|a| **a != addresses[w])
            .cloned()
            .collect();
        let path = cluster.nodes[0].dir.path().join(format!("writer{w}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        let client = Client::from_config_file(&path).await.unwrap();
        let stop = stop.clone();
        // A reader beside each writer: reads are safe to send again, so one
        // whose node went mid-call is read again on the next node.
        let (reading, reader_stop) = (client.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let (mut read, mut failed) = (0usize, Vec::new());
            while !reader_stop.load(std::sync::atomic::Ordering::SeqCst) {
                match reading.get("/home/admin/read-me").await {
                    Ok(_) => read += 1,
                    Err(error) => {
                        failed.push(error.to_string());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (read, failed)
        }));
        writers.push(tokio::spawn(async move {
            let (mut acknowledged, mut failed) = (Vec::new(), 0usize);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let payload = format!("{w}-{n}");
                n += 1;
                match client
                    .transport_push("load", "w", Bytes::from(payload.clone()), HashMap::new())
                    .await
                {
                    Ok(_) => acknowledged.push(payload),
                    // Retried on the next node and still failed.
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (acknowledged, failed)
        }));
    }

    // Each node in turn: SIGKILL, then started again on its data and port.
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::task::block_in_place(|| cluster.nodes[n].restart());
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for writer in writers {
        let (done, lost) = writer.await.unwrap();
        assert!(!done.is_empty(), "every writer got writes through");
        acknowledged.extend(done);
        failed += lost;
    }
    for reader in readers {
        let (read, failed) = reader.await.unwrap();
        assert!(read > 0, "every reader read");
        assert!(failed.is_empty(), "no read failed: {failed:?}");
    }

    // Everything acknowledged is there exactly once.
    let reader = cluster.admin_on(1).await;
    let mut queued = std::collections::HashMap::<String, usize>::new();
    while let Some(message) = reader
        .transport_pop("load", "w", Duration::ZERO, None)
        .await
        .unwrap()
    {
        *queued
            .entry(String::from_utf8(message.payload.to_vec()).unwrap())
            .or_default() += 1;
    }
    for payload in &acknowledged {
        assert_eq!(queued.get(payload), Some(&1), "{payload} once");
    }
    assert!(queued.values().all(|count| *count == 1), "nothing twice");
    // Pushes carry idempotency keys: one whose node went mid-call was sent
    // again to the next node, so none failed and none was queued twice.
    assert_eq!(failed, 0, "no push that could be retried failed");
    assert_eq!(queued.len(), acknowledged.len());
    eprintln!(
        "rolling restart: {} pushes acknowledged, {failed} failed with their outcome unknown, {} queued",
        acknowledged.len(),
        queued.len()
    );
}
