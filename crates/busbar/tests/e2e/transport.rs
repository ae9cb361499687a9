//! Transport sessions: FIFO queues by topic that parties push to and pop
//! from through the node; rights, bounds, leases, release, and pushes that
//! survive kill -9.

use crate::harness::{Node, assert_code, assert_error};
use busbar_client::{ErrorCode, Right};
use bytes::Bytes;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A pop of `topic` that waits (up to 20 s), started and given a moment to
/// begin waiting.
async fn waiting_pop(
    client: &busbar_client::Client,
    session: &'static str,
    topic: &'static str,
) -> tokio::task::JoinHandle<busbar_client::Result<Option<busbar_client::TransportMessage>>> {
    let client = client.clone();
    let waiting = tokio::spawn(async move {
        client
            .transport_pop(session, topic, Duration::from_secs(20), None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    waiting
}

/// Pushes `payload` to `topic` without metadata; it must be taken.
async fn push(client: &busbar_client::Client, session: &str, topic: &str, payload: &'static str) {
    client
        .transport_push(session, topic, Bytes::from(payload), HashMap::new())
        .await
        .unwrap();
}

/// A pop that does not wait and takes no lease.
async fn pop_now(
    client: &busbar_client::Client,
    session: &str,
    topic: &str,
) -> Option<busbar_client::TransportMessage> {
    client
        .transport_pop(session, topic, Duration::ZERO, None)
        .await
        .unwrap()
}

/// A pop that does not wait and leases the message it takes for `lease`;
/// there must be one.
async fn pop_leased(
    client: &busbar_client::Client,
    session: &str,
    topic: &str,
    lease: Duration,
) -> busbar_client::TransportMessage {
    client
        .transport_pop(session, topic, Duration::ZERO, Some(lease))
        .await
        .unwrap()
        .unwrap()
}

fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn parties_push_and_pop_in_order_by_topic_and_a_pop_waits_for_a_push() {
    let node = Node::start(&[]);
    let alice = node.admin().await;
    let bob = node.admin().await;
    let opened = alice
        .transport_open("job-1", meta(&[("purpose", "test")]))
        .await
        .unwrap();
    assert!(opened.created);
    assert_eq!(opened.path, "/transport/job-1");
    let joined = bob
        .transport_open("job-1", meta(&[("ignored", "x")]))
        .await
        .unwrap();
    assert!(!joined.created);
    assert_eq!(joined.metadata, meta(&[("purpose", "test")]));

    for i in 0..3 {
        alice
            .transport_push(
                "job-1",
                "a",
                Bytes::from(format!("a{i}")),
                meta(&[("trace", &i.to_string())]),
            )
            .await
            .unwrap();
    }
    push(&alice, "job-1", "b", "b0").await;
    // Peek leaves it; pops come in order, per topic, with their metadata.
    let peeked = bob.transport_peek("job-1", "a").await.unwrap().unwrap();
    assert_eq!(peeked.payload, "a0");
    for i in 0..3 {
        let message = pop_now(&bob, "job-1", "a").await.unwrap();
        assert_eq!(message.payload, format!("a{i}"));
        assert_eq!(message.metadata["trace"], i.to_string());
    }
    assert!(pop_now(&bob, "job-1", "a").await.is_none());
    assert_eq!(pop_now(&bob, "job-1", "b").await.unwrap().payload, "b0");

    // A pop that times out answers None after its wait.
    let started = Instant::now();
    let none = bob
        .transport_pop("job-1", "a", Duration::from_millis(300), None)
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A waiting pop takes a push made while it waits.
    let waiting = waiting_pop(&bob, "job-1", "a").await;
    push(&alice, "job-1", "a", "late").await;
    let message = waiting.await.unwrap().unwrap().unwrap();
    assert_eq!(message.payload, "late");

    // Release ends the session: a waiting pop fails, the path is free.
    let waiting = waiting_pop(&bob, "job-1", "a").await;
    push(&alice, "job-1", "z", "left").await;
    assert_eq!(alice.transport_release("job-1").await.unwrap(), 1);
    assert_error(
        waiting.await.unwrap(),
        ErrorCode::FailedPrecondition,
        "was released",
    );
    assert_code(
        alice
            .transport_push("job-1", "a", Bytes::from("x"), HashMap::new())
            .await,
        ErrorCode::NotFound,
    );
}

#[tokio::test]
async fn leases_settle_once_and_rights_split_pushers_from_poppers() {
    let (node, admin, eve) = Node::start_with_user("eve", "eve-password").await;
    let denied = ErrorCode::PermissionDenied;

    // Eve may not create a session, nor use one she has no right on.
    assert_code(eve.transport_open("s", HashMap::new()).await, denied);
    admin.transport_open("s", HashMap::new()).await.unwrap();
    assert_code(
        eve.transport_pop("s", "", Duration::ZERO, None).await,
        denied,
    );
    // Read lets her pop, not push, nor release.
    admin
        .grant("/transport/s", "eve", Right::Read)
        .await
        .unwrap();
    assert_code(
        eve.transport_push("s", "", Bytes::from("x"), HashMap::new())
            .await,
        denied,
    );
    assert_code(eve.transport_release("s").await, denied);

    // A leased message is hidden until settled; nak returns it first.
    push(&admin, "s", "", "one").await;
    push(&admin, "s", "", "two").await;
    let leased = pop_leased(&eve, "s", "", Duration::from_secs(60)).await;
    assert_eq!(leased.payload, "one");
    assert!(leased.lease_expires_ms > 0);
    assert_eq!(
        eve.transport_peek("s", "").await.unwrap().unwrap().payload,
        "two"
    );
    eve.transport_nak("s", &leased.receipt).await.unwrap();
    // A settled receipt is stale.
    assert_code(
        eve.transport_ack("s", &leased.receipt).await,
        ErrorCode::NotFound,
    );
    let again = pop_leased(&eve, "s", "", Duration::from_millis(300)).await;
    assert_eq!(again.payload, "one");
    // An ended lease gives the message back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_code(
        eve.transport_extend("s", &again.receipt, Duration::from_secs(5))
            .await,
        ErrorCode::NotFound,
    );
    let third = pop_leased(&eve, "s", "", Duration::from_secs(60)).await;
    assert_eq!(third.payload, "one");
    let until = eve
        .transport_extend("s", &third.receipt, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(until > third.lease_expires_ms);
    eve.transport_ack("s", &third.receipt).await.unwrap();
    assert_eq!(pop_now(&eve, "s", "").await.unwrap().payload, "two");

    // A lease goes back the moment its popper's connection closes.
    push(&admin, "s", "", "three").await;
    let popper = node.user("eve", "eve-password").await.unwrap();
    let held = pop_leased(&popper, "s", "", Duration::from_secs(600)).await;
    assert_eq!(held.payload, "three");
    assert!(eve.transport_peek("s", "").await.unwrap().is_none());
    drop(popper);
    let back = eve
        .transport_pop("s", "", Duration::from_secs(10), None)
        .await
        .unwrap()
        .expect("the lease came back with the closed connection");
    assert_eq!(back.payload, "three");

    // Bad input changes nothing.
    let invalid = ErrorCode::InvalidArgument;
    for bad in ["", "a/b", "..", &"x".repeat(129)] {
        assert_code(admin.transport_open(bad, HashMap::new()).await, invalid);
    }
    assert_code(
        admin
            .transport_pop("s", "", Duration::ZERO, Some(Duration::from_secs(7200)))
            .await,
        invalid,
    );
    let many: HashMap<String, String> = (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
    assert_code(
        admin.transport_push("s", "", Bytes::from("x"), many).await,
        invalid,
    );
    assert!(admin.transport_peek("s", "").await.unwrap().is_none());
}

#[tokio::test]
async fn a_full_queue_holds_a_push_until_room_comes_or_its_deadline_passes() {
    let (_node, admin) = Node::start_with_admin(&[]).await;
    admin.transport_open("big", HashMap::new()).await.unwrap();
    // Four 16 MB payloads fill a topic's 64 MiB.
    let payload = Bytes::from(vec![1u8; 16_000_000]);
    for _ in 0..4 {
        admin
            .transport_push("big", "t", payload.clone(), HashMap::new())
            .await
            .unwrap();
    }
    assert_error(
        admin
            .with_timeout(Duration::from_millis(500))
            .transport_push("big", "t", payload.clone(), HashMap::new())
            .await,
        ErrorCode::ResourceExhausted,
        "is full",
    );
    let pushing = {
        let admin = admin.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            admin
                .with_timeout(Duration::from_secs(20))
                .transport_push("big", "t", payload, HashMap::new())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pushing.is_finished(), "the push waits for room");
    pop_now(&admin, "big", "t").await.unwrap();
    pushing.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_acknowledged_push_survives_kill_9_and_is_popped_once() {
    let (mut node, admin) = Node::start_with_admin(&[]).await;
    admin
        .transport_open("durable", HashMap::new())
        .await
        .unwrap();
    for i in 0..20 {
        admin
            .transport_push("durable", "t", Bytes::from(format!("m{i}")), HashMap::new())
            .await
            .unwrap();
    }
    node.kill9();
    node.restart();
    let admin = node.admin().await;
    for i in 0..20 {
        let message = pop_now(&admin, "durable", "t").await.unwrap();
        assert_eq!(message.payload, format!("m{i}"));
    }
    assert!(pop_now(&admin, "durable", "t").await.is_none());

    // The CLI: one shell pushes, another pops.
    node.cli_ok(&[
        "session",
        "push",
        "durable",
        "hello from a shell",
        "--topic",
        "chat",
    ]);
    let popped = node.cli_ok(&[
        "session",
        "pop",
        "durable",
        "--topic",
        "chat",
        "--timeout",
        "5",
    ]);
    assert_eq!(popped, "hello from a shell");
}
