//! Scenario 2: fan-out. One publisher, 1 / 10 / 100 subscribers, 64 B and
//! 1 KiB payloads: delivered messages per second and p99 end-to-end latency
//! (the send time is embedded in each payload; all clients share one clock).
//!
//! * Busbar: a room; each subscriber is its own `Client` connection that
//!   `join`s it; the publisher (one more connection) sends every event over
//!   one `Rooms/EmitStream` (a `RoomEmitter`), which [`EMITTERS`] tasks feed.
//! * NATS: a subject; each subscriber its own connection; the publisher runs
//!   the same number of publishing tasks on one connection.
//!
//! Both are held to the same flow control: the publisher never runs more than
//! [`WINDOW`] messages ahead of the slowest subscriber, so nothing is dropped
//! (Busbar cuts a member more than `--room-queue` = 1024 events behind) and
//! the figures are a sustained rate, not a burst into buffers. Latency is
//! therefore measured at saturation: p99 ≈ queueing behind the window.

use crate::ctx::Ctx;
use crate::procs::Result;
use crate::report::{Better, Row, Target};
use crate::stats::Samples;
use busbar_client::{ResourceKind, RoomEventKind};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most messages the publisher may be ahead of the slowest subscriber.
pub(crate) const WINDOW: u64 = 256;
/// Concurrent emits (Busbar) / publishing tasks (NATS).
pub(crate) const EMITTERS: usize = 64;
/// Payload timestamp 0 marks a warm-up message, not measured.
const WARM_UP: u64 = 0;

/// Per-subscriber counts the publisher paces itself by.
struct Progress {
    counts: Vec<AtomicU64>,
    warmed: Vec<AtomicBool>,
    notify: Notify,
}

impl Progress {
    fn new(subscribers: usize) -> Progress {
        Progress {
            counts: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            warmed: (0..subscribers).map(|_| AtomicBool::new(false)).collect(),
            notify: Notify::new(),
        }
    }

    fn slowest(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Waits until message `seq` fits in the window; false at the deadline.
    async fn wait_for_room(&self, seq: u64, deadline: Instant) -> bool {
        loop {
            if seq < self.slowest() + WINDOW {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if seq < self.slowest() + WINDOW {
                return true;
            }
            let _ = tokio::time::timeout(Duration::from_millis(2), notified).await;
        }
    }
}

/// A subscriber's messages as send timestamps.
pub(crate) type Timestamps = BoxStream<'static, std::result::Result<u64, String>>;
/// Sends one message carrying a timestamp.
pub(crate) type Emit =
    Arc<dyn Fn(u64) -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync>;

struct SubscriberResult {
    samples: Samples,
    received: u64,
    last: Option<Instant>,
    error: Option<String>,
}

async fn subscriber(
    index: usize,
    mut stream: Timestamps,
    progress: Arc<Progress>,
    total: u64,
    deadline: Instant,
    base: Instant,
) -> SubscriberResult {
    let mut result = SubscriberResult {
        samples: Samples::with_capacity(total as usize),
        received: 0,
        last: None,
        error: None,
    };
    while result.received < total {
        match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Err(_) => break,
            Ok(None) => {
                result.error = Some("stream ended early".into());
                break;
            }
            Ok(Some(Err(error))) => {
                result.error = Some(error);
                break;
            }
            Ok(Some(Ok(WARM_UP))) => progress.warmed[index].store(true, Ordering::Release),
            Ok(Some(Ok(sent))) => {
                let now = base.elapsed().as_nanos() as u64;
                result.samples.push_nanos(now.saturating_sub(sent));
                result.received += 1;
                progress.counts[index].store(result.received, Ordering::Release);
                if result.received.is_multiple_of(8) || result.received == total {
                    progress.notify.notify_waiters();
                }
                result.last = Some(Instant::now());
            }
        }
    }
    result
}

pub(crate) struct RunResult {
    pub rate: f64,
    pub samples: Samples,
    pub notes: Vec<String>,
}

/// One run: warm up until every subscriber heard a marker, then `total`
/// messages from [`EMITTERS`] tasks, paced by the window.
pub(crate) async fn run_one(
    ctx: &Ctx,
    system: &str,
    streams: Vec<Timestamps>,
    emit: Emit,
    total: u64,
    cap: Duration,
) -> RunResult {
    let subscribers = streams.len();
    let progress = Arc::new(Progress::new(subscribers));
    let setup_deadline = Instant::now() + Duration::from_secs(10) + cap;
    let mut tasks = tokio::task::JoinSet::new();
    // Subscribers stop at the setup deadline (warm-up plus the cap) at the
    // latest; the collector below stops waiting for them at the cap.
    for (index, stream) in streams.into_iter().enumerate() {
        let progress = progress.clone();
        let base = ctx.base;
        tasks.spawn(subscriber(
            index,
            stream,
            progress,
            total,
            setup_deadline,
            base,
        ));
    }
    let mut notes = Vec::new();
    // Warm-up: a marker every 10 ms until every subscriber saw one (at most 5 s).
    let warm_deadline = Instant::now() + Duration::from_secs(5);
    while !progress.warmed.iter().all(|w| w.load(Ordering::Acquire)) {
        if Instant::now() > warm_deadline {
            notes.push(format!(
                "{system}: not every subscriber was reached during warm-up"
            ));
            break;
        }
        if let Err(error) = emit(WARM_UP).await {
            notes.push(format!("{system}: warm-up failed: {error}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    let deadline = start + cap;
    let next = Arc::new(AtomicU64::new(0));
    let mut emitters = tokio::task::JoinSet::new();
    for _ in 0..EMITTERS {
        let (next, progress, emit) = (next.clone(), progress.clone(), emit.clone());
        let base = ctx.base;
        emitters.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total || !progress.wait_for_room(seq, deadline).await {
                    return None;
                }
                let stamp = (base.elapsed().as_nanos() as u64).max(1);
                if let Err(error) = emit(stamp).await {
                    return Some(error);
                }
            }
        });
    }
    while let Some(joined) = emitters.join_next().await {
        if let Ok(Some(error)) = joined {
            notes.push(format!("{system}: publish failed: {error}"));
        }
    }
    // Subscribers: wait for them up to the cap (their own deadline is later,
    // covering warm-up), then stop the stragglers.
    let mut samples = Samples::default();
    let mut delivered = 0u64;
    let mut last = start;
    let mut errors = Vec::new();
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let Ok(result) = joined else { continue };
            delivered += result.received;
            if let Some(at) = result.last {
                last = last.max(at);
            }
            if let Some(error) = result.error {
                errors.push(error);
            }
            samples.merge(result.samples);
        }
    };
    let capped = tokio::time::timeout_at(deadline.into(), collect)
        .await
        .is_err();
    tasks.abort_all();
    let expected = total * subscribers as u64;
    let elapsed = if capped || delivered < expected {
        notes.push(format!(
            "{system}: stopped at the {cap:?} cap after {delivered} of {expected} deliveries"
        ));
        Instant::now().min(deadline) - start
    } else {
        last - start
    };
    if let Some(error) = errors.first() {
        notes.push(format!(
            "{system}: {} subscribers failed, first: {error}",
            errors.len()
        ));
    }
    RunResult {
        rate: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
        samples,
        notes,
    }
}

/// A Busbar event argument: the send time as 16 hex digits, padded to `size`.
pub(crate) fn busbar_payload(stamp: u64, size: usize) -> String {
    let mut text = format!("{stamp:016x}");
    text.push_str(&"x".repeat(size.saturating_sub(16)));
    text
}

/// A NATS payload: the send time as 8 little-endian bytes, padded to `size`.
fn nats_payload(stamp: u64, size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u64_le(stamp);
    buf.resize(size.max(8), b'x');
    buf.freeze()
}

/// Emits `size`-byte events to `room` over one `Rooms/EmitStream` of
/// `publisher`: no round trip per event, like a NATS publish; the emit
/// tasks share it without a lock, as they share the NATS client.
pub(crate) fn busbar_emit(publisher: &busbar_client::Client, room: &str, size: usize) -> Emit {
    let emitter = Arc::new(publisher.emitter(room));
    Arc::new(move |stamp| {
        let emitter = emitter.clone();
        Box::pin(async move {
            let args = vec![serde_json::Value::String(busbar_payload(stamp, size))];
            emitter.emit("m", args).await.map_err(|e| e.to_string())
        })
    })
}

/// Publishes `size`-byte messages to `subject` on `publisher`.
pub(crate) fn nats_emit(publisher: &async_nats::Client, subject: String, size: usize) -> Emit {
    let client = publisher.clone();
    Arc::new(move |stamp| {
        let (client, subject) = (client.clone(), subject.clone());
        Box::pin(async move {
            client
                .publish(subject, nats_payload(stamp, size))
                .await
                .map_err(|e| e.to_string())
        })
    })
}

impl RunResult {
    /// The turn with the median rate, with every turn's latency samples and
    /// notes.
    pub(crate) fn median(mut turns: Vec<RunResult>) -> RunResult {
        turns.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let rate = turns[turns.len() / 2].rate;
        let mut samples = Samples::default();
        let mut notes: Vec<String> = Vec::new();
        for turn in turns {
            samples.merge(turn.samples);
            for note in turn.notes {
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
        RunResult {
            rate,
            samples,
            notes,
        }
    }
}

/// One configuration (payload size, message count, time cap) of the scenario.
pub(crate) struct Run<'a> {
    pub ctx: &'a Ctx,
    pub size: usize,
    pub total: u64,
    pub cap: Duration,
}

impl Run<'_> {
    /// One Busbar turn: a fresh room, joined by every subscriber.
    async fn busbar(
        &self,
        publisher: &busbar_client::Client,
        subscribers: &[busbar_client::Client],
        room: &str,
    ) -> Result<RunResult> {
        self.busbar_with(&self.ctx.admin, publisher, subscribers, room)
            .await
    }

    /// [`Run::busbar`] with the room made (and removed) by `admin`: a
    /// cluster's, whose nodes the clients are connected to.
    pub(crate) async fn busbar_with(
        &self,
        admin: &busbar_client::Client,
        publisher: &busbar_client::Client,
        subscribers: &[busbar_client::Client],
        room: &str,
    ) -> Result<RunResult> {
        let (ctx, size) = (self.ctx, self.size);
        admin.create(room, ResourceKind::Room, false).await?;
        let mut streams: Vec<Timestamps> = Vec::new();
        for client in subscribers {
            let membership = client.join(room).await?;
            streams.push(Box::pin(membership.filter_map(|event| async move {
                match event {
                    Err(error) => Some(Err(error.to_string())),
                    Ok(event) if event.kind != RoomEventKind::Emit => {
                        Some(Err(format!("membership ended: {:?}", event.kind)))
                    }
                    Ok(event) => {
                        let stamp = event
                            .args
                            .first()
                            .and_then(|arg| arg.as_str())
                            .and_then(|text| text.get(..16))
                            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
                        Some(stamp.ok_or_else(|| "unexpected event payload".to_string()))
                    }
                }
            })));
        }
        let emit = busbar_emit(publisher, room, size);
        let result = run_one(ctx, "busbar", streams, emit, self.total, self.cap).await;
        admin.rm(room, false).await?;
        Ok(result)
    }

    /// One NATS turn: a fresh subject, subscribed by every subscriber.
    pub(crate) async fn nats(
        &self,
        publisher: &async_nats::Client,
        subscribers: &[async_nats::Client],
        subject: String,
    ) -> Result<RunResult> {
        let size = self.size;
        let mut streams: Vec<Timestamps> = Vec::new();
        for client in subscribers {
            let subscription = client.subscribe(subject.clone()).await?;
            streams.push(Box::pin(subscription.map(|message| {
                let bytes = message.payload.get(..8).ok_or("short payload")?;
                Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
            })));
        }
        let emit = nats_emit(publisher, subject, size);
        Ok(run_one(self.ctx, "nats", streams, emit, self.total, self.cap).await)
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    const COUNTS: [usize; 3] = [1, 10, 100];
    const SIZES: [usize; 2] = [64, 1024];
    let max_subscribers = COUNTS[COUNTS.len() - 1];
    let cap = ctx.pick(Duration::from_secs(6), Duration::from_secs(20));

    eprintln!("bench: fan-out, connecting {max_subscribers} subscribers per system");
    let publisher = ctx.busbar_client().await?;
    let mut busbar_subscribers = Vec::with_capacity(max_subscribers);
    for _ in 0..max_subscribers {
        busbar_subscribers.push(ctx.busbar_client().await?);
    }
    let nats_publisher = ctx.nats_client().await?;
    let mut nats_subscribers = Vec::new();
    if nats_publisher.is_some() {
        for _ in 0..max_subscribers {
            nats_subscribers.push(ctx.nats_client().await?.ok_or("NATS went away")?);
        }
    }
    let folder = "/home/admin/bench-fanout";
    ctx.admin.mkdir(folder, true).await?;

    // Systems take turns (3 in full runs), and each figure is the median
    // turn's rate with p99 over all turns: one run per system swung the
    // one-subscriber ratio between 0.75 and 1.26 on this shared machine.
    let turns = ctx.pick(1, 3);
    let mut rows = Vec::new();
    for subscribers in COUNTS {
        for size in SIZES {
            let total: u64 = match (subscribers, ctx.quick) {
                (1, true) => 50_000,
                (10, true) => 20_000,
                (_, true) => 3_000,
                (1, false) => 200_000,
                (10, false) => 100_000,
                (_, false) => 15_000,
            };
            let label = format!("{subscribers} sub, {size} B");
            eprintln!("bench: fan-out {label}, {total} messages, {turns} turn(s)");
            let run = Run {
                ctx,
                size,
                total,
                cap,
            };
            let mut busbar_turns = Vec::new();
            let mut nats_turns = Vec::new();
            for turn in 0..turns {
                let room = format!("{folder}/r{subscribers}-{size}-{turn}");
                busbar_turns.push(
                    run.busbar(&publisher, &busbar_subscribers[..subscribers], &room)
                        .await?,
                );
                if let Some(nats_publisher) = &nats_publisher {
                    let subject = format!("bench.fanout.{subscribers}.{size}.{turn}");
                    nats_turns.push(
                        run.nats(nats_publisher, &nats_subscribers[..subscribers], subject)
                            .await?,
                    );
                }
            }
            let mut busbar = RunResult::median(busbar_turns);
            let mut nats = (!nats_turns.is_empty()).then(|| RunResult::median(nats_turns));

            let mut notes = busbar.notes.clone();
            if let Some(nats) = &nats {
                notes.extend(nats.notes.iter().cloned());
            }
            notes.push(format!(
                "window {WINDOW} messages ahead of the slowest subscriber, {EMITTERS} concurrent emits/publishes, {total} messages; median of {turns} turn(s), p99 over all"
            ));
            if let Some(skipped) = &ctx.nats_skipped {
                notes.push(skipped.clone());
            }
            let with_notes = |row: Row| notes.iter().fold(row, |row, note| row.note(note.clone()));
            rows.push(with_notes(
                Row::new(
                    format!("fan-out {label}: delivered"),
                    "msgs/s",
                    Better::Higher,
                    busbar.rate,
                )
                .peer("nats", nats.as_ref().map(|n| n.rate))
                .target(Target::ratio_at_least("nats", 1.0)),
            ));
            rows.push(with_notes(
                Row::new(
                    format!("fan-out {label}: p99 latency"),
                    "µs",
                    Better::Lower,
                    busbar.samples.percentile_us(99.0),
                )
                .peer("nats", nats.as_mut().map(|n| n.samples.percentile_us(99.0)))
                .target(Target::ratio_at_most("nats", 1.0)),
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = ctx.admin.rm(folder, true).await;
    Ok(rows)
}
