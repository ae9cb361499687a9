//! Scenario: many rooms (the second half of the scenario 7, scale):
//! R rooms × 10 members, a few emitters spread over the rooms; delivered
//! events per second, all members together.
//!
//! * Busbar: R rooms; the 10 R memberships are spread over [`CONNECTIONS`]
//!   subscriber connections (member k of room r is on connection
//!   (10 r + k) mod C, so each room has 10 members on 10 different
//!   connections); [`EMITTERS`] emitter connections each own every
//!   [`EMITTERS`]-th room and send over one `Rooms/EmitStream` per room
//!   (`RoomEmitter`), round-robin over their rooms.
//! * NATS: R subjects, the same 10 R subscriptions over the same number of
//!   connections, the same number of publishing connections round-robin over
//!   their subjects.
//!
//! Every room gets M events (M ≤ 1000, below Busbar's per-member queue of
//! 1024, so no member is cut and nothing is dropped); the rate is all
//! deliveries divided by the time from the first send to the last delivery.

use crate::ctx::Ctx;
use crate::procs::Result;
use crate::report::{Better, Row, Target};
use busbar_client::{ResourceKind, RoomEventKind};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MEMBERS: usize = 10;
/// Subscriber connections per system (memberships are spread over them).
const CONNECTIONS: usize = 100;
/// Emitting / publishing connections per system.
const EMITTERS: usize = 10;
/// Payload size in bytes.
const PAYLOAD: usize = 64;

/// A member's deliveries: Ok(()) per event.
type Deliveries = BoxStream<'static, std::result::Result<(), String>>;

struct Outcome {
    rate: f64,
    notes: Vec<String>,
}

/// Counts deliveries on every stream (one task per subscriber connection)
/// while `publish` runs; stops when all arrived or at the cap.
async fn measure<F>(
    system: &str,
    per_connection: Vec<Vec<Deliveries>>,
    expected: u64,
    cap: Duration,
    publish: F,
) -> Outcome
where
    F: std::future::Future<Output = std::result::Result<(), String>>,
{
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let last = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut tasks = tokio::task::JoinSet::new();
    for streams in per_connection {
        let (delivered, done, last) = (delivered.clone(), done.clone(), last.clone());
        tasks.spawn(async move {
            let mut merged = futures::stream::select_all(streams);
            while let Some(item) = merged.next().await {
                item?;
                let now = delivered.fetch_add(1, Ordering::AcqRel) + 1;
                if now == expected {
                    *last.lock().expect("not poisoned") = Some(Instant::now());
                    done.notify_one();
                }
            }
            Ok::<(), String>(())
        });
    }
    let start = Instant::now();
    let deadline = start + cap;
    let mut notes = Vec::new();
    let finished = done.notified();
    tokio::pin!(finished);
    finished.as_mut().enable();
    if let Err(error) = publish.await {
        notes.push(format!("{system}: publish failed: {error}"));
    }
    let complete = delivered.load(Ordering::Acquire) >= expected
        || tokio::time::timeout_at(deadline.into(), finished)
            .await
            .is_ok();
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(error)) = joined {
            notes.push(format!("{system}: a subscriber failed: {error}"));
            break;
        }
    }
    let count = delivered.load(Ordering::Acquire);
    let end = match *last.lock().expect("not poisoned") {
        Some(at) if complete => at,
        _ => {
            notes.push(format!(
                "{system}: stopped at the {cap:?} cap after {count} of {expected} deliveries"
            ));
            Instant::now().min(deadline)
        }
    };
    Outcome {
        rate: count as f64 / (end - start).as_secs_f64().max(1e-9),
        notes,
    }
}

/// Waits for every publishing task; the first error, if any.
async fn join_all(
    mut tasks: tokio::task::JoinSet<std::result::Result<(), String>>,
) -> std::result::Result<(), String> {
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| e.to_string())??;
    }
    Ok(())
}

fn payload() -> String {
    "x".repeat(PAYLOAD)
}

async fn busbar(ctx: &Ctx, rooms: usize, per_room: u64, cap: Duration) -> Result<Outcome> {
    let folder = "/home/admin/bench-rooms";
    ctx.admin.mkdir(folder, true).await?;
    let paths: Vec<String> = (0..rooms).map(|r| format!("{folder}/r{r}")).collect();
    futures::stream::iter(&paths)
        .map(|path| ctx.admin.create(path, ResourceKind::Room, false))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let connections = CONNECTIONS.min(rooms * MEMBERS);
    let mut subscribers = Vec::with_capacity(connections);
    for _ in 0..connections {
        subscribers.push(ctx.busbar_client().await?);
    }
    let joins =
        (0..rooms).flat_map(|r| (0..MEMBERS).map(move |k| (r, (r * MEMBERS + k) % connections)));
    let joined = futures::stream::iter(joins)
        .map(|(r, c)| {
            let (client, path) = (&subscribers[c], &paths[r]);
            async move { client.join(path).await.map(|m| (c, m)) }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut per_connection: Vec<Vec<Deliveries>> = (0..connections).map(|_| Vec::new()).collect();
    for result in joined {
        let (c, membership) = result?;
        per_connection[c].push(Box::pin(membership.map(|event| match event {
            Err(error) => Err(error.to_string()),
            Ok(event) if event.kind != RoomEventKind::Emit => {
                Err(format!("membership ended: {:?}", event.kind))
            }
            Ok(_) => Ok(()),
        })));
    }
    let mut emitters = Vec::with_capacity(EMITTERS);
    for _ in 0..EMITTERS.min(rooms) {
        emitters.push(ctx.busbar_client().await?);
    }
    let publish = async {
        let mut tasks = tokio::task::JoinSet::new();
        for (e, client) in emitters.iter().enumerate() {
            let mine: Vec<_> = paths
                .iter()
                .skip(e)
                .step_by(emitters.len())
                .map(|path| client.emitter(path))
                .collect();
            tasks.spawn(async move {
                let text = payload();
                for _ in 0..per_room {
                    for emitter in &mine {
                        let args = vec![serde_json::Value::String(text.clone())];
                        emitter.emit("m", args).await.map_err(|e| e.to_string())?;
                    }
                }
                for emitter in mine {
                    emitter.finish().await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            });
        }
        join_all(tasks).await
    };
    let expected = (rooms * MEMBERS) as u64 * per_room;
    let outcome = measure("busbar", per_connection, expected, cap, publish).await;
    drop(subscribers);
    drop(emitters);
    let _ = ctx.admin.rm(folder, true).await;
    Ok(outcome)
}

async fn nats(ctx: &Ctx, rooms: usize, per_room: u64, cap: Duration) -> Result<Option<Outcome>> {
    if ctx.nats_url.is_none() {
        return Ok(None);
    }
    let connections = CONNECTIONS.min(rooms * MEMBERS);
    let mut subscribers = Vec::with_capacity(connections);
    for _ in 0..connections {
        subscribers.push(ctx.nats_client().await?.ok_or("NATS went away")?);
    }
    let subjects: Vec<String> = (0..rooms).map(|r| format!("bench.rooms.r{r}")).collect();
    let mut per_connection: Vec<Vec<Deliveries>> = (0..connections).map(|_| Vec::new()).collect();
    for (r, subject) in subjects.iter().enumerate() {
        for k in 0..MEMBERS {
            let c = (r * MEMBERS + k) % connections;
            let subscription = subscribers[c].subscribe(subject.clone()).await?;
            per_connection[c].push(Box::pin(subscription.map(|_| Ok(()))));
        }
    }
    for client in &subscribers {
        client.flush().await?;
    }
    let mut publishers = Vec::with_capacity(EMITTERS);
    for _ in 0..EMITTERS.min(rooms) {
        publishers.push(ctx.nats_client().await?.ok_or("NATS went away")?);
    }
    let publish = async {
        let mut tasks = tokio::task::JoinSet::new();
        for (e, client) in publishers.iter().enumerate() {
            let mine: Vec<String> = subjects
                .iter()
                .skip(e)
                .step_by(publishers.len())
                .cloned()
                .collect();
            let client = client.clone();
            tasks.spawn(async move {
                let bytes = bytes::Bytes::from(payload());
                for _ in 0..per_room {
                    for subject in &mine {
                        client
                            .publish(subject.clone(), bytes.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
                client.flush().await.map_err(|e| e.to_string())
            });
        }
        join_all(tasks).await
    };
    let expected = (rooms * MEMBERS) as u64 * per_room;
    let outcome = measure("nats", per_connection, expected, cap, publish).await;
    drop(subscribers);
    drop(publishers);
    Ok(Some(outcome))
}

pub async fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let rooms: usize = ctx.pick(50, 1000);
    let per_room: u64 = ctx.pick(200, 200);
    let cap = ctx.pick(Duration::from_secs(10), Duration::from_secs(30));
    eprintln!("bench: rooms, {rooms} rooms × {MEMBERS} members, {per_room} events per room");
    let b = busbar(ctx, rooms, per_room, cap).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = nats(ctx, rooms, per_room, cap).await?;

    let mut notes = vec![format!(
        "{rooms} rooms × {MEMBERS} members over {} subscriber connections, {} emitting connections round-robin over their rooms, {per_room} events of {PAYLOAD} B per room",
        CONNECTIONS.min(rooms * MEMBERS),
        EMITTERS.min(rooms)
    )];
    notes.extend(b.notes.iter().cloned());
    if let Some(n) = &n {
        notes.extend(n.notes.iter().cloned());
    } else if let Some(skipped) = &ctx.nats_skipped {
        notes.push(skipped.clone());
    }
    let row = Row::new(
        format!("rooms {rooms} × {MEMBERS} members: delivered"),
        "events/s",
        Better::Higher,
        b.rate,
    )
    .peer("nats", n.as_ref().map(|n| n.rate))
    .target(Target::ratio_at_least("nats", 1.0));
    Ok(vec![notes.into_iter().fold(row, Row::note)])
}
