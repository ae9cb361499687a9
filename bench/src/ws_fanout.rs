//! Scenario: room fan-out to WebSocket subscribers (issue 25's second
//! gateway row), against NATS's own WebSocket listener. One publisher, 10 and
//! 100 subscribers, 64 B payloads: delivered messages per second and p99
//! end-to-end latency, as in `fanout`, but every subscriber is a WebSocket,
//! as a browser's would be.
//!
//! * Busbar: a node with its gateway on. Each subscriber is its own
//!   WebSocket (TLS, the node's CA), logged in with an API token, that calls
//!   `busbar.v1.Rooms/Join` and reads the room's events as JSON `message`
//!   frames (docs/websocket.md). The publisher is the Rust client over gRPC,
//!   one `Rooms/EmitStream`, exactly as in `fanout`.
//! * NATS: a nats-server of its own with a WebSocket listener (TLS, the
//!   bench's certificate). Each subscriber is its own WebSocket speaking the
//!   NATS text protocol (the reader below); the publisher is async-nats over
//!   TCP with TLS, exactly as in `fanout`.
//!
//! Pacing, warm-up and measurement are `fanout`'s ([`fanout::run_one`]): the
//! publisher never runs more than [`fanout::WINDOW`] messages ahead of the
//! slowest subscriber, so nothing is dropped on either side.

use crate::ctx::Ctx;
use crate::fanout::{self, RunResult, Timestamps};
use crate::gateway::{self, Socket};
use crate::procs::{self, Result};
use crate::report::{Better, Row, Target};
use busbar_client::ResourceKind;
use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Subscriber counts, one pair of rows each.
const COUNTS: [usize; 2] = [10, 100];
/// Payload size: a small event, the browser's usual.
const SIZE: usize = 64;
/// Where the rooms are made, on the gateway's node.
const FOLDER: &str = "/home/admin/bench-wsfanout";
/// The peer's name in the rows.
const PEER: &str = "nats-ws";
/// Most unparsed NATS protocol bytes a subscriber holds: a WebSocket message
/// (at most `gateway`'s message limit) plus the tail of a split one.
const MAX_NATS_BUFFER: usize = 8 << 20;
/// How long a subscriber's setup (connect, login or CONNECT, join or SUB) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages per turn for `subscribers`: Busbar's side takes 1–3 s a turn
/// (quick) or about 6 s (full) at the 100 k deliveries/s it makes on 2 cores,
/// well inside the cap; fewer messages as each is delivered more times.
fn messages(ctx: &Ctx, subscribers: usize) -> u64 {
    match (subscribers, ctx.quick) {
        (10, true) => 20_000,
        (_, true) => 3_000,
        (10, false) => 60_000,
        (_, false) => 8_000,
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let busbar = BusbarSide::start(ctx).await?;
    let (nats, nats_skipped) = match NatsSide::start(ctx).await {
        Ok(nats) => (Some(nats), None),
        Err(error) => (None, Some(format!("{PEER} rows skipped: {error}"))),
    };
    if let Some(reason) = &nats_skipped {
        eprintln!("bench: {reason}");
    }
    busbar.gateway.admin.mkdir(FOLDER, true).await?;
    let mut rows = Vec::new();
    for subscribers in COUNTS {
        let measured = take_turns(ctx, &busbar, nats.as_ref(), subscribers).await?;
        let mut notes = vec![measured.setup_note()];
        notes.extend(nats_skipped.iter().cloned());
        rows.extend(measured.rows(subscribers, notes));
    }
    let _ = busbar.gateway.admin.rm(FOLDER, true).await;
    Ok(rows)
}

/// Both systems' figures for one subscriber count.
struct Measured {
    total: u64,
    turns: usize,
    busbar: RunResult,
    busbar_cpu: CpuUse,
    nats: Option<(RunResult, CpuUse)>,
}

/// The systems take turns (3 in full runs, as in `fanout`), each with fresh
/// subscribers and a fresh room or subject.
async fn take_turns(
    ctx: &Ctx,
    busbar: &BusbarSide,
    nats: Option<&NatsSide>,
    subscribers: usize,
) -> Result<Measured> {
    let total = messages(ctx, subscribers);
    let turns = ctx.pick(1, 3);
    let cap = ctx.pick(Duration::from_secs(6), Duration::from_secs(20));
    eprintln!("bench: WebSocket fan-out {subscribers} sub, {total} messages, {turns} turn(s)");
    let (mut busbar_turns, mut nats_turns) = (Vec::new(), Vec::new());
    let (mut busbar_cpu, mut nats_cpu) = (CpuUse::default(), CpuUse::default());
    for turn in 0..turns {
        let room = format!("{FOLDER}/r{subscribers}-{turn}");
        let (result, cpu) = busbar.turn(ctx, subscribers, &room, total, cap).await?;
        busbar_turns.push(result);
        busbar_cpu.add(cpu);
        if let Some(nats) = nats {
            let subject = format!("bench.wsfanout.{subscribers}.{turn}");
            let (result, cpu) = nats.turn(ctx, subscribers, subject, total, cap).await?;
            nats_turns.push(result);
            nats_cpu.add(cpu);
        }
    }
    Ok(Measured {
        total,
        turns,
        busbar: RunResult::median(busbar_turns),
        busbar_cpu,
        nats: (!nats_turns.is_empty()).then(|| (RunResult::median(nats_turns), nats_cpu)),
    })
}

impl Measured {
    fn setup_note(&self) -> String {
        format!(
            "ws fan-out: every subscriber its own TLS WebSocket: Busbar's gateway (Rooms/Join, JSON events) vs nats-server's websocket listener (NATS text protocol); publishers over gRPC / NATS TCP as in fan-out; window {} messages, {} concurrent emits/publishes, {} messages; median of {} turn(s), p99 over all",
            fanout::WINDOW,
            fanout::EMITTERS,
            self.total,
            self.turns,
        )
    }

    /// The bench process's share: its subscribers parse every delivery, so
    /// a client-bound run would show here.
    fn bench_cpu_note(&self) -> String {
        let nats = self.nats.as_ref().map_or(String::new(), |(_, cpu)| {
            format!(", {PEER} {:.2} µs", cpu.bench_micros_per_delivery())
        });
        format!(
            "ws fan-out: the bench process (subscribers, publisher) spent busbar-ws {:.2} µs{nats} of CPU per delivery",
            self.busbar_cpu.bench_micros_per_delivery()
        )
    }

    /// Delivered rate, p99 latency and the server's CPU time per delivery.
    fn rows(mut self, subscribers: usize, mut notes: Vec<String>) -> Vec<Row> {
        notes.push(self.bench_cpu_note());
        notes.extend(self.busbar.notes.iter().cloned());
        if let Some((nats, _)) = &self.nats {
            notes.extend(nats.notes.iter().cloned());
        }
        let label = format!("ws fan-out {subscribers} sub, {SIZE} B");
        let with_notes = |row: Row| notes.iter().fold(row, |row, note| row.note(note.clone()));
        let nats_rate = self.nats.as_ref().map(|(nats, _)| nats.rate);
        let nats_p99 = self
            .nats
            .as_mut()
            .map(|(nats, _)| nats.samples.percentile_us(99.0));
        let nats_cpu = self
            .nats
            .as_ref()
            .map(|(_, cpu)| cpu.server_micros_per_delivery());
        // Targets (see bench/README.md): every event crosses one more hop
        // on Busbar's side and is encoded as JSON once per socket, so half
        // of NATS's rate and twice its p99 are the honest bar, not parity.
        vec![
            with_notes(
                Row::new(
                    format!("{label}: delivered"),
                    "msgs/s",
                    Better::Higher,
                    self.busbar.rate,
                )
                .peer(PEER, nats_rate)
                .target(Target::ratio_at_least(PEER, 0.5)),
            ),
            with_notes(
                Row::new(
                    format!("{label}: p99 latency"),
                    "µs",
                    Better::Lower,
                    self.busbar.samples.percentile_us(99.0),
                )
                .peer(PEER, nats_p99)
                .target(Target::ratio_at_most(PEER, 2.0)),
            ),
            // No target: this row says where the rate goes.
            with_notes(
                Row::new(
                    format!("{label}: server CPU per delivery"),
                    "µs",
                    Better::Lower,
                    self.busbar_cpu.server_micros_per_delivery(),
                )
                .peer(PEER, nats_cpu),
            ),
        ]
    }
}

/// CPU time that turns cost the server process and the bench process (its
/// subscribers and publisher), against the deliveries they were to make.
#[derive(Debug, Default, Clone, Copy)]
struct CpuUse {
    server_seconds: f64,
    bench_seconds: f64,
    deliveries: u64,
}

impl CpuUse {
    fn add(&mut self, other: CpuUse) {
        self.server_seconds += other.server_seconds;
        self.bench_seconds += other.bench_seconds;
        self.deliveries += other.deliveries;
    }

    fn server_micros_per_delivery(&self) -> f64 {
        self.server_seconds * 1e6 / self.deliveries.max(1) as f64
    }

    fn bench_micros_per_delivery(&self) -> f64 {
        self.bench_seconds * 1e6 / self.deliveries.max(1) as f64
    }
}

/// Runs one measured turn, counting the CPU time `server_pid` and this
/// process spend on it.
async fn with_cpu(
    server_pid: u32,
    deliveries: u64,
    turn: impl std::future::Future<Output = RunResult>,
) -> (RunResult, CpuUse) {
    let server = server_pid.to_string();
    let (server_before, bench_before) = (procs::cpu_seconds(&server), procs::cpu_seconds("self"));
    let result = turn.await;
    let cpu = CpuUse {
        server_seconds: procs::cpu_seconds(&server) - server_before,
        bench_seconds: procs::cpu_seconds("self") - bench_before,
        deliveries,
    };
    (result, cpu)
}

/// Busbar's side: a node with its gateway, its admin and a publisher (the
/// token's gRPC client).
struct BusbarSide {
    gateway: gateway::GatewayNode,
}

impl BusbarSide {
    async fn start(ctx: &Ctx) -> Result<BusbarSide> {
        let gateway = gateway::GatewayNode::start(ctx, "wsfanout").await?;
        Ok(BusbarSide { gateway })
    }

    /// One turn: a fresh room joined by `subscribers` fresh sockets.
    async fn turn(
        &self,
        ctx: &Ctx,
        subscribers: usize,
        room: &str,
        total: u64,
        cap: Duration,
    ) -> Result<(RunResult, CpuUse)> {
        self.gateway
            .admin
            .create(room, ResourceKind::Room, false)
            .await?;
        let streams =
            each_within_setup_time(subscribers, "gateway", || self.subscriber(room)).await?;
        let emit = fanout::busbar_emit(&self.gateway.client, room, SIZE);
        let deliveries = total * subscribers as u64;
        let run = fanout::run_one(ctx, "busbar-ws", streams, emit, total, cap);
        let measured = with_cpu(self.gateway.node.guard.pid(), deliveries, run).await;
        self.gateway.admin.rm(room, false).await?;
        Ok(measured)
    }

    /// A logged-in socket that has joined `room`, as its events' send times.
    async fn subscriber(&self, room: &str) -> Result<Timestamps> {
        let gateway = &self.gateway;
        let mut socket = gateway::open(&gateway.url, &gateway.config, &gateway.token).await?;
        let join = json!({"op": "call", "id": "j", "method": "busbar.v1.Rooms/Join", "message": {"path": room}});
        socket.send(Message::text(join.to_string())).await?;
        // The member stream starts with JOINED: from then on the socket
        // hears every event.
        let mut first = gateway::next_json(&mut socket).await?;
        if first["op"] == "started" {
            // The call was accepted; JOINED is its first message.
            first = gateway::next_json(&mut socket).await?;
        }
        if first["op"] != "message" || first["message"]["kind"] != "JOINED" {
            return Err(format!("the join began with {first}").into());
        }
        Ok(Box::pin(futures::stream::unfold(
            socket,
            |mut socket| async move {
                let stamp = next_room_stamp(&mut socket)
                    .await
                    .map_err(|e| e.to_string());
                Some((stamp, socket))
            },
        )))
    }
}

/// The send time in the next room event on a joined socket.
async fn next_room_stamp(socket: &mut Socket) -> Result<u64> {
    let frame = gateway::next_json(socket).await?;
    let event = &frame["message"];
    if frame["op"] != "message" || event["kind"] != "EMIT" {
        return Err(format!("membership ended: {frame}").into());
    }
    room_event_stamp(event).ok_or_else(|| format!("unexpected event: {event}").into())
}

/// The 16 hex digits that start an event's first argument
/// ([`fanout::busbar_payload`]).
fn room_event_stamp(event: &Value) -> Option<u64> {
    let text = event["args"][0].as_str()?;
    u64::from_str_radix(text.get(..16)?, 16).ok()
}

/// NATS's side: a nats-server with a WebSocket listener and a publisher.
struct NatsSide {
    /// Stops when it drops, after the scenario.
    server: procs::Nats,
    websocket: String,
    ca_pem: Vec<u8>,
    publisher: async_nats::Client,
}

impl NatsSide {
    async fn start(ctx: &Ctx) -> Result<NatsSide> {
        let binary = ctx
            .nats_binary
            .as_ref()
            .ok_or("nats-server is not running in this benchmark")?;
        let server =
            procs::Nats::start_with_websocket(binary, &ctx.tls, &ctx.work_dir.join("nats-ws.log"))?;
        let websocket = server
            .websocket
            .clone()
            .ok_or("nats-server has no websocket listener")?;
        let publisher = crate::peers::nats_connect(&server.url, &ctx.tls.ca).await?;
        Ok(NatsSide {
            server,
            websocket,
            ca_pem: std::fs::read(&ctx.tls.ca)?,
            publisher,
        })
    }

    /// One turn: a fresh subject subscribed by `subscribers` fresh sockets.
    async fn turn(
        &self,
        ctx: &Ctx,
        subscribers: usize,
        subject: String,
        total: u64,
        cap: Duration,
    ) -> Result<(RunResult, CpuUse)> {
        let streams =
            each_within_setup_time(subscribers, "NATS WebSocket", || self.subscriber(&subject))
                .await?;
        let emit = fanout::nats_emit(&self.publisher, subject, SIZE);
        let deliveries = total * subscribers as u64;
        let run = fanout::run_one(ctx, PEER, streams, emit, total, cap);
        Ok(with_cpu(self.server.guard.pid(), deliveries, run).await)
    }
}

impl NatsSide {
    /// A socket to the WebSocket listener subscribed to `subject`, as its
    /// messages' send times.
    async fn subscriber(&self, subject: &str) -> Result<Timestamps> {
        let roots = gateway::roots_from_pem(&self.ca_pem)?;
        let socket = gateway::connect(&self.websocket, roots).await?;
        let subscriber = NatsWsSubscriber::subscribe(socket, subject).await?;
        Ok(subscriber.into_timestamps())
    }
}

/// One NATS protocol operation from the server, as far as a subscriber
/// needs to tell them apart.
#[derive(Debug, PartialEq)]
enum NatsOp {
    Info,
    /// A delivered message's payload.
    Msg(Bytes),
    Ping,
    Pong,
    /// `-ERR` with the server's text.
    Error(String),
    /// Anything else (`+OK`), ignored.
    Other,
}

/// A NATS subscriber over a WebSocket. NATS sends its text protocol in
/// WebSocket messages that may hold several operations or part of one, so the
/// bytes are buffered (bounded by [`MAX_NATS_BUFFER`]) and cut at operation
/// boundaries.
struct NatsWsSubscriber {
    socket: Socket,
    buffer: BytesMut,
}

impl NatsWsSubscriber {
    /// Waits for INFO, subscribes to `subject` as sid 1, and returns once the
    /// server's PONG to the PING after SUB says the subscription is in place.
    async fn subscribe(socket: Socket, subject: &str) -> Result<NatsWsSubscriber> {
        let mut subscriber = NatsWsSubscriber {
            socket,
            buffer: BytesMut::new(),
        };
        let first = subscriber.next_op().await?;
        if first != NatsOp::Info {
            return Err(format!("nats-server began with {first:?}").into());
        }
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {subject} 1\r\nPING\r\n"
        );
        subscriber.socket.send(Message::binary(hello)).await?;
        loop {
            match subscriber.next_op().await? {
                NatsOp::Pong => return Ok(subscriber),
                NatsOp::Ping => subscriber.pong().await?,
                NatsOp::Error(text) => return Err(format!("nats-server: -ERR {text}").into()),
                NatsOp::Msg(_) => return Err("a message before the subscription".into()),
                NatsOp::Info | NatsOp::Other => {}
            }
        }
    }

    fn into_timestamps(self) -> Timestamps {
        Box::pin(futures::stream::unfold(self, |mut subscriber| async move {
            let stamp = subscriber.next_stamp().await.map_err(|e| e.to_string());
            Some((stamp, subscriber))
        }))
    }

    /// The send time in the next delivered message (the first 8 bytes of a
    /// `fanout` NATS payload), answering the server's PINGs on the way.
    async fn next_stamp(&mut self) -> Result<u64> {
        loop {
            match self.next_op().await? {
                NatsOp::Msg(payload) => {
                    let head = payload.get(..8).ok_or("short payload")?;
                    return Ok(u64::from_le_bytes(head.try_into()?));
                }
                NatsOp::Ping => self.pong().await?,
                NatsOp::Error(text) => return Err(format!("nats-server: -ERR {text}").into()),
                NatsOp::Info | NatsOp::Pong | NatsOp::Other => {}
            }
        }
    }

    async fn pong(&mut self) -> Result<()> {
        Ok(self.socket.send(Message::binary(&b"PONG\r\n"[..])).await?)
    }

    /// The next whole operation, reading WebSocket messages as needed.
    async fn next_op(&mut self) -> Result<NatsOp> {
        loop {
            if let Some(op) = take_op(&mut self.buffer)? {
                return Ok(op);
            }
            self.read_message().await?;
        }
    }

    /// Appends the next WebSocket message's bytes to the buffer.
    async fn read_message(&mut self) -> Result<()> {
        match self.socket.next().await {
            Some(Ok(Message::Binary(bytes))) => self.buffer.extend_from_slice(&bytes),
            Some(Ok(Message::Text(text))) => self.buffer.extend_from_slice(text.as_bytes()),
            Some(Ok(Message::Close(_))) | None => {
                return Err("nats-server closed the socket".into());
            }
            // WebSocket pings: tungstenite answers them itself.
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
        }
        if self.buffer.len() > MAX_NATS_BUFFER {
            return Err(format!("over {MAX_NATS_BUFFER} bytes of unparsed NATS protocol").into());
        }
        Ok(())
    }
}

/// Cuts the first whole operation off `buffer`; None while it is partial.
/// `MSG <subject> <sid> [reply-to] <size>\r\n<payload>\r\n` is the only one
/// with a body; the others are one line.
fn take_op(buffer: &mut BytesMut) -> Result<Option<NatsOp>> {
    let Some(line_end) = buffer.windows(2).position(|pair| pair == b"\r\n") else {
        return Ok(None);
    };
    let line = &buffer[..line_end];
    if line.starts_with(b"MSG ") {
        let size: usize = std::str::from_utf8(line)?
            .rsplit(' ')
            .next()
            .and_then(|size| size.parse().ok())
            .ok_or("a MSG line without a size")?;
        let whole = line_end + 2 + size + 2;
        if buffer.len() < whole {
            return Ok(None);
        }
        let mut op = buffer.split_to(whole);
        op.advance(line_end + 2);
        op.truncate(size);
        return Ok(Some(NatsOp::Msg(op.freeze())));
    }
    let line = buffer.split_to(line_end + 2);
    let text = String::from_utf8_lossy(&line[..line_end]);
    Ok(Some(match text.split(' ').next().unwrap_or("") {
        "INFO" => NatsOp::Info,
        "PING" => NatsOp::Ping,
        "PONG" => NatsOp::Pong,
        "-ERR" => NatsOp::Error(text.trim_start_matches("-ERR").trim().to_string()),
        _ => NatsOp::Other,
    }))
}

/// `count` subscribers made one after another by `make`, each given
/// [`SETUP_TIMEOUT`] to log in and subscribe.
async fn each_within_setup_time<F, Fut>(
    count: usize,
    what: &str,
    make: F,
) -> Result<Vec<Timestamps>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Timestamps>>,
{
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let made = tokio::time::timeout(SETUP_TIMEOUT, make()).await;
        streams.push(made.map_err(|_| format!("a {what} subscriber's setup timed out"))??);
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_split_and_joined_across_messages() {
        let mut buffer = BytesMut::from(&b"INFO {}\r\nPING\r\nMSG a.b 1 5\r\nhel"[..]);
        assert_eq!(take_op(&mut buffer).unwrap(), Some(NatsOp::Info));
        assert_eq!(take_op(&mut buffer).unwrap(), Some(NatsOp::Ping));
        assert_eq!(take_op(&mut buffer).unwrap(), None);
        buffer.extend_from_slice(b"lo\r\nMSG a.b 1 r.1 2\r\nhi\r\n-ERR 'x'\r\n");
        let hello = Bytes::from_static(b"hello");
        assert_eq!(take_op(&mut buffer).unwrap(), Some(NatsOp::Msg(hello)));
        let hi = Bytes::from_static(b"hi");
        assert_eq!(take_op(&mut buffer).unwrap(), Some(NatsOp::Msg(hi)));
        assert_eq!(
            take_op(&mut buffer).unwrap(),
            Some(NatsOp::Error("'x'".into()))
        );
        assert!(buffer.is_empty());
    }

    #[test]
    fn room_event_stamps() {
        let event = json!({"kind": "EMIT", "args": [fanout::busbar_payload(0xabc, SIZE)]});
        assert_eq!(room_event_stamp(&event), Some(0xabc));
        assert_eq!(room_event_stamp(&json!({"args": []})), None);
    }
}
