//! Bad input gets a clear error, changes nothing, and the server stays up.

use crate::harness::{BUSBAR, Node, assert_error, eventually};
use busbar_client::ErrorCode;
use busbar_client::proto::{self as pb, auth_client::AuthClient};
use bytes::{Buf, BufMut};
use serde_json::json;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives raw bytes, to put malformed protobuf on the wire.
#[derive(Clone, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}
impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_call(
    channel: &tonic::transport::Channel,
    token: &str,
    method: &'static str,
    body: Vec<u8>,
) -> busbar_client::Error {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let path = http::uri::PathAndQuery::from_static(method);
    let status = grpc
        .unary(request, path, RawCodec)
        .await
        .expect_err("malformed input must fail");
    busbar_client::Error::from(status)
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_the_server_stays_up() {
    let (node, admin) =
        Node::start_with_admin(&["--insecure", "--max-message-bytes", "65536"]).await;
    let before = admin.ls("/", true).await.unwrap();

    let channel = tonic::transport::Endpoint::from_shared(node.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let login = pb::LoginRequest {
        credential: Some(pb::login_request::Credential::Password(
            pb::PasswordCredential {
                user: "admin".into(),
                password: node.admin_json()["credential"]["password"]
                    .as_str()
                    .unwrap()
                    .into(),
            },
        )),
    };
    let token = AuthClient::new(channel.clone())
        .login(login)
        .await
        .unwrap()
        .into_inner()
        .token;

    // Invalid UTF-8 in a string field (a path).
    let error = raw_call(
        &channel,
        &token,
        "/busbar.v1.Resources/Create",
        vec![0x0a, 0x03, b'/', 0xff, 0xfe, 0x10, 0x01],
    )
    .await;
    assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
    assert!(error.message().contains("UTF-8"), "{error}");
    // Bytes that are no protobuf at all.
    let error = raw_call(&channel, &token, "/busbar.v1.Resources/Get", vec![0xff; 7]).await;
    assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
    // The same for the time-series read, which decodes its own requests.
    let error = raw_call(
        &channel,
        &token,
        "/busbar.v1.TimeSeries/Read",
        vec![0xff; 7],
    )
    .await;
    assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
    let error = raw_call(
        &channel,
        &token,
        "/busbar.v1.TimeSeries/Read",
        vec![0x0a, 0x02, 0xff, 0xfe],
    )
    .await;
    assert!(error.message().contains("UTF-8"), "{error}");
    // A method the server does not have.
    let error = raw_call(&channel, &token, "/busbar.v1.Node/Nope", vec![]).await;
    assert_eq!(error.code(), ErrorCode::Unimplemented, "{error}");
    assert!(
        error
            .message()
            .contains("unknown method /busbar.v1.Node/Nope"),
        "{error}"
    );

    // Oversized message.
    let big = serde_json::Value::String("x".repeat(100_000));
    assert_error(
        admin.emit("/home/admin", "big", vec![big]).await,
        ErrorCode::ResourceExhausted,
        "too large",
    );

    // Bad paths, names and enum values.
    for bad in ["home/admin", "/home//admin", "/home/../etc", "/home/\u{1}"] {
        assert_error(admin.get(bad).await, ErrorCode::InvalidArgument, "bad path");
    }
    assert_error(
        admin.create_user("bad name", "long-enough", false).await,
        ErrorCode::InvalidArgument,
        "bad name",
    );
    assert_error(
        admin.create_user("short", "pw", false).await,
        ErrorCode::InvalidArgument,
        "too short",
    );
    assert_error(
        admin.register_key("k", "not-base64!", false).await,
        ErrorCode::InvalidArgument,
        "bad public key",
    );
    let bad_kind = admin
        .call(
            "busbar.v1.Resources/Create",
            serde_json::json!({"path": "/home/admin/x", "kind": 99}),
        )
        .await;
    assert_error(bad_kind, ErrorCode::InvalidArgument, "bad kind");

    // The dynamic API: unknown service or method, JSON that does not fit.
    let (unimplemented, invalid) = (ErrorCode::Unimplemented, ErrorCode::InvalidArgument);
    for (method, body, code, words) in [
        (
            "busbar.v1.Nope/X",
            json!({}),
            unimplemented,
            "knows no service",
        ),
        (
            "busbar.v1.Node/Nope",
            json!({}),
            unimplemented,
            "has no method Nope",
        ),
        (
            "busbar.v1.Resources/Get",
            json!({"pth": "/"}),
            invalid,
            "does not fit",
        ),
        (
            "busbar.v1.Resources/Get",
            json!({"path": 5}),
            invalid,
            "does not fit",
        ),
        ("Status", json!({}), invalid, "bad method name"),
    ] {
        assert_error(admin.call(method, body).await, code, words);
    }

    // Nothing changed, and the node still answers.
    assert_eq!(admin.ls("/", true).await.unwrap(), before);
    assert!(!admin.status().await.unwrap().version.is_empty());

    // Every call was counted under its method and final code; the unknown
    // method under the shared label, so callers cannot grow the metrics.
    let metrics = node.metrics_text();
    let calls = |method: &str, code: &str| -> u64 {
        let prefix = format!("busbar_calls_total{{method=\"{method}\",code=\"{code}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |value| value.trim().parse().unwrap())
    };
    assert_eq!(calls("<unknown>", "UNIMPLEMENTED"), 1, "{metrics}");
    assert!(!metrics.contains("Node/Nope"), "{metrics}");
    // Undecodable bytes and four bad paths.
    assert_eq!(
        calls("/busbar.v1.Resources/Get", "INVALID_ARGUMENT"),
        5,
        "{metrics}"
    );
    assert_eq!(
        calls("/busbar.v1.Rooms/Emit", "RESOURCE_EXHAUSTED"),
        1,
        "{metrics}"
    );
    assert!(calls("/busbar.v1.Node/Status", "OK") >= 1, "{metrics}");
}

#[test]
fn bad_configuration_stops_the_server_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = |args: &[&str]| {
        std::process::Command::new(BUSBAR)
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .args(["--metrics-listen", "off", "--ws-listen", "off"])
            .args(args)
            .output()
            .unwrap()
    };
    for (args, words) in [
        (&["--listen", "nowhere"][..], "bad listen"),
        (
            &["--room-queue", "0", "--listen", "127.0.0.1:0"][..],
            "bad room_queue",
        ),
        (
            &["--grace=-1", "--listen", "127.0.0.1:0"][..],
            "bad grace_seconds",
        ),
        (
            &["--hostname", "a b", "--listen", "127.0.0.1:0"][..],
            "bad hostname",
        ),
    ] {
        let output = serve(args);
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(words), "{args:?}: {stderr}");
    }
    let file = dir.path().join("busbar.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let output = serve(&["--config-file", file.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown field"));
    assert!(
        !data.join("meta.db").exists(),
        "a bad configuration changes nothing on disk"
    );
}

#[test]
fn cli_errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(BUSBAR)
        .current_dir(dir.path())
        .arg("status")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("busbar-data/admin.json"), "{stderr}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_counted() {
    let node = Node::start(&["--max-connections", "2"]);
    let first = node.admin().await;
    let second = node.admin().await;
    let third = busbar_client::Client::from_config_file(&node.admin_config).await;
    assert_eq!(third.unwrap_err().code(), ErrorCode::Unavailable);
    let metrics = node.metrics_text();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("busbar_refused_connections_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the refusal counter is exported");
    assert!(refused >= 1, "{metrics}");
    // The first two keep working; once one closes, a new client gets in.
    second.status().await.unwrap();
    drop(first);
    let admitted = eventually("a slot freeing up when a client disconnects", || {
        busbar_client::Client::from_config_file(&node.admin_config)
    })
    .await;
    admitted.status().await.unwrap();
}
