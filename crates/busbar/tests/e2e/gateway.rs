//! The WebSocket gateway (docs/websocket.md), spoken to as a browser or a
//! third-party client would: JSON text frames over TLS with the node's CA.

use crate::harness::Node;
use crate::mesh::echo::{Counters, ECHO, provide};
use busbar_client::ResourceKind;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// What the node sent next.
#[derive(Debug)]
enum Got {
    Json(Value),
    Binary(Vec<u8>),
    /// Closed, with the close code if a close frame came.
    Closed(Option<u16>),
}

struct Socket {
    ws: Stream,
}

/// Opens a socket to `node`'s gateway, sending `origin` if given.
async fn open(node: &Node, origin: Option<&str>) -> Result<Socket, tungstenite::Error> {
    let host_port = node.websocket_host_port().to_string();
    let ca = node.admin_json()["ca_pem"].as_str().unwrap().to_string();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&host_port).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut request = node.websocket.as_str().into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "busbar.v1".parse().unwrap());
    let (ws, response) = tokio_tungstenite::client_async(request, tls).await?;
    assert_eq!(response.headers()["sec-websocket-protocol"], "busbar.v1");
    let mut socket = Socket { ws };
    let hello = socket.json().await;
    assert_eq!(hello["op"], "hello", "{hello}");
    assert_eq!(hello["protocol"], "busbar.v1");
    Ok(socket)
}

/// The HTTP status a refused handshake got.
fn refused_status(result: Result<Socket, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("the handshake was accepted"),
    }
}

impl Socket {
    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Got {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("a frame within 30 s");
            return match frame {
                Some(Ok(Message::Text(text))) => Got::Json(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Binary(bytes))) => Got::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => Got::Closed(frame.map(|f| f.code.into())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Got::Closed(None),
            };
        }
    }

    async fn json(&mut self) -> Value {
        match self.next().await {
            Got::Json(value) => value,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// Waits for the close and returns its code.
    async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Got::Closed(code) = self.next().await {
                return code;
            }
        }
    }

    async fn login(&mut self, credential: Value) -> Value {
        self.send(json!({"op": "login", "id": "l", "credential": credential}))
            .await;
        self.json().await
    }

    /// Runs call `id` to its end: the messages, then the ending frame.
    async fn call(&mut self, id: &str, method: &str, message: Value) -> (Vec<Value>, Value) {
        self.send(json!({"op": "call", "id": id, "method": method, "message": message}))
            .await;
        self.rest(id).await
    }

    /// The messages of call `id` until its ending frame; a `started`
    /// frame, if any, must come before them all.
    async fn rest(&mut self, id: &str) -> (Vec<Value>, Value) {
        let mut messages = Vec::new();
        loop {
            let frame = self.json().await;
            assert_eq!(frame["id"], id, "{frame}");
            match frame["op"].as_str().unwrap() {
                "message" => messages.push(frame["message"].clone()),
                "started" => assert!(messages.is_empty(), "started after a message"),
                _ => return (messages, frame),
            }
        }
    }

    /// The next frame that is not a call's `started`.
    async fn past_started(&mut self) -> Value {
        loop {
            let frame = self.json().await;
            if frame["op"] != "started" {
                return frame;
            }
        }
    }
}

fn admin_password(node: &Node) -> Value {
    node.admin_json()["credential"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_carries_calls_of_every_kind_with_grpc_errors() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    assert!(
        node.websocket.starts_with("wss://127.0.0.1:"),
        "{}",
        node.websocket
    );
    let provider = node.admin().await;
    let _provided = provide(&provider, ECHO, "one", Arc::new(Counters::default())).await;
    let database = "/home/admin/shop";
    node.admin_with_database(
        database,
        &[
            "CREATE TABLE t (x INTEGER)",
            "INSERT INTO t VALUES (1), (2), (3)",
        ],
    )
    .await;

    // Before a login every call is refused, UNAUTHENTICATED.
    let mut ws = open(&node, None).await.unwrap();
    let (_, ending) = ws.call("c0", "busbar.v1.Node/Status", json!({})).await;
    assert_eq!(ending["op"], "error");
    assert_eq!(ending["code"], "UNAUTHENTICATED", "{ending}");
    // A wrong password is refused with the gRPC code; the socket stays.
    let refused = ws
        .login(json!({"kind": "password", "user": "admin", "password": "nope"}))
        .await;
    assert_eq!(refused["code"], "UNAUTHENTICATED", "{refused}");
    let logged = ws.login(admin_password(&node)).await;
    assert_eq!(logged["op"], "logged_in", "{logged}");
    assert_eq!(logged["identity"]["name"], "admin");

    // Unary: a node method by full name, JSON in and out.
    let (messages, ending) = ws.call("c1", "busbar.v1.Node/Status", json!({})).await;
    assert_eq!(ending["op"], "end", "{ending}");
    assert_eq!(messages.len(), 1);
    assert!(messages[0].get("node_id").is_some(), "{}", messages[0]);
    let (messages, _) = ws.call("c2", "busbar.v1.Auth/WhoAmI", json!({})).await;
    assert_eq!(messages[0]["name"], "admin");

    // A mesh provider's methods: server streaming, client streaming, bidi.
    let (messages, ending) = ws
        .call("s", &format!("{ECHO}/Count"), json!({"text": "n"}))
        .await;
    assert_eq!(ending["op"], "end");
    let texts: Vec<_> = messages.iter().map(|m| m["text"].clone()).collect();
    assert_eq!(texts, ["n 0", "n 1", "n 2"]);
    ws.send(json!({"op": "call", "id": "up", "method": format!("{ECHO}/Collect")}))
        .await;
    for word in ["a", "b", "c"] {
        ws.send(json!({"op": "send", "id": "up", "message": {"text": word}}))
            .await;
    }
    ws.send(json!({"op": "end", "id": "up"})).await;
    let (messages, ending) = ws.rest("up").await;
    assert_eq!(ending["op"], "end", "{ending}");
    assert_eq!(messages[0]["text"], "a,b,c");
    ws.send(json!({"op": "call", "id": "chat", "method": format!("{ECHO}/Chat")}))
        .await;
    for word in ["x", "y"] {
        ws.send(json!({"op": "send", "id": "chat", "message": {"text": word}}))
            .await;
        let answer = ws.past_started().await;
        assert_eq!(answer["op"], "message");
        assert_eq!(answer["message"]["text"], format!("re: {word}"));
    }
    ws.send(json!({"op": "end", "id": "chat"})).await;
    assert_eq!(ws.rest("chat").await.1["op"], "end");

    // Cancel: a call that would take a minute ends at once, CANCELLED, and
    // a cancel of an id that ended is ignored.
    let started = Instant::now();
    ws.send(json!({"op": "call", "id": "slow", "method": format!("{ECHO}/Slow"), "message": {}}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send(json!({"op": "cancel", "id": "slow"})).await;
    let (_, ending) = ws.rest("slow").await;
    assert_eq!(ending["code"], "CANCELLED", "{ending}");
    assert!(started.elapsed() < Duration::from_secs(10));
    ws.send(json!({"op": "cancel", "id": "slow"})).await;

    // A reused id is refused without ending the call in flight.
    ws.send(json!({"op": "call", "id": "twice", "method": format!("{ECHO}/Slow"), "message": {}}))
        .await;
    ws.send(json!({"op": "call", "id": "twice", "method": "busbar.v1.Node/Status"}))
        .await;
    let refusal = ws.json().await;
    assert_eq!(refusal["op"], "error");
    assert!(refusal.get("id").is_none(), "{refusal}");
    assert!(
        refusal["message"].as_str().unwrap().contains("in flight"),
        "{refusal}"
    );
    ws.send(json!({"op": "cancel", "id": "twice"})).await;
    assert_eq!(ws.rest("twice").await.1["code"], "CANCELLED");

    // Errors carry the node's codes and messages.
    let (_, ending) = ws
        .call("nf", "busbar.v1.Resources/Get", json!({"path": "/nowhere"}))
        .await;
    assert_eq!(ending["code"], "NOT_FOUND", "{ending}");
    let (_, ending) = ws.call("um", "busbar.v1.Node/Nope", json!({})).await;
    assert_eq!(ending["code"], "UNIMPLEMENTED", "{ending}");
    let (_, ending) = ws
        .call("bad", "busbar.v1.Resources/Get", json!({"path": 5}))
        .await;
    assert_eq!(ending["code"], "INVALID_ARGUMENT", "{ending}");

    // Malformed frames get an error frame; the socket goes on.
    for bad in ["not json", "{\"op\": \"fly\"}", "{\"id\": \"x\"}"] {
        ws.ws.send(Message::text(bad)).await.unwrap();
        let error = ws.json().await;
        assert_eq!(error["op"], "error", "{bad}: {error}");
        assert_eq!(error["code"], "INVALID_ARGUMENT");
    }
    ws.send(json!({"op": "ping", "id": "p"})).await;
    assert_eq!(ws.json().await["op"], "pong");

    // SQL: Arrow IPC comes in binary frames (kind 1, the id, the bytes),
    // which concatenated read as one Arrow stream.
    ws.send(json!({
        "op": "call", "id": "q", "method": "busbar.v1.Sql/Execute",
        "message": {"database": database, "sql": "SELECT x FROM t ORDER BY x"},
    }))
    .await;
    let mut ipc = Vec::new();
    assert_eq!(ws.json().await["op"], "started");
    loop {
        match ws.next().await {
            Got::Binary(frame) => {
                assert_eq!(frame[0], 1);
                let length = frame[1] as usize;
                assert_eq!(&frame[2..2 + length], b"q");
                ipc.extend_from_slice(&frame[2 + length..]);
            }
            Got::Json(frame) if frame["op"] == "message" => {
                assert!(frame["message"].get("summary").is_some(), "{frame}")
            }
            Got::Json(frame) => {
                assert_eq!(frame["op"], "end", "{frame}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let ipc_bytes = ipc.clone();
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
    let mut values = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        values.extend(column.values().iter().copied());
    }
    assert_eq!(values, [1, 2, 3]);
    // With `binary: false` the same bytes come base64 in message frames.
    ws.send(json!({
        "op": "call", "id": "q2", "method": "busbar.v1.Sql/Execute", "binary": false,
        "message": {"database": database, "sql": "SELECT x FROM t ORDER BY x"},
    }))
    .await;
    let (messages, ending) = ws.rest("q2").await;
    assert_eq!(ending["op"], "end", "{ending}");
    use base64::Engine;
    let as_text: Vec<u8> = (messages.iter())
        .filter_map(|m| m["arrow_ipc"].as_str())
        .flat_map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        })
        .collect();
    assert_eq!(as_text, ipc_bytes, "the same Arrow stream either way");
    assert!(messages.last().unwrap().get("summary").is_some());

    // An API token logs in too; a user without rights is refused with
    // PERMISSION_DENIED, as over gRPC.
    let (token, _) = admin.create_token("browser", None).await.unwrap();
    let mut by_token = open(&node, None).await.unwrap();
    let logged = by_token
        .login(json!({"kind": "token", "token": token}))
        .await;
    assert_eq!(logged["identity"]["name"], "admin", "{logged}");
    let expired = open(&node, None)
        .await
        .unwrap()
        .login(json!({"kind": "token", "token": "bb_not_a_token"}))
        .await;
    assert_eq!(expired["code"], "UNAUTHENTICATED", "{expired}");
    admin
        .create_user("eve", "eve-password-1", false)
        .await
        .unwrap();
    let mut eve = open(&node, None).await.unwrap();
    eve.login(json!({"kind": "password", "user": "eve", "password": "eve-password-1"}))
        .await;
    let (_, ending) = eve
        .call(
            "d",
            "busbar.v1.Sql/Execute",
            json!({"database": database, "sql": "SELECT 1"}),
        )
        .await;
    assert_eq!(ending["code"], "PERMISSION_DENIED", "{ending}");

    // The node is unharmed by all of it.
    admin.status().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_are_checked_at_the_handshake() {
    let node = Node::start(&[]);
    let port = node.websocket_host_port().rsplit(':').next().unwrap();
    // The node's own origins are allowed, a program without one too.
    open(&node, Some(&format!("https://localhost:{port}")))
        .await
        .unwrap();
    open(&node, Some(&format!("https://127.0.0.1:{port}")))
        .await
        .unwrap();
    open(&node, None).await.unwrap();
    // Any other page is refused before a frame is read.
    for origin in [
        "https://evil.example",
        &format!("http://localhost:{port}"),
        "null",
    ] {
        assert_eq!(
            refused_status(open(&node, Some(origin)).await),
            403,
            "{origin}"
        );
    }

    // --ws-origins replaces the default.
    let node = Node::start(&["--ws-origins", "https://console.example:8443"]);
    open(&node, Some("https://console.example:8443"))
        .await
        .unwrap();
    let port = node.websocket_host_port().rsplit(':').next().unwrap();
    let own = format!("https://localhost:{port}");
    assert_eq!(refused_status(open(&node, Some(&own)).await), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_or_refuse_and_leave_the_node_and_other_sockets_unharmed() {
    let (node, admin) = Node::start_with_admin(&[
        "--ws-max-calls",
        "2",
        "--ws-login-timeout",
        "1",
        "--ws-queue-bytes",
        "65536",
        "--ws-stall",
        "1",
        "--ws-max-sockets",
        "4",
        // Not 1 MiB: the node's SQL pieces are 1 MiB plus their framing.
        "--max-message-bytes",
        "2097152",
    ])
    .await;
    let _provided = provide(
        &node.admin().await,
        ECHO,
        "one",
        Arc::new(Counters::default()),
    )
    .await;

    // A socket that never logs in is closed at the login timeout.
    let started = Instant::now();
    let mut idle = open(&node, None).await.unwrap();
    assert_eq!(idle.closed().await, Some(4001));
    assert!(started.elapsed() < Duration::from_secs(10));

    // Calls in flight past ws_max_calls are refused, RESOURCE_EXHAUSTED.
    let mut ws = open(&node, None).await.unwrap();
    ws.login(admin_password(&node)).await;
    for id in ["a", "b"] {
        ws.send(json!({"op": "call", "id": id, "method": format!("{ECHO}/Slow"), "message": {}}))
            .await;
    }
    let (_, ending) = ws.call("c", "busbar.v1.Node/Status", json!({})).await;
    assert_eq!(ending["code"], "RESOURCE_EXHAUSTED", "{ending}");
    for id in ["a", "b"] {
        ws.send(json!({"op": "cancel", "id": id})).await;
        assert_eq!(ws.rest(id).await.1["code"], "CANCELLED");
    }
    let (_, ending) = ws.call("d", "busbar.v1.Node/Status", json!({})).await;
    assert_eq!(ending["op"], "end");

    // A frame over max_message_bytes closes the socket with 1009.
    let huge = format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(3 << 20));
    let _ = ws.ws.send(Message::text(huge)).await;
    assert_eq!(ws.closed().await, Some(1009));

    // A reader that stops reading is cut (its queue stays full for the
    // stall time) while another socket goes on.
    admin
        .create(
            "/home/admin/big",
            busbar_client::ResourceKind::Database,
            false,
        )
        .await
        .unwrap();
    let mut slow = open(&node, None).await.unwrap();
    slow.login(admin_password(&node)).await;
    let mut other = open(&node, None).await.unwrap();
    other.login(admin_password(&node)).await;
    slow.send(json!({
        "op": "call", "id": "big", "method": "busbar.v1.Sql/Execute",
        "message": {
            "database": "/home/admin/big",
            "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000) \
                    SELECT x, randomblob(1000) AS b FROM c",
        },
    }))
    .await;
    // The other socket is served meanwhile.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let (_, ending) = other.call("o", "busbar.v1.Node/Status", json!({})).await;
        assert_eq!(ending["op"], "end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cut = "busbar_slow_consumer_drops_total{kind=\"websocket\"} 1";
    let waited = Instant::now();
    while !node.metrics_text().contains(cut) {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "the slow socket was not cut: {}\n{}",
            node.metrics_text(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What it had in its buffers is there to read, then the socket ends,
    // well short of the 60 MB asked for.
    let mut received = 0usize;
    loop {
        match slow.next().await {
            Got::Binary(bytes) => received += bytes.len(),
            Got::Json(_) => {}
            Got::Closed(_) => break,
        }
    }
    assert!(received < 40 << 20, "{received}");

    // Sockets past ws_max_sockets are refused with 503 at the handshake.
    let mut held = Vec::new();
    let status = loop {
        match open(&node, None).await {
            Ok(socket) => held.push(socket),
            Err(error) => break refused_status(Err(error)),
        }
        assert!(held.len() <= 4, "more sockets than ws_max_sockets");
    };
    assert_eq!(status, 503);
    drop(held);

    // The node is unharmed.
    admin.status().await.unwrap();
    let mut after = crate::harness::eventually("a socket opens again", || async {
        open(&node, None).await.map_err(|e| e.to_string())
    })
    .await;
    after.login(admin_password(&node)).await;
    let (_, ending) = after.call("z", "busbar.v1.Node/Status", json!({})).await;
    assert_eq!(ending["op"], "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_in_place_once_its_call_has_started() {
    let wire = "/home/admin/pipe";
    let (node, admin) = Node::start_with(&[], wire, ResourceKind::Wire).await;
    let mut ws = open(&node, None).await.unwrap();
    ws.login(admin_password(&node)).await;
    ws.send(json!({"op": "call", "id": "sub", "method": "busbar.v1.Wires/Subscribe", "message": {"path": wire}}))
        .await;
    // Nothing is published before `started`: the chunk sent right after it
    // is the subscription's first message.
    let started = ws.json().await;
    assert_eq!(
        (&started["op"], &started["id"]),
        (&json!("started"), &json!("sub"))
    );
    let chunk = bytes::Bytes::from_static(b"first");
    admin
        .publish(wire, futures::stream::iter([chunk]))
        .await
        .unwrap();
    let got = ws.json().await;
    assert_eq!(got["op"], "message", "{got}");
    assert_eq!(got["message"]["data"], "Zmlyc3Q=", "base64 of the chunk");
    ws.send(json!({"op": "cancel", "id": "sub"})).await;
    assert_eq!(ws.rest("sub").await.1["code"], "CANCELLED");
    // A unary call has no `started`: its answer, then its end.
    ws.send(json!({"op": "call", "id": "u", "method": "busbar.v1.Node/Status"}))
        .await;
    assert_eq!(ws.json().await["op"], "message");
    assert_eq!(ws.json().await["op"], "end");
}
