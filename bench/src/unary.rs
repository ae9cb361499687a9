//! Scenario 1: unary call latency (p50, p99) and throughput at 1 and 64
//! calls in flight, TLS on everywhere.
//!
//! * Busbar: `Client::status()` (busbar.v1.Node/Status, authenticated: the
//!   session token is checked on every call).
//! * tonic: the same Node/Status on a bare tonic server (peer-server).
//! * NATS: request/reply to a responder (peer-server) that answers with the
//!   same encoded status.
//!
//! Each system gets ONE connection: the 64 in-flight calls share it (one
//! cloned Busbar `Client`, one tonic `Channel`, one NATS client), the way an
//! application holding one handle would use it. The systems take turns
//! (2 turns each in quick runs, 4 in full ones) after a warm-up, so noise from
//! elsewhere on the machine is spread over all of them.

use crate::ctx::Ctx;
use crate::procs::Result;
use crate::report::{Better, Row, Target};
use crate::stats::Samples;
use busbar_proto::v1 as pb;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Measured {
    pub(crate) samples: Samples,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Measured {
    /// Adds another measured turn of the same system.
    pub(crate) fn add(&mut self, other: Measured) {
        self.samples.merge(other.samples);
        self.ok += other.ok;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub(crate) fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// One call of a system under test.
pub(crate) type Call =
    Arc<dyn Fn() -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync>;

/// Runs `call` from `inflight` tasks until `duration` passes or `max_calls`
/// were issued.
pub(crate) async fn measure(
    inflight: usize,
    duration: Duration,
    max_calls: u64,
    call: &Call,
) -> Measured {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..inflight {
        let call = call.clone();
        let issued = issued.clone();
        tasks.spawn(async move {
            let mut samples = Samples::with_capacity(4096);
            let (mut errors, mut first_error) = (0u64, None);
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_calls {
                let sent = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), call()).await {
                    Ok(Ok(())) => samples.push(sent.elapsed()),
                    Ok(Err(error)) => {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                    Err(_) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| "call timed out after 10 s".to_string());
                    }
                }
            }
            (samples, errors, first_error)
        });
    }
    let mut measured = Measured::default();
    while let Some(joined) = tasks.join_next().await {
        let (samples, errors, first_error) = joined.expect("load task panicked");
        measured.ok += samples.len() as u64;
        measured.samples.merge(samples);
        measured.errors += errors;
        if measured.first_error.is_none() {
            measured.first_error = first_error;
        }
    }
    measured.elapsed = start.elapsed();
    measured
}

/// How many turns each system gets, and how long each lasts. The systems
/// take turns so that a burst of noise from elsewhere on the machine lands
/// on all of them rather than on one.
pub(crate) fn turns(ctx: &Ctx) -> (u32, Duration) {
    (
        ctx.pick(2u32, 4),
        ctx.pick(Duration::from_millis(750), Duration::from_secs(2)),
    )
}

/// What each system measured over its turns, by name.
pub(crate) struct TakenTurns(Vec<(&'static str, Measured)>);

impl TakenTurns {
    /// Warms every system up, then lets them take turns at `inflight`
    /// calls in flight.
    pub(crate) async fn run(
        ctx: &Ctx,
        systems: &[(&'static str, Call)],
        inflight: usize,
    ) -> TakenTurns {
        let (rounds, turn) = turns(ctx);
        let warm = ctx.pick(Duration::from_millis(300), Duration::from_secs(1));
        let mut results: Vec<Measured> = systems.iter().map(|_| Measured::default()).collect();
        for (_, call) in systems {
            let _ = measure(inflight, warm, 1_000_000, call).await;
        }
        for _ in 0..rounds {
            for ((_, call), result) in systems.iter().zip(results.iter_mut()) {
                result.add(measure(inflight, turn, 2_000_000, call).await);
            }
        }
        TakenTurns(systems.iter().map(|(name, _)| *name).zip(results).collect())
    }

    pub(crate) fn take(&mut self, name: &str) -> Option<Measured> {
        let index = self.0.iter().position(|(n, _)| *n == name)?;
        Some(self.0.remove(index).1)
    }
}

pub(crate) fn error_note(system: &str, measured: &Measured) -> String {
    match &measured.first_error {
        Some(error) => format!("{system}: {} failed calls, first: {error}", measured.errors),
        None => String::new(),
    }
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let busbar = ctx.busbar_client().await?;
    let tonic = crate::peers::tonic_client(&ctx.tonic_address, &ctx.tls.ca).await?;
    let nats = ctx.nats_client().await?;
    let mut systems: Vec<(&'static str, Call)> = vec![
        (
            "busbar",
            Arc::new(move || {
                let client = busbar.clone();
                Box::pin(
                    async move { client.status().await.map(|_| ()).map_err(|e| e.to_string()) },
                )
            }),
        ),
        (
            "tonic",
            Arc::new(move || {
                let mut client = tonic.clone();
                Box::pin(async move {
                    client
                        .status(pb::StatusRequest {})
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        ),
    ];
    if let Some(nats) = nats {
        systems.push((
            "nats",
            Arc::new(move || {
                let nats = nats.clone();
                Box::pin(async move {
                    nats.request(crate::peers::ECHO_SUBJECT, Bytes::new())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        ));
    }
    let (rounds, turn) = turns(ctx);
    let mut rows = Vec::new();
    for inflight in [1usize, 64] {
        eprintln!("bench: unary, {inflight} in flight");
        let mut taken = TakenTurns::run(ctx, &systems, inflight).await;
        let mut take = |name: &str| taken.take(name);
        let mut b = take("busbar").expect("busbar measured");
        let mut t = take("tonic").expect("tonic measured");
        let mut n = take("nats");

        let connection = if inflight == 1 {
            format!(
                "one call at a time on one connection; systems take turns, {rounds} turns of {turn:?} each"
            )
        } else {
            format!(
                "{inflight} concurrent calls multiplexed on one connection per system (one cloned Client / tonic Channel / NATS client); {rounds} turns of {turn:?} each"
            )
        };
        let notes = [
            connection,
            error_note("busbar", &b),
            error_note("tonic", &t),
            n.as_ref().map_or(String::new(), |n| error_note("nats", n)),
            ctx.nats_skipped.clone().unwrap_or_default(),
        ];
        let mut add = |row: Row| {
            rows.push(notes.iter().fold(row, |row, note| row.note(note.clone())));
        };
        for (p, label) in [(50.0, "p50"), (99.0, "p99")] {
            add(Row::new(
                format!("unary Status, {inflight} in flight: {label} latency"),
                "µs",
                Better::Lower,
                b.samples.percentile_us(p),
            )
            .peer("tonic", Some(t.samples.percentile_us(p)))
            .peer("nats", n.as_mut().map(|n| n.samples.percentile_us(p)))
            .target(Target::ratio_at_most("tonic", 1.2)));
        }
        add(Row::new(
            format!("unary Status, {inflight} in flight: throughput"),
            "calls/s",
            Better::Higher,
            b.throughput(),
        )
        .peer("tonic", Some(t.throughput()))
        .peer("nats", n.as_ref().map(Measured::throughput)));
    }
    Ok(rows)
}
