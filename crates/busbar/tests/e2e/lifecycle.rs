//! Durability across kill -9, graceful shutdown, deadlines, trace ids, and
//! the dynamic call API over every streaming kind.

use crate::harness::{Node, assert_error, eventually, next_event};
use base64::Engine;
use busbar_client::{Client, ErrorCode, ResourceKind, Right};
use futures::StreamExt;
use std::time::{Duration, Instant};

/// Idle spinning is on by default (every other test runs with it); off,
/// the node serves the same; a limit out of range stops it at start.
#[tokio::test]
async fn idle_spinning_turns_off_and_a_bad_limit_is_refused() {
    for (flag, says) in [
        (
            "10001",
            "bad idle_spin_microseconds: 10001; use 0 (off) to 10000",
        ),
        ("-1", "-1"),
        ("soon", "soon"),
    ] {
        let said = crate::harness::serve_refused(&["--idle-spin-microseconds", flag]);
        assert!(said.contains(says), "{flag}: {said}");
    }
    let (_node, admin) = Node::start_with_admin(&["--idle-spin-microseconds", "0"]).await;
    for _ in 0..20 {
        admin.whoami().await.unwrap();
    }
}

#[tokio::test]
async fn kill_9_and_restart_keeps_everything_acknowledged() {
    let (mut node, admin) = Node::start_with_admin(&[]).await;
    admin
        .create_user("bob", "bob-password", false)
        .await
        .unwrap();
    let (token, _) = admin.create_token("ci", None).await.unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let b64 = base64::engine::general_purpose::STANDARD;
    admin
        .register_key("robot", &b64.encode(key.verifying_key().as_bytes()), false)
        .await
        .unwrap();
    let room = admin
        .create("/shared/chat", ResourceKind::Room, true)
        .await
        .unwrap();
    admin.grant("/shared", "bob", Right::Write).await.unwrap();
    admin.add_group_member("ops", "robot").await.unwrap();
    admin
        .grant("/shared/chat", "group:ops", Right::Read)
        .await
        .unwrap();

    node.restart(); // SIGKILL, then start on the same data directory and port

    // The client from before the crash reconnects on its own; its session is still valid.
    eventually("the old client reconnecting", || admin.status()).await;
    assert_eq!(admin.whoami().await.unwrap().name, "admin");
    let bob = node.user("bob", "bob-password").await.unwrap();
    bob.mkdir("/shared/bobs", false).await.unwrap();
    let config = node.config_with("ci", serde_json::json!({"kind": "token", "token": token}));
    let by_token = Client::from_config_file(config).await.unwrap();
    assert_eq!(by_token.whoami().await.unwrap().name, "admin");
    let config = node.config_with(
        "robot",
        serde_json::json!({"kind": "key", "name": "robot", "private_key": b64.encode(key.to_bytes())}),
    );
    let robot = Client::from_config_file(config).await.unwrap();
    assert_eq!(robot.get("/shared/chat").await.unwrap().id, room.id);
    assert_eq!(
        robot.whoami().await.unwrap().groups,
        vec!["ops".to_string()]
    );
    let grants = admin.grants("/shared", false).await.unwrap();
    assert!(
        grants
            .iter()
            .any(|g| g.principal == "bob" && g.right == Right::Write as i32)
    );
}

#[tokio::test]
async fn shutdown_is_announced_and_served_out() {
    let (mut node, admin) = Node::start_with_admin(&["--grace", "1.5"]).await;
    let mut events = admin.node_events().await.unwrap();
    let ready = events.next().await.unwrap().unwrap();
    assert_eq!(
        ready.kind,
        busbar_client::proto::node_event::Kind::Ready as i32
    );

    let started = Instant::now();
    let mut child = node.terminate();
    let notice = events.next().await.unwrap().unwrap();
    assert_eq!(
        notice.kind,
        busbar_client::proto::node_event::Kind::ShuttingDown as i32
    );
    assert_eq!(notice.grace_ms, 1500);
    // Still serving during the grace period.
    admin.status().await.unwrap();
    // Then open streams end and the process exits on its own.
    while let Some(Ok(_)) = events.next().await {}
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "served out the grace period"
    );
}

#[tokio::test]
async fn deadlines_and_trace_ids() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    // Hashing a password takes far longer than a millisecond.
    let result = admin
        .with_timeout(Duration::from_millis(1))
        .create_user("slow", "slow-password", false)
        .await;
    assert_eq!(result.unwrap_err().code(), ErrorCode::Timeout);

    let traced = admin.with_trace_id("e2e-trace-4242").unwrap();
    let error = traced.get("/no/such/thing").await.unwrap_err();
    assert_eq!(error.trace_id(), Some("e2e-trace-4242"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One line names the call, its trace id, its code and the message sent.
    let log = node.log();
    let line = log
        .lines()
        .find(|line| line.contains("e2e-trace-4242"))
        .unwrap_or_else(|| panic!("the server log names the trace id:\n{log}"));
    for part in ["/busbar.v1.Resources/Get", "NOT_FOUND", error.message()] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    assert_error(
        admin.with_trace_id("has space"),
        ErrorCode::InvalidArgument,
        "bad trace id",
    );
}

#[tokio::test]
async fn dynamic_calls_of_every_kind() {
    let (_node, admin) = Node::start_with_admin(&[]).await;

    let status = admin
        .call("busbar.v1.Node/Status", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(status["tls"], true);
    assert_eq!(status["store"], "sqlite");
    let created = admin
        .call(
            "busbar.v1.Resources/Create",
            serde_json::json!({"path": "/home/admin/pipe", "kind": "WIRE"}),
        )
        .await
        .unwrap();
    assert_eq!(created["kind"], "WIRE");

    // Server streaming.
    let _events = node_events(&admin).await;

    // Client streaming: publish into a wire that a typed subscriber reads.
    let mut subscriber = admin.subscribe("/home/admin/pipe").await.unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let publish_to = serde_json::json!({"path": "/home/admin/pipe"});
    let mut publish = open_stream(&admin, "busbar.v1.Wires/Publish", publish_to).await;
    publish
        .send(serde_json::json!({"data": b64.encode("hello ")}))
        .await
        .unwrap();
    publish
        .send(serde_json::json!({"data": b64.encode("wire")}))
        .await
        .unwrap();
    publish.close_send();
    let summary = publish.next().await.unwrap().unwrap();
    assert_eq!(summary["bytes"], 10);
    assert_eq!(subscriber.next().await.unwrap().unwrap(), "hello ");
    assert_eq!(subscriber.next().await.unwrap().unwrap(), "wire");

    // Bidirectional: the reflection service itself.
    let mut reflection = open_stream(
        &admin,
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        serde_json::json!({"list_services": ""}),
    )
    .await;
    let listed = reflection.next().await.unwrap().unwrap().to_string();
    assert!(listed.contains("busbar.v1.Rooms"), "{listed}");

    assert_error(
        admin
            .call("busbar.v1.Node/Events", serde_json::json!({}))
            .await,
        ErrorCode::InvalidArgument,
        "use stream()",
    );
    assert_error(
        admin.stream("busbar.v1.Node/Status", None).await,
        ErrorCode::InvalidArgument,
        "unary",
    );
}

#[tokio::test]
async fn a_pooled_client_spreads_calls_over_its_connections() {
    let node = Node::start(&[]);
    let config = busbar_client::ClientConfig::from_file(&node.admin_config).unwrap();
    let options = busbar_client::ConnectOptions::from_config(&config).unwrap();
    assert_error(
        options.clone().connections(0).connect().await,
        ErrorCode::InvalidArgument,
        "bad connections",
    );
    let pooled = options.connections(4).connect().await.unwrap();
    let calls: Vec<_> = (0..16).map(|_| pooled.whoami()).collect();
    for identity in futures::future::join_all(calls).await {
        assert_eq!(
            identity.unwrap().name,
            "admin",
            "one login serves every connection"
        );
    }
    let status = pooled.status().await.unwrap();
    assert_eq!(status.connections, 4, "four connections open on the node");
}

#[tokio::test]
async fn room_memberships_rejoin_after_the_node_restarts() {
    let (mut node, admin) = Node::start_with(&[], "/home/admin/chat", ResourceKind::Room).await;
    let mut member = node.admin().await.join("/home/admin/chat").await.unwrap();
    let before = member.member_id().to_string();

    node.restart(); // SIGKILL, then start again on the same data and port

    let rejoined = next_event(&mut member).await;
    assert_eq!(rejoined.kind, busbar_client::RoomEventKind::Rejoined);
    assert_ne!(
        member.member_id(),
        before,
        "a new membership on the new node"
    );
    // Events emitted from now on arrive.
    eventually("an emit after the restart", || {
        admin.emit("/home/admin/chat", "after", vec![])
    })
    .await;
    let event = next_event(&mut member).await;
    assert_eq!(event.event, "after");

    // Final errors are not retried: deleting the room ends the membership.
    admin.rm("/home/admin/chat", false).await.unwrap();
    let last = member.next().await.unwrap().unwrap();
    assert_eq!(last.kind, busbar_client::RoomEventKind::Deleted);
    assert!(member.next().await.is_none());
}

/// A streaming call by name, opened with `first` as its first message.
async fn open_stream(
    client: &Client,
    method: &str,
    first: serde_json::Value,
) -> busbar_client::DynamicCall {
    client.stream(method, Some(first)).await.unwrap()
}

/// `Node/Events` called by name, past its first event (READY).
async fn node_events(client: &Client) -> busbar_client::DynamicCall {
    let mut events = open_stream(client, "busbar.v1.Node/Events", serde_json::json!({})).await;
    assert_eq!(events.next().await.unwrap().unwrap()["kind"], "READY");
    events
}

#[tokio::test]
async fn calls_cut_by_the_node_dying_are_unavailable_with_a_clear_message() {
    let (mut node, admin) = Node::start_with_admin(&[]).await;
    admin
        .create("/home/admin/pipe", busbar_client::ResourceKind::Wire, false)
        .await
        .unwrap();
    let mut events = node_events(&admin).await;
    let mut subscriber = admin.subscribe("/home/admin/pipe").await.unwrap();
    node.kill9();
    let dynamic = loop {
        match events.next().await {
            Some(Ok(_)) => continue,
            Some(Err(error)) => break error,
            None => panic!("the stream ended without saying why"),
        }
    };
    let typed = loop {
        match subscriber.next().await {
            Some(Ok(_)) => continue,
            Some(Err(error)) => break error,
            None => panic!("the subscription ended without saying why"),
        }
    };
    for error in [dynamic, typed] {
        assert_eq!(
            error.code(),
            busbar_client::ErrorCode::Unavailable,
            "{error}"
        );
        assert!(
            error.message().contains("connection to the node was lost"),
            "{error}"
        );
    }
}
