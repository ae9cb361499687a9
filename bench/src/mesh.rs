//! Scenario: a mesh call, from a caller through the node to a provider and
//! back, against NATS request/reply to a responder and against a direct
//! gRPC call to the same handler without the node (the floor).
//!
//! One child process, `mesh-peer`, holds all three answering sides, each
//! echoing a 64-byte payload: the Busbar provider (dialled out to the node,
//! offering `bench.mesh.Echo`), a TLS tonic server serving the same method,
//! and a NATS responder. The load generator (this process) calls each the
//! way an application would: a stock tonic channel to the node with a
//! bearer token (bytes in, bytes out, so no JSON in the way), a tonic
//! channel to the direct server, one NATS client. p50/p99 latency and
//! throughput at 1 and 64 calls in flight; the systems take turns.

use crate::ctx::Ctx;
use crate::procs::Result;
use crate::report::{Better, Row, Target};
use crate::unary::{Call, Measured, TakenTurns};
use busbar_proto::bytes_codec::BytesCodec;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

const SERVICE: &str = "bench.mesh.Echo";
const METHOD: &str = "/bench.mesh.Echo/Echo";
const NATS_SUBJECT: &str = "bench.mesh.echo";
const PAYLOAD_BYTES: usize = 64;
const TRANSPORT_SESSION: &str = "bench-transport";

/// `bench.mesh.Echo { rpc Echo(Payload) returns (Payload); }`,
/// `Payload { bytes data = 1; }`, as an encoded FileDescriptorSet.
fn descriptors() -> Vec<u8> {
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        MethodDescriptorProto, ServiceDescriptorProto, field_descriptor_proto::Label,
        field_descriptor_proto::Type,
    };
    let file = FileDescriptorProto {
        name: Some("bench/mesh/echo.proto".into()),
        package: Some("bench.mesh".into()),
        message_type: vec![DescriptorProto {
            name: Some("Payload".into()),
            field: vec![FieldDescriptorProto {
                name: Some("data".into()),
                number: Some(1),
                label: Some(Label::Optional as i32),
                r#type: Some(Type::Bytes as i32),
                json_name: Some("data".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        service: vec![ServiceDescriptorProto {
            name: Some("Echo".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Echo".into()),
                input_type: Some(".bench.mesh.Payload".into()),
                output_type: Some(".bench.mesh.Payload".into()),
                ..Default::default()
            }],
            options: None,
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

/// The direct server: `/bench.mesh.Echo/Echo` answered with its request.
#[derive(Clone)]
struct DirectEcho;

impl tonic::server::NamedService for DirectEcho {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<tonic::body::Body>> for DirectEcho {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        futures::future::BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let echo = tower::service_fn(|request: tonic::Request<Bytes>| async move {
                Ok::<_, tonic::Status>(tonic::Response::new(request.into_inner()))
            });
            Ok(tonic::server::Grpc::new(BytesCodec)
                .unary(echo, request)
                .await)
        })
    }
}

struct PeerArgs {
    config: std::path::PathBuf,
    token: String,
    tls: crate::peers::PeerArgs,
}

/// `busbar-bench mesh-peer --config ADMIN_JSON --token T --cert C --key K
/// --ca CA [--nats URL]`: provides the echo service to the node, serves it
/// directly and answers on NATS; prints `direct HOST:PORT` and `ready`,
/// then serves until its stdin closes.
pub fn peer_main(args: &[String]) -> Result<()> {
    let (mut config, mut token) = (std::path::PathBuf::new(), String::new());
    let tls = crate::peers::parse_with("mesh-peer", args, |flag, value| match flag {
        "--config" => {
            config = value.into();
            true
        }
        "--token" => {
            token = value.to_string();
            true
        }
        _ => false,
    })?;
    let parsed = PeerArgs { config, token, tls };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve_peer(parsed))
}

async fn serve_peer(args: PeerArgs) -> Result<()> {
    // The provider, dialled out to the node.
    let config = busbar_client::ClientConfig::from_file(&args.config)?;
    let client = busbar_client::ConnectOptions::from_config(&config)?
        .token(args.token.clone())
        .connect()
        .await?;
    let offer = busbar_client::Offer::new([SERVICE], descriptors()).concurrency(1024);
    let _provided = client
        .provide(offer, |mut call: busbar_client::ProviderCall| async move {
            if let Some(request) = call.next_request().await {
                call.send(request).await?;
            }
            Ok(())
        })
        .await?;

    // Transport: whatever comes on "req" goes back on "rep".
    client
        .transport_open(TRANSPORT_SESSION, Default::default())
        .await?;
    let echo = client.clone();
    tokio::spawn(async move {
        loop {
            let popped = echo
                .transport_pop(TRANSPORT_SESSION, "req", Duration::from_secs(60), None)
                .await;
            match popped {
                Ok(Some(message)) => {
                    let pushed = echo
                        .transport_push(
                            TRANSPORT_SESSION,
                            "rep",
                            message.payload,
                            Default::default(),
                        )
                        .await;
                    if let Err(error) = pushed {
                        eprintln!("mesh-peer: transport echo stopped: {error}");
                        return;
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    eprintln!("mesh-peer: transport echo stopped: {error}");
                    return;
                }
            }
        }
    });

    // The same handler served directly.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let identity = Identity::from_pem(
        std::fs::read(&args.tls.cert)?,
        std::fs::read(&args.tls.key)?,
    );
    let router = tonic::transport::Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))?
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(1024))
        .add_service(DirectEcho);
    let incoming = crate::peers::nodelay_incoming(listener);
    tokio::spawn(async move {
        if let Err(error) = router.serve_with_incoming(incoming).await {
            eprintln!("mesh-peer: direct server failed: {error}");
        }
    });
    println!("direct {address}");

    // The NATS responder: the request's payload back.
    if let Some(url) = &args.tls.nats {
        let nats = crate::peers::nats_connect(url, &args.tls.ca).await?;
        let mut requests = nats.subscribe(NATS_SUBJECT).await?;
        let responder = nats.clone();
        tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                if let Some(reply) = message.reply
                    && responder.publish(reply, message.payload).await.is_err()
                {
                    break;
                }
            }
        });
        nats.flush().await?;
        println!("nats ready");
    }
    crate::peers::serve_until_stdin_closes().await
}

/// A tonic channel with TLS trusting `ca_pem` for `domain`.
async fn channel(address: &str, ca_pem: &[u8], domain: &str) -> Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(domain.to_string());
    Ok(Endpoint::from_shared(address.to_string())?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// One unary echo call over `channel`, with `token` as a bearer when given.
fn grpc_call(channel: Channel, token: Option<String>) -> Call {
    let payload: Bytes = vec![7u8; PAYLOAD_BYTES].into();
    let request_bytes: Bytes = {
        let mut encoded = vec![0x0a, PAYLOAD_BYTES as u8];
        encoded.extend_from_slice(&payload);
        encoded.into()
    };
    let authorization = token.map(|t| format!("Bearer {t}"));
    Arc::new(move || {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let mut request = tonic::Request::new(request_bytes.clone());
        if let Some(value) = &authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ASCII token"));
        }
        Box::pin(async move {
            grpc.ready().await.map_err(|e| e.to_string())?;
            let path = http::uri::PathAndQuery::from_static(METHOD);
            let response = grpc
                .unary(request, path, BytesCodec)
                .await
                .map_err(|e| e.to_string())?;
            if response.get_ref().len() != PAYLOAD_BYTES + 2 {
                return Err("the echo came back changed".to_string());
            }
            Ok(())
        })
    })
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let config_path = ctx.work_dir.join("busbar").join("admin.json");
    let mut args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        config_path.into(),
        "--token".into(),
        ctx.busbar_token.clone().into(),
        "--cert".into(),
        ctx.tls.cert.clone().into(),
        "--key".into(),
        ctx.tls.key.clone().into(),
        "--ca".into(),
        ctx.tls.ca.clone().into(),
    ];
    if let Some(url) = &ctx.nats_url {
        args.extend(["--nats".into(), url.into()]);
    }
    let (_peer, lines) = crate::procs::start_own("mesh-peer", &args)?;
    let direct_address = lines
        .iter()
        .find_map(|l| l.strip_prefix("direct "))
        .ok_or("mesh-peer printed no direct address")?;

    let node_channel = channel(
        &ctx.busbar_config.address,
        ctx.busbar_config
            .ca_pem
            .as_deref()
            .ok_or("the node's admin.json has no CA")?
            .as_bytes(),
        ctx.busbar_config
            .server_name
            .as_deref()
            .unwrap_or("localhost"),
    )
    .await?;
    let direct_channel = channel(
        &format!("https://{direct_address}"),
        &std::fs::read(&ctx.tls.ca)?,
        "localhost",
    )
    .await?;
    // A stock gRPC client logs in once and sends the session as a bearer.
    let session = ctx
        .admin
        .call(
            "busbar.v1.Auth/Login",
            serde_json::json!({"token": ctx.busbar_token}),
        )
        .await?;
    let session = session["token"]
        .as_str()
        .ok_or("Auth/Login returned no session token")?
        .to_string();
    let mut systems: Vec<(&'static str, Call)> = vec![
        ("busbar", grpc_call(node_channel, Some(session))),
        ("direct", grpc_call(direct_channel, None)),
    ];
    let mut nats_call: Option<Call> = None;
    if lines.iter().any(|l| l == "nats ready")
        && let Some(nats) = ctx.nats_client().await?
    {
        let payload: Bytes = vec![7u8; PAYLOAD_BYTES + 2].into();
        let call: Call = Arc::new(move || {
            let nats = nats.clone();
            let payload = payload.clone();
            Box::pin(async move {
                nats.request(NATS_SUBJECT, payload)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        });
        systems.push(("nats", call.clone()));
        nats_call = Some(call);
    }
    let (rounds, turn) = crate::unary::turns(ctx);
    let mut rows = Vec::new();
    for inflight in [1usize, 64] {
        eprintln!("bench: mesh, {inflight} in flight");
        let mut taken = TakenTurns::run(ctx, &systems, inflight).await;
        let mut take = |name: &str| taken.take(name);
        let mut b = take("busbar").expect("busbar measured");
        let mut d = take("direct").expect("direct measured");
        let mut n = take("nats");
        let notes = [
            format!(
                "mesh: a {PAYLOAD_BYTES}-byte payload echoed by a provider in another process (mesh-peer); busbar: caller → node → provider → node → caller over TLS, a stock tonic channel with a bearer token; direct: the same handler as a tonic server, no node; nats: request/reply to a responder in the same process as the provider; {rounds} turns of {turn:?} each"
            ),
            crate::unary::error_note("busbar mesh", &b),
            crate::unary::error_note("direct", &d),
            n.as_ref()
                .map_or(String::new(), |n| crate::unary::error_note("nats", n)),
            ctx.nats_skipped.clone().unwrap_or_default(),
        ];
        let mut add = |row: Row| {
            rows.push(notes.iter().fold(row, |row, note| row.note(note.clone())));
        };
        let p50 = b.samples.percentile_us(50.0);
        add(Row::new(
            format!("mesh call, {inflight} in flight: p50 latency"),
            "µs",
            Better::Lower,
            p50,
        )
        .peer("nats", n.as_mut().map(|n| n.samples.percentile_us(50.0)))
        .peer("direct", Some(d.samples.percentile_us(50.0)))
        .target(Target::ratio_at_most("nats", 1.0)));
        add(Row::new(
            format!("mesh call, {inflight} in flight: p50 latency over the direct call"),
            "µs",
            Better::Lower,
            p50,
        )
        .peer("direct", Some(d.samples.percentile_us(50.0)))
        .target(Target::ratio_at_most("direct", 2.0)));
        add(Row::new(
            format!("mesh call, {inflight} in flight: p99 latency"),
            "µs",
            Better::Lower,
            b.samples.percentile_us(99.0),
        )
        .peer("nats", n.as_mut().map(|n| n.samples.percentile_us(99.0)))
        .peer("direct", Some(d.samples.percentile_us(99.0))));
        add(Row::new(
            format!("mesh call, {inflight} in flight: throughput"),
            "calls/s",
            Better::Higher,
            b.throughput(),
        )
        .peer("nats", n.as_ref().map(Measured::throughput))
        .peer("direct", Some(d.throughput()))
        .target(Target::ratio_at_least("nats", 1.0)));
    }
    rows.extend(transport_round_trip(ctx, nats_call).await?);
    Ok(rows)
}

/// Transport sessions: push a payload to topic "req" and pop the answer
/// from "rep", which mesh-peer pops and pushes back; against the same NATS
/// request/reply. One at a time: answers are not matched to requests.
async fn transport_round_trip(ctx: &Ctx, nats: Option<Call>) -> Result<Vec<Row>> {
    let client = ctx.busbar_client().await?;
    client
        .transport_open(TRANSPORT_SESSION, Default::default())
        .await?;
    let payload: Bytes = vec![7u8; PAYLOAD_BYTES + 2].into();
    let round_trip: Call = Arc::new(move || {
        let client = client.clone();
        let payload = payload.clone();
        Box::pin(async move {
            client
                .transport_push(TRANSPORT_SESSION, "req", payload, Default::default())
                .await
                .map_err(|e| e.to_string())?;
            match client
                .transport_pop(TRANSPORT_SESSION, "rep", Duration::from_secs(5), None)
                .await
            {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("no answer within 5 s".to_string()),
                Err(error) => Err(error.to_string()),
            }
        })
    });
    let mut systems = vec![("busbar", round_trip)];
    if let Some(nats) = nats {
        systems.push(("nats", nats));
    }
    eprintln!("bench: transport round trip, 1 in flight");
    let mut taken = TakenTurns::run(ctx, &systems, 1).await;
    let mut b = taken.take("busbar").expect("busbar measured");
    let mut n = taken.take("nats");
    let notes = [
        format!(
            "transport: push {}-byte payload to topic req of a session, mesh-peer pops it and pushes it to rep, the caller pops it; every push is durable (on disk before it is acknowledged), NATS request/reply is not",
            PAYLOAD_BYTES + 2
        ),
        crate::unary::error_note("busbar transport", &b),
    ];
    let mut rows = Vec::new();
    for (p, label) in [(50.0, "p50"), (99.0, "p99")] {
        rows.push(
            notes.iter().fold(
                Row::new(
                    format!("transport push→pop round trip, 1 in flight: {label} latency"),
                    "µs",
                    Better::Lower,
                    b.samples.percentile_us(p),
                )
                .peer("nats", n.as_mut().map(|n| n.samples.percentile_us(p))),
                |row, note| row.note(note.clone()),
            ),
        );
    }
    Ok(rows)
}
