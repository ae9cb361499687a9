//! Mesh services across nodes: a caller on one node reaches a provider on
//! another (every call kind, errors, deadlines, messages larger than NATS
//! carries at once), balancing sees the providers of every node, a caller
//! that goes away cancels the call on the provider's node, and a node that
//! dies fails its providers' calls promptly while the others serve on.

#[path = "../e2e/mesh_echo.rs"]
mod echo;

use crate::Cluster;
use crate::harness::{assert_code, assert_error, assert_within, eventually};
use busbar_client::{ErrorCode, Offer};
use echo::{
    Counters, ECHO, check_chat, check_collect, check_provider_error, check_say_context, count,
    descriptors, provide, provide_with, say_times, spawn_slow, wait_for,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Provided on one node only (in a package of its own).
const LONELY: &str = "mesh.lonely.Lonely";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_caller_on_one_node_reaches_a_provider_on_another_with_every_call_kind() {
    let cluster = Cluster::start(2);
    let (caller, provider_client) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    let counters = Arc::new(Counters::default());
    let provided = provide(&provider_client, ECHO, "one", counters.clone()).await;
    assert!(
        provided.id.starts_with('p') && provided.id.contains('@'),
        "a cluster's provider ids name their node: {}",
        provided.id
    );

    // Unary, by name with JSON: the caller's node finds the method through
    // reflection at once (the offer is in the cluster's directory), and the
    // handler sees the caller, the trace id and the time left.
    let timed = check_say_context(&caller, ECHO, "trace-across").await;

    // Server streaming, past the credit window both nodes keep.
    let expected: Vec<String> = (0..100).map(|i| format!("one {i}")).collect();
    assert_eq!(
        count(&caller, ECHO, "100").await,
        expected,
        "every message, in order"
    );

    // Client streaming, past the window.
    check_collect(&caller, ECHO, 60).await;

    // Bidirectional, each message answered in turn.
    check_chat(&caller, ECHO).await;

    // A message larger than NATS carries at once (1 MiB) crosses both ways,
    // in pieces, whole.
    let big: String = (0..3_000_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let reply = timed
        .call(&format!("{ECHO}/Say"), serde_json::json!({"text": big}))
        .await
        .unwrap();
    let said = reply["text"].as_str().unwrap();
    assert!(said.starts_with("one: abcdefg"), "{}", &said[..40]);
    assert!(said.contains(&big), "the large message came back whole");

    // The provider's typed error reaches the caller as it was given.
    check_provider_error(&caller, ECHO, "one").await;

    // The caller's deadline passes on its node: DEADLINE_EXCEEDED, and the
    // handler on the other node is cancelled.
    let before = counters.cancelled();
    let started = Instant::now();
    assert_code(
        caller
            .with_timeout(Duration::from_millis(500))
            .call(&format!("{ECHO}/Slow"), serde_json::json!({}))
            .await,
        ErrorCode::Timeout,
    );
    assert_within(started, Duration::from_secs(3));
    wait_for("the handler cancelled", || counters.cancelled() > before).await;

    // Every node lists the provider, wherever it is.
    for client in [&caller, &provider_client] {
        let services = client.services("").await.unwrap();
        let echo = services.iter().find(|s| s.name == ECHO).expect("listed");
        assert_eq!(echo.providers.len(), 1, "{echo:?}");
        assert_eq!(echo.providers[0].id, provided.id);
        assert_eq!(echo.providers[0].identity, "admin");
    }

    // Another definition of the live service is refused on the other node
    // too, naming both, and changes nothing.
    let other = caller
        .provide(Offer::new([ECHO], descriptors(ECHO, "Other")), |_| async {
            Ok(())
        })
        .await;
    assert_error(
        other,
        ErrorCode::FailedPrecondition,
        "is live with other methods",
    );
    let services = caller.services("").await.unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].providers.len(), 1);

    // Closed, the service is gone from every node: a call fails at once.
    provided.close(Duration::from_secs(2)).await;
    let started = Instant::now();
    assert_error(
        caller
            .with_timeout(Duration::from_secs(20))
            .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "x"}))
            .await,
        ErrorCode::Unavailable,
        "",
    );
    assert_within(started, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn calls_are_balanced_over_the_providers_of_every_node() {
    let cluster = Cluster::start(2);
    let (on_a, on_b) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    let (a, b) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
    let provider_a = provide(&cluster.admin_on(0).await, ECHO, "a", a.clone()).await;
    let provider_b = provide_with(&cluster.admin_on(1).await, ECHO, "b", b.clone(), 1).await;

    // A new provider of a live service reaches the other nodes' balancing
    // within a second (its node announces it at once; they read it then).
    for caller in [&on_a, &on_b] {
        eventually("both providers listed", || async {
            match caller.services("").await.unwrap()[0].providers.len() {
                2 => Ok(()),
                n => Err(n),
            }
        })
        .await;
    }
    // Callers on either node: both providers get a share of each node's calls.
    for caller in [&on_a, &on_b] {
        let before = (a.calls(), b.calls());
        say_times(caller, 40).await;
        let served = (a.calls() - before.0, b.calls() - before.1);
        assert_eq!(served.0 + served.1, 40);
        assert!(
            served.0 >= 10 && served.1 >= 10,
            "a {}, b {}",
            served.0,
            served.1
        );
    }
    let before_slow = (a.calls(), b.calls());

    // A busy provider gets no new calls while another is idle: B's
    // provider runs one call at a time and holds one, sent through node B;
    // node A hears so (within a second) and sends its calls to its own.
    let mut held = Vec::new();
    while b.calls() == before_slow.1 {
        held.push(spawn_slow(&on_b, ECHO));
        assert!(
            held.len() < 10,
            "node B sends a Slow call to its own provider"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = (a.calls(), b.calls());
    for _ in 0..10 {
        on_a.with_timeout(Duration::from_secs(10))
            .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "x"}))
            .await
            .unwrap();
    }
    assert_eq!(a.calls(), before.0 + 10);
    assert_eq!(b.calls(), before.1);
    let services = on_a.services("").await.unwrap();
    let busy = services[0].providers.iter().find(|p| p.id == provider_b.id);
    assert_eq!(busy.map(|p| p.calls_in_flight), Some(1), "{services:?}");
    for call in held {
        call.abort();
    }

    // A provider closed on one node: calls from the other at once go to the
    // one left, none failing, even a kind that is not retried after a loss
    // (the closed one never had them).
    provider_b.close(Duration::from_secs(2)).await;
    let before = a.calls();
    for _ in 0..20 {
        assert_eq!(count(&on_a, ECHO, "2").await, ["a 0", "a 1"]);
    }
    assert_eq!(a.calls(), before + 20);
    drop(provider_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_caller_that_goes_away_cancels_the_call_on_the_providers_node() {
    let mut cluster = Cluster::start(2);
    let caller = cluster.admin_on(0).await;
    let counters = Arc::new(Counters::default());
    let _provided = provide(&cluster.admin_on(1).await, ECHO, "far", counters.clone()).await;

    let call = spawn_slow(&caller, ECHO);
    wait_for("the call reached the provider", || counters.calls() == 1).await;
    let services = caller.services("").await.unwrap();
    assert_eq!(services[0].providers[0].calls_in_flight, 1);
    call.abort(); // the caller goes away: its HTTP/2 stream is reset
    wait_for("the handler on the other node cancelled", || {
        counters.cancelled() == 1
    })
    .await;

    // A streaming call whose caller goes away mid-stream, likewise (its
    // provider waits for credit the caller no longer grants).
    let mut count = caller
        .stream(
            &format!("{ECHO}/Count"),
            Some(serde_json::json!({"text": "1000000"})),
        )
        .await
        .unwrap();
    assert_eq!(
        count.next_message().await.unwrap().unwrap()["text"],
        "far 0"
    );
    drop(count);
    wait_for("the streaming handler cancelled", || {
        counters.cancelled() == 2
    })
    .await;
    // Nothing is left in flight on either node.
    for n in 0..2 {
        let client = cluster.admin_on(n).await;
        let mut in_flight = u64::MAX;
        for _ in 0..50 {
            in_flight = client.services("").await.unwrap()[0].providers[0].calls_in_flight;
            if in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(in_flight, 0, "node {n}");
    }

    // The caller's whole node dies mid-call: the provider's node stops
    // hearing it confirm the call, and cancels it.
    let orphan = spawn_slow(&caller, ECHO);
    wait_for("the call reached the provider", || counters.calls() == 3).await;
    let killed = Instant::now();
    cluster.nodes[0].kill9();
    wait_for("the orphaned handler cancelled", || {
        counters.cancelled() == 3
    })
    .await;
    eprintln!(
        "a call whose caller's node was killed was cancelled {:?} after the kill",
        killed.elapsed()
    );
    assert!(orphan.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_killed_provider_node_fails_its_calls_promptly_and_the_other_nodes_serve_on() {
    let mut cluster = Cluster::start(3);
    let caller = cluster.admin_on(0).await;
    let (doomed, lasting) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
    let on_doomed = cluster.admin_on(1).await;
    let _lonely = provide(&on_doomed, LONELY, "lonely", doomed.clone()).await;
    let _echo_doomed = provide(&on_doomed, ECHO, "doomed", doomed.clone()).await;
    let _echo_lasting = provide(&cluster.admin_on(2).await, ECHO, "lasting", lasting.clone()).await;

    // A call in flight at node 1 (only it provides Lonely; Slow is not
    // idempotent, so it is not retried).
    let in_flight = {
        let caller = caller.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = caller
                .with_timeout(Duration::from_secs(60))
                .call(&format!("{LONELY}/Slow"), serde_json::json!({}))
                .await;
            (result, started.elapsed())
        })
    };
    wait_for("the call reached node 1", || doomed.calls() == 1).await;
    let killed = Instant::now();
    cluster.nodes[1].kill9();

    // It fails UNAVAILABLE within seconds, not at its deadline.
    let (result, _) = in_flight.await.unwrap();
    assert_error(result, ErrorCode::Unavailable, "was lost");
    let failed_after = killed.elapsed();
    assert!(failed_after < Duration::from_secs(8), "{failed_after:?}");
    eprintln!("a call in flight at a killed node failed {failed_after:?} after the kill");

    // A new call to a service only the dead node provided fails promptly.
    let started = Instant::now();
    assert_code(
        caller
            .with_timeout(Duration::from_secs(60))
            .call(&format!("{LONELY}/Say"), serde_json::json!({"text": "x"}))
            .await,
        ErrorCode::Unavailable,
    );
    assert_within(started, Duration::from_secs(8));

    // A short deadline is honoured whatever the provider's node does.
    let started = Instant::now();
    let result = caller
        .with_timeout(Duration::from_millis(700))
        .call(&format!("{LONELY}/Slow"), serde_json::json!({}))
        .await;
    assert!(result.is_err());
    assert_within(started, Duration::from_secs(2));

    // The service node 2 also provides goes on: every call served there.
    let before = lasting.calls();
    for i in 0..20 {
        let reply = caller
            .with_timeout(Duration::from_secs(20))
            .call(
                &format!("{ECHO}/Say"),
                serde_json::json!({"text": i.to_string()}),
            )
            .await
            .unwrap();
        assert!(
            reply["text"].as_str().unwrap().starts_with("lasting: "),
            "{reply}"
        );
    }
    assert_eq!(lasting.calls(), before + 20);
    // And the listing no longer shows the dead node's providers.
    let services = caller.services("").await.unwrap();
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(services[0].name, ECHO);
    assert_eq!(services[0].providers.len(), 1, "{services:?}");
}
