//! Mesh services across nodes: a caller on one node reaches a provider on
//! another (every call kind, errors, deadlines, messages larger than NATS
//! carries at once), balancing sees the providers of every node, a caller
//! that goes away cancels the call on the provider's node, and a node that
//! dies fails its providers' calls promptly while the others serve on.

use crate::Cluster;
use crate::harness::{assert_code, assert_error, eventually};
use busbar_client::{Client, ErrorCode, MethodKind, Offer, Provided, ProviderCall};
use bytes::Bytes;
use prost::Message;
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    MethodDescriptorProto, MethodOptions, ServiceDescriptorProto, field_descriptor_proto,
    method_options::IdempotencyLevel,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ECHO: &str = "mesh.test.Echo";
/// Provided on one node only (in a package of its own).
const LONELY: &str = "mesh.lonely.Lonely";

#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    text: String,
}

/// A service `package.Name` with one method of each kind plus Slow, in a
/// file of its own with its messages Text and Other; Say is idempotent and
/// answers `say_output` (one of them).
fn descriptors(service: &str, say_output: &str) -> Vec<u8> {
    let (package, name) = service.rsplit_once('.').unwrap();
    let text_type = format!(".{package}.Text");
    let say_output = format!(".{package}.{say_output}");
    let method = |method: &str, client: bool, server: bool, output: &str| MethodDescriptorProto {
        name: Some(method.into()),
        input_type: Some(text_type.clone()),
        output_type: Some(output.into()),
        client_streaming: Some(client),
        server_streaming: Some(server),
        options: (method == "Say").then(|| MethodOptions {
            idempotency_level: Some(IdempotencyLevel::Idempotent as i32),
            ..Default::default()
        }),
    };
    let message = |name: &str| DescriptorProto {
        name: Some(name.into()),
        field: vec![FieldDescriptorProto {
            name: Some("text".into()),
            number: Some(1),
            label: Some(field_descriptor_proto::Label::Optional as i32),
            r#type: Some(field_descriptor_proto::Type::String as i32),
            json_name: Some("text".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some(format!(
            "{}.proto",
            service.replace('.', "/").to_lowercase()
        )),
        package: Some(package.into()),
        message_type: vec![message("Text"), message("Other")],
        service: vec![ServiceDescriptorProto {
            name: Some(name.into()),
            method: vec![
                method("Say", false, false, &say_output),
                method("Count", false, true, &text_type),
                method("Collect", true, false, &text_type),
                method("Chat", true, true, &text_type),
                method("Slow", false, false, &text_type),
            ],
            options: None,
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

fn text(message: &Bytes) -> String {
    Text::decode(message.clone()).expect("a Text").text
}

fn encode(text: String) -> Bytes {
    Text { text }.encode_to_vec().into()
}

/// Counts a provider's calls, and those dropped before they finished.
#[derive(Default)]
struct Counters {
    calls: AtomicUsize,
    cancelled: AtomicUsize,
}

struct CancelGuard(Arc<Counters>, bool);
impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A provider of `service` named `name`: Say answers "<name>: <text> from
/// <caller> trace <id> deadline <yes/no>" (or fails NOT_FOUND for "fail");
/// Count streams as many copies as its text says (or 3); Collect joins what
/// it is sent; Chat echoes each message; Slow sleeps a minute.
async fn provide(
    client: &Client,
    service: &str,
    name: &'static str,
    counters: Arc<Counters>,
) -> Provided {
    provide_with(client, service, name, counters, 0).await
}

/// [`provide`] running at most `concurrency` calls at once (0: 64).
async fn provide_with(
    client: &Client,
    service: &str,
    name: &'static str,
    counters: Arc<Counters>,
    concurrency: u32,
) -> Provided {
    client
        .provide(
            Offer::new([service], descriptors(service, "Text")).concurrency(concurrency),
            move |mut call: ProviderCall| {
                let counters = counters.clone();
                async move {
                    counters.calls.fetch_add(1, Ordering::SeqCst);
                    let mut guard = CancelGuard(counters, false);
                    let method = call.context.method.rsplit('/').next().unwrap().to_string();
                    match method.as_str() {
                        "Say" => {
                            let said = text(&call.next_request().await.unwrap());
                            if said == "fail" {
                                return Err(busbar_client::Error::new(
                                    ErrorCode::NotFound,
                                    format!("{name} found nothing to say"),
                                ));
                            }
                            let context = &call.context;
                            let in_time = context.time_left().is_some_and(|left| {
                                left > Duration::ZERO && left <= Duration::from_secs(30)
                            });
                            let reply = format!(
                                "{name}: {said} from {} trace {} deadline {in_time}",
                                context.caller, context.trace_id,
                            );
                            call.send(encode(reply)).await?;
                        }
                        "Count" => {
                            let request = text(&call.next_request().await.unwrap());
                            let count = request.parse().unwrap_or(3);
                            for i in 0..count {
                                call.send(encode(format!("{name} {i}"))).await?;
                            }
                        }
                        "Collect" => {
                            let mut all = Vec::new();
                            while let Some(message) = call.next_request().await {
                                all.push(text(&message));
                            }
                            call.send(encode(all.join(","))).await?;
                        }
                        "Chat" => {
                            while let Some(message) = call.next_request().await {
                                call.send(encode(format!("re: {}", text(&message)))).await?;
                            }
                        }
                        "Slow" => tokio::time::sleep(Duration::from_secs(60)).await,
                        _ => unreachable!("the node routes only declared methods"),
                    }
                    guard.1 = true;
                    Ok(())
                }
            },
        )
        .await
        .expect("the offer is accepted")
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}

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
    let timed = caller
        .with_trace_id("trace-across")
        .unwrap()
        .with_timeout(Duration::from_secs(20));
    let reply = timed
        .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(
        reply["text"],
        "one: hi from admin trace trace-across deadline true"
    );

    // Server streaming, past the credit window both nodes keep.
    let mut call = caller
        .stream(
            &format!("{ECHO}/Count"),
            Some(serde_json::json!({"text": "100"})),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(message) = call.next_message().await {
        got.push(message.unwrap()["text"].as_str().unwrap().to_string());
    }
    let expected: Vec<String> = (0..100).map(|i| format!("one {i}")).collect();
    assert_eq!(got, expected, "every message, in order");

    // Client streaming, past the window.
    let mut call = caller
        .stream(&format!("{ECHO}/Collect"), None)
        .await
        .unwrap();
    assert_eq!(call.kind(), MethodKind::ClientStreaming);
    for i in 0..60 {
        call.send(serde_json::json!({"text": i.to_string()}))
            .await
            .unwrap();
    }
    call.close_send();
    let joined = call.next_message().await.unwrap().unwrap();
    let expected: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    assert_eq!(joined["text"], expected.join(","));

    // Bidirectional, each message answered in turn.
    let mut call = caller.stream(&format!("{ECHO}/Chat"), None).await.unwrap();
    for word in ["a", "b", "c"] {
        call.send(serde_json::json!({"text": word})).await.unwrap();
        let answer = call.next_message().await.unwrap().unwrap();
        assert_eq!(answer["text"], format!("re: {word}"));
    }
    call.close_send();
    assert!(call.next_message().await.is_none());

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
    let error = caller
        .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "fail"}))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::NotFound, "{error}");
    assert_eq!(error.message(), "one found nothing to say");

    // The caller's deadline passes on its node: DEADLINE_EXCEEDED, and the
    // handler on the other node is cancelled.
    let before = counters.cancelled.load(Ordering::SeqCst);
    let started = Instant::now();
    assert_code(
        caller
            .with_timeout(Duration::from_millis(500))
            .call(&format!("{ECHO}/Slow"), serde_json::json!({}))
            .await,
        ErrorCode::Timeout,
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    wait_for("the handler cancelled", || {
        counters.cancelled.load(Ordering::SeqCst) > before
    })
    .await;

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
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
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
        let before = (
            a.calls.load(Ordering::SeqCst),
            b.calls.load(Ordering::SeqCst),
        );
        for i in 0..40 {
            caller
                .call(
                    &format!("{ECHO}/Say"),
                    serde_json::json!({"text": i.to_string()}),
                )
                .await
                .unwrap();
        }
        let served = (
            a.calls.load(Ordering::SeqCst) - before.0,
            b.calls.load(Ordering::SeqCst) - before.1,
        );
        assert_eq!(served.0 + served.1, 40);
        assert!(
            served.0 >= 10 && served.1 >= 10,
            "a {}, b {}",
            served.0,
            served.1
        );
    }
    let before_slow = (
        a.calls.load(Ordering::SeqCst),
        b.calls.load(Ordering::SeqCst),
    );

    // A busy provider gets no new calls while another is idle: B's
    // provider runs one call at a time and holds one, sent through node B;
    // node A hears so (within a second) and sends its calls to its own.
    let mut held = Vec::new();
    while b.calls.load(Ordering::SeqCst) == before_slow.1 {
        let caller = on_b.clone();
        held.push(tokio::spawn(async move {
            caller
                .call(&format!("{ECHO}/Slow"), serde_json::json!({}))
                .await
        }));
        assert!(
            held.len() < 10,
            "node B sends a Slow call to its own provider"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = (
        a.calls.load(Ordering::SeqCst),
        b.calls.load(Ordering::SeqCst),
    );
    for _ in 0..10 {
        on_a.with_timeout(Duration::from_secs(10))
            .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "x"}))
            .await
            .unwrap();
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), before.0 + 10);
    assert_eq!(b.calls.load(Ordering::SeqCst), before.1);
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
    let before = a.calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        let mut call = on_a
            .stream(
                &format!("{ECHO}/Count"),
                Some(serde_json::json!({"text": "2"})),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(message) = call.next_message().await {
            got.push(message.unwrap()["text"].as_str().unwrap().to_string());
        }
        assert_eq!(got, ["a 0", "a 1"]);
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), before + 20);
    drop(provider_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_caller_that_goes_away_cancels_the_call_on_the_providers_node() {
    let mut cluster = Cluster::start(2);
    let caller = cluster.admin_on(0).await;
    let counters = Arc::new(Counters::default());
    let _provided = provide(&cluster.admin_on(1).await, ECHO, "far", counters.clone()).await;

    let call = {
        let caller = caller.clone();
        tokio::spawn(async move {
            caller
                .call(&format!("{ECHO}/Slow"), serde_json::json!({}))
                .await
        })
    };
    wait_for("the call reached the provider", || {
        counters.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let services = caller.services("").await.unwrap();
    assert_eq!(services[0].providers[0].calls_in_flight, 1);
    call.abort(); // the caller goes away: its HTTP/2 stream is reset
    wait_for("the handler on the other node cancelled", || {
        counters.cancelled.load(Ordering::SeqCst) == 1
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
        counters.cancelled.load(Ordering::SeqCst) == 2
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
    let orphan = {
        let caller = caller.clone();
        tokio::spawn(async move {
            caller
                .call(&format!("{ECHO}/Slow"), serde_json::json!({}))
                .await
        })
    };
    wait_for("the call reached the provider", || {
        counters.calls.load(Ordering::SeqCst) == 3
    })
    .await;
    let killed = Instant::now();
    cluster.nodes[0].kill9();
    wait_for("the orphaned handler cancelled", || {
        counters.cancelled.load(Ordering::SeqCst) == 3
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
    wait_for("the call reached node 1", || {
        doomed.calls.load(Ordering::SeqCst) == 1
    })
    .await;
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
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // A short deadline is honoured whatever the provider's node does.
    let started = Instant::now();
    let result = caller
        .with_timeout(Duration::from_millis(700))
        .call(&format!("{LONELY}/Slow"), serde_json::json!({}))
        .await;
    assert!(result.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The service node 2 also provides goes on: every call served there.
    let before = lasting.calls.load(Ordering::SeqCst);
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
    assert_eq!(lasting.calls.load(Ordering::SeqCst), before + 20);
    // And the listing no longer shows the dead node's providers.
    let services = caller.services("").await.unwrap();
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(services[0].name, ECHO);
    assert_eq!(services[0].providers.len(), 1, "{services:?}");
}
