//! The echo provider the mesh tests offer (on one node and across a
//! cluster's nodes), its descriptors, and the checks both make of it.
//! Included by `e2e/mesh.rs` and `cluster/mesh.rs` as a module of their own.

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
use std::time::Duration;

pub const ECHO: &str = "mesh.test.Echo";

#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    text: String,
}

/// A service `package.Name` with one method of each kind plus Slow, in a
/// file of its own with its messages Text and Other; Say is idempotent and
/// answers `say_output` (one of them: another one redefines the service).
pub fn descriptors(service: &str, say_output: &str) -> Vec<u8> {
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

/// The text of an encoded Text.
/// Calls `{ECHO}/Say` `n` times, one after another.
pub async fn say_times(caller: &Client, n: usize) {
    for i in 0..n {
        let request = serde_json::json!({"text": i.to_string()});
        caller.call(&format!("{ECHO}/Say"), request).await.unwrap();
    }
}

pub fn text(message: &Bytes) -> String {
    Text::decode(message.clone()).expect("a Text").text
}

/// `text` as an encoded Text.
pub fn encode(text: String) -> Bytes {
    Text { text }.encode_to_vec().into()
}

/// Counts a provider's calls, and those dropped before they finished
/// (cancelled).
#[derive(Default)]
pub struct Counters {
    calls: AtomicUsize,
    cancelled: AtomicUsize,
}

impl Counters {
    /// Calls that reached the provider so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls dropped before they finished so far.
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
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
/// <caller> trace <id> deadline <yes/no> tenant <x-tenant or ->" (or fails
/// NOT_FOUND for "fail"); Count streams "<name> <i>" as many times as its
/// text says, or for a text that is no number three times "<text> <i>";
/// Collect joins what it is sent; Chat echoes each message; Slow sleeps a
/// minute.
pub async fn provide(
    client: &Client,
    service: &str,
    name: &'static str,
    counters: Arc<Counters>,
) -> Provided {
    provide_with(client, service, name, counters, 0).await
}

/// [`provide`] running at most `concurrency` calls at once (0: 64).
#[allow(dead_code)] // the cluster's tests only
pub async fn provide_with(
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
                            let tenant =
                                context.metadata.get("x-tenant").map_or("-", String::as_str);
                            let reply = format!(
                                "{name}: {said} from {} trace {} deadline {in_time} tenant {tenant}",
                                context.caller, context.trace_id,
                            );
                            call.send(encode(reply)).await?;
                        }
                        "Count" => {
                            let request = text(&call.next_request().await.unwrap());
                            let (label, count) = match request.parse::<usize>() {
                                Ok(count) => (name.to_string(), count),
                                Err(_) => (request, 3),
                            };
                            for i in 0..count {
                                call.send(encode(format!("{label} {i}"))).await?;
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
                            // Reads in a task of its own while this one
                            // answers: the call split in two halves.
                            let (mut requests, mut responses) = call.split();
                            let (heard, mut unanswered) = tokio::sync::mpsc::channel(16);
                            let reader = tokio::spawn(async move {
                                while let Some(message) = requests.next_request().await {
                                    if heard.send(message).await.is_err() {
                                        break;
                                    }
                                }
                            });
                            while let Some(message) = unanswered.recv().await {
                                responses
                                    .send(encode(format!("re: {}", text(&message))))
                                    .await?;
                            }
                            reader.await.expect("the reader ends with the requests");
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

/// Waits up to 10 s for `condition`; panics naming `what` otherwise.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}

/// Calls `service`'s Slow in a task of its own, to hold a call in flight.
pub fn spawn_slow(
    caller: &Client,
    service: &str,
) -> tokio::task::JoinHandle<busbar_client::Result<serde_json::Value>> {
    let (caller, method) = (caller.clone(), format!("{service}/Slow"));
    tokio::spawn(async move { caller.call(&method, serde_json::json!({})).await })
}

/// What `service`'s Count streams for `request`, in order.
pub async fn count(caller: &Client, service: &str, request: &str) -> Vec<String> {
    let mut call = caller
        .stream(
            &format!("{service}/Count"),
            Some(serde_json::json!({"text": request})),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(message) = call.next_message().await {
        got.push(message.unwrap()["text"].as_str().unwrap().to_string());
    }
    got
}

/// Unary, by name with JSON: Say through `caller` with the trace id
/// `trace` and 20 s to go reaches provider "one", whose handler sees the
/// caller, the trace id and the time left. Returns that handle of `caller`.
pub async fn check_say_context(caller: &Client, service: &str, trace: &str) -> Client {
    let timed = caller
        .with_trace_id(trace)
        .unwrap()
        .with_timeout(Duration::from_secs(20));
    let reply = timed
        .call(&format!("{service}/Say"), serde_json::json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(
        reply["text"],
        format!("one: hi from admin trace {trace} deadline true tenant -")
    );
    timed
}

/// Client streaming: `messages` messages sent to `service`'s Collect come
/// back joined, in order.
pub async fn check_collect(caller: &Client, service: &str, messages: usize) {
    let mut call = caller
        .stream(&format!("{service}/Collect"), None)
        .await
        .unwrap();
    assert_eq!(call.kind(), MethodKind::ClientStreaming);
    for i in 0..messages {
        call.send(serde_json::json!({"text": i.to_string()}))
            .await
            .unwrap();
    }
    call.close_send();
    let joined = call.next_message().await.unwrap().unwrap();
    let expected: Vec<String> = (0..messages).map(|i| i.to_string()).collect();
    assert_eq!(joined["text"], expected.join(","));
}

/// Bidirectional: `service`'s Chat answers each message in turn, and ends
/// when the caller does.
pub async fn check_chat(caller: &Client, service: &str) {
    let mut call = caller
        .stream(&format!("{service}/Chat"), None)
        .await
        .unwrap();
    for word in ["a", "b", "c"] {
        call.send(serde_json::json!({"text": word})).await.unwrap();
        let answer = call.next_message().await.unwrap().unwrap();
        assert_eq!(answer["text"], format!("re: {word}"));
    }
    call.close_send();
    assert!(call.next_message().await.is_none());
}

/// The typed error of `service`'s provider `name` reaches the caller as it
/// was given.
pub async fn check_provider_error(caller: &Client, service: &str, name: &str) {
    let error = caller
        .call(
            &format!("{service}/Say"),
            serde_json::json!({"text": "fail"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::NotFound, "{error}");
    assert_eq!(error.message(), format!("{name} found nothing to say"));
}
