//! Mesh: providers dial out and offer services; callers call them through
//! the node by full method name. Every call kind, context passed to the
//! handler, balancing, a lost provider, idempotent retry, cancellation,
//! rights and bad offers.

#[path = "mesh_echo.rs"]
pub mod echo;

use crate::harness::{Node, assert_code, assert_error, assert_within, eventually, tls_channel};
use busbar_client::{Client, ErrorCode, Offer, Provided, ProviderCall, Right};
use bytes::Bytes;
use echo::{
    Counters, ECHO, check_chat, check_collect, check_provider_error, check_say_context, count,
    descriptors, encode, provide, say_times, spawn_slow, text, wait_for,
};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_kind_reaches_a_provider_through_the_node_with_its_context() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    let counters = Arc::new(Counters::default());
    let provider_client = node.admin().await;
    // A default deadline of the provider's handle does not end its stream.
    let provider_client = provider_client.with_timeout(Duration::from_millis(300));
    let provided = provide(&provider_client, ECHO, "one", counters.clone()).await;
    assert_eq!(provided.paths, vec![format!("/services/{ECHO}")]);
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Unary, by name with JSON, found through reflection; the handler sees
    // the caller, the trace id and the time left.
    check_say_context(&admin, ECHO, "trace-mesh-1").await;

    // Server streaming.
    assert_eq!(count(&admin, ECHO, "n").await, ["n 0", "n 1", "n 2"]);

    // Client streaming: more messages than the window, so credit flows.
    check_collect(&admin, ECHO, 40).await;

    // Bidirectional: each message answered in turn.
    check_chat(&admin, ECHO).await;

    // A provider's error reaches the caller with its code and message.
    check_provider_error(&admin, ECHO, "one").await;
    // A method the descriptor lacks is refused by the node.
    assert_code(
        admin
            .call(&format!("{ECHO}/Nope"), serde_json::json!({}))
            .await,
        ErrorCode::Unimplemented,
    );

    // The listing shows the provider and what it served.
    let services = admin.services("").await.unwrap();
    let echo = services.iter().find(|s| s.name == ECHO).expect("listed");
    assert_eq!(echo.providers.len(), 1);
    assert_eq!(echo.providers[0].identity, "admin");
    assert!(echo.providers[0].calls_served >= 4, "{echo:?}");
    assert_eq!(echo.methods, ["Chat", "Collect", "Count", "Say", "Slow"]);

    // `busbar call` reaches the provided method by name.
    // (The CLI runs while this runtime keeps serving the provider.)
    let say = format!("{ECHO}/Say");
    let printed = tokio::task::block_in_place(|| node.cli_ok(&["call", &say, r#"{"text":"cli"}"#]));
    assert!(printed.contains("one: cli from admin"), "{printed}");

    // So does a stock tonic client pointed at the node, with a session as
    // bearer and x- metadata, which reaches the handler.
    let config = node.admin_json();
    let login = admin
        .call(
            "busbar.v1.Auth/Login",
            serde_json::json!({"password": {
                "user": "admin",
                "password": config["credential"]["password"],
            }}),
        )
        .await
        .unwrap();
    let address = config["address"].as_str().unwrap().to_string();
    let channel = tls_channel(config["ca_pem"].as_str().unwrap(), address).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(encode("stock".into()));
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap());
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-tenant", "blue".parse().unwrap());
    let reply = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/mesh.test.Echo/Say"),
            busbar_proto::bytes_codec::BytesCodec,
        )
        .await
        .unwrap();
    let said = text(reply.get_ref());
    assert!(said.starts_with("one: stock from admin trace "), "{said}");
    assert!(said.ends_with("deadline false tenant blue"), "{said}");

    // A payload that is not the method's message reaches the provider as
    // bytes; this handler panics decoding it, and the caller hears so at
    // once, typed, instead of waiting out its deadline.
    let mut request = tonic::Request::new(Bytes::from_static(&[0xff, 0xff, 0xff]));
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    request.set_timeout(Duration::from_secs(20));
    let started = std::time::Instant::now();
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<Bytes, Bytes, _>(
            request,
            http::uri::PathAndQuery::from_static("/mesh.test.Echo/Say"),
            busbar_proto::bytes_codec::BytesCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(status.message().contains("panicked"), "{status:?}");
    assert_within(started, Duration::from_secs(10));

    // A caller whose deadline passes cancels the handler.
    let before = counters.cancelled();
    assert_code(
        admin
            .with_timeout(Duration::from_millis(300))
            .call(&format!("{ECHO}/Slow"), serde_json::json!({}))
            .await,
        ErrorCode::Timeout,
    );
    wait_for("the handler cancelled", || counters.cancelled() > before).await;

    // Metrics count calls per service and provider identity.
    let metrics = node.metrics_text();
    assert!(
        metrics.contains(&format!(
            "busbar_mesh_calls_total{{service=\"{ECHO}\",provider=\"admin\",code=\"OK\"}}"
        )),
        "{metrics}"
    );

    // Closing drains: the service goes with its last provider.
    // The stream has ended by the time close returns.
    provided.close(Duration::from_secs(2)).await;
    assert!(admin.services("").await.unwrap().is_empty());
    assert_error(
        admin
            .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "x"}))
            .await,
        ErrorCode::Unavailable,
        "no provider offers",
    );
}

#[tokio::test]
async fn calls_spread_over_providers_and_a_lost_one_fails_or_retries_its_calls() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    let (a, b) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
    let client_a = node.admin().await;
    let client_b = node.admin().await;
    let provider_a = provide(&client_a, ECHO, "a", a.clone()).await;
    let provider_b = provide(&client_b, ECHO, "b", b.clone()).await;
    say_times(&admin, 40).await;
    let (served_a, served_b) = (a.calls(), b.calls());
    assert_eq!(served_a + served_b, 40);
    assert!(
        served_a >= 10 && served_b >= 10,
        "a {served_a}, b {served_b}"
    );

    // A call in flight at a provider that disappears fails UNAVAILABLE
    // (Slow is not idempotent), naming the loss.
    let slow = spawn_slow(&admin, ECHO);
    wait_for("the Slow call reached a provider", || {
        a.calls() + b.calls() > 40
    })
    .await;
    let lost_a = a.calls() > served_a;
    let (gone, stays, stays_counters) = if lost_a {
        (provider_a, provider_b, b.clone())
    } else {
        (provider_b, provider_a, a.clone())
    };
    drop(gone);
    assert_error(slow.await.unwrap(), ErrorCode::Unavailable, "was lost");

    // Every Say now lands on the provider that stays.
    let before = stays_counters.calls();
    for _ in 0..5 {
        admin
            .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "x"}))
            .await
            .unwrap();
    }
    assert_eq!(stays_counters.calls(), before + 5);
    drop(stays);
}

#[tokio::test]
async fn an_idempotent_call_moves_to_another_provider_when_its_own_is_lost() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    // A provider that takes Say and never answers, and one that answers.
    let stuck_client = node.admin().await;
    let stuck = stuck_client
        .provide(
            Offer::new([ECHO], descriptors(ECHO, "Text")),
            |_call: ProviderCall| async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            },
        )
        .await
        .unwrap();
    let call = {
        let admin = admin.clone();
        tokio::spawn(async move {
            admin
                .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "again"}))
                .await
        })
    };
    // The call is at the stuck provider (the only one) before the good one comes.
    wait_for_async(|| async {
        admin.services("").await.unwrap()[0].providers[0].calls_in_flight == 1
    })
    .await;
    let good_client = node.admin().await;
    let good = provide(&good_client, ECHO, "good", Arc::new(Counters::default())).await;
    drop(stuck);
    let reply = call.await.unwrap().unwrap();
    assert!(
        reply["text"].as_str().unwrap().starts_with("good: again"),
        "{reply}"
    );
    drop(good);
}

#[tokio::test]
async fn rights_and_bad_offers_are_refused_and_change_nothing() {
    let (node, admin, eve) = Node::start_with_user("eve", "eve-password").await;

    // Eve may not create a service (no write on /services)...
    assert_error(
        offer(&eve, &[ECHO], descriptors(ECHO, "Text")).await,
        ErrorCode::NotFound,
        "busbar service create",
    );
    assert!(admin.get(&format!("/services/{ECHO}")).await.is_err());

    // ...nor provide one that exists without write on it.
    let counters = Arc::new(Counters::default());
    let provider = provide(&admin, ECHO, "admin", counters).await;
    assert_code(
        offer(&eve, &[ECHO], descriptors(ECHO, "Text")).await,
        ErrorCode::PermissionDenied,
    );

    // Calling needs read on the service; the listing hides it until then.
    assert_code(
        eve.call(&format!("{ECHO}/Say"), serde_json::json!({"text": "x"}))
            .await,
        ErrorCode::PermissionDenied,
    );
    assert!(eve.services("").await.unwrap().is_empty());
    admin
        .grant(&format!("/services/{ECHO}"), "eve", Right::Read)
        .await
        .unwrap();
    let reply = eve
        .call(&format!("{ECHO}/Say"), serde_json::json!({"text": "x"}))
        .await
        .unwrap();
    assert!(
        reply["text"].as_str().unwrap().contains("from eve"),
        "{reply}"
    );

    // Another definition of a live service is refused, naming both.
    assert_error(
        offer(&admin, &[ECHO], descriptors(ECHO, "Other")).await,
        ErrorCode::FailedPrecondition,
        "is live with other methods",
    );

    // Bad offers: undecodable descriptors, a missing service, a reserved
    // package, a bad name.
    for (services, set, expected) in [
        (vec![ECHO], vec![0xff, 0xff], "not an encoded"),
        (
            vec!["mesh.test.Missing"],
            descriptors(ECHO, "Text"),
            "defines no service",
        ),
        (
            vec!["busbar.v1.Node"],
            descriptors(ECHO, "Text"),
            "keeps for its own",
        ),
        (
            vec!["bad name"],
            descriptors(ECHO, "Text"),
            "bad service name",
        ),
        (vec![], descriptors(ECHO, "Text"), "at least one service"),
    ] {
        assert_error(
            offer(&admin, &services, set).await,
            ErrorCode::InvalidArgument,
            expected,
        );
    }
    let services = admin.services("").await.unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].providers.len(), 1);
    drop(provider);

    // A provider whose identity is revoked is cut while its stream lasts.
    let prov = node
        .new_user_granted(&admin, "prov", "prov-password", "/services", Right::Write)
        .await;
    let provided = provide(&prov, ECHO, "prov", Arc::new(Counters::default())).await;
    wait_for_async(|| provides(&admin, "prov")).await;
    admin.revoke_identity("prov").await.unwrap();
    wait_for_async(|| async { !provides(&admin, "prov").await }).await;
    assert!(node.log().contains("its credentials no longer hold"));
    drop(provided);
}

/// Offers `services` with a handler that answers nothing; for offers
/// that should be refused.
async fn offer(
    client: &Client,
    services: &[&str],
    set: Vec<u8>,
) -> busbar_client::Result<Provided> {
    client
        .provide(Offer::new(services.iter().copied(), set), |_| async {
            Ok(())
        })
        .await
}

/// Whether `identity` provides any service the node lists.
async fn provides(admin: &Client, identity: &str) -> bool {
    admin
        .services("")
        .await
        .unwrap()
        .iter()
        .any(|s| s.providers.iter().any(|p| p.identity == identity))
}

async fn wait_for_async<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_offers_again_by_itself_after_the_node_restarts() {
    let (mut node, admin) = Node::start_with_admin(&[]).await;
    let provider_client = node.admin().await;
    let provided = provide(
        &provider_client,
        ECHO,
        "back",
        Arc::new(Counters::default()),
    )
    .await;

    node.restart(); // SIGKILL, then start again on the same data and port

    // Once it has offered again, calls through the node reach it.
    let say = format!("{ECHO}/Say");
    let reply = eventually("a call reaching the provider again", || {
        admin.call(&say, serde_json::json!({"text": "again"}))
    })
    .await;
    assert!(
        reply["text"].as_str().unwrap().starts_with("back: again"),
        "{reply}"
    );
    // The restarted node numbers providers afresh, so this is its id there.
    assert!(
        provided.current_id().starts_with('p'),
        "{}",
        provided.current_id()
    );

    // Closed, it stays gone.
    provided.close(Duration::from_secs(1)).await;
    assert!(!provides(&admin, "admin").await);
}
