//! Rooms: delivery exactly once and in order, peers-only emits, deletion,
//! slow consumers.

use crate::harness::{Node, assert_error};
use busbar_client::{ErrorCode, ResourceKind, RoomEvent, RoomEventKind};
use futures::StreamExt;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

const PER_EMITTER: usize = 200;
const CHAT: &str = "/home/admin/chat";

/// Events from each sender, in arrival order, as (sender, seq).
fn by_sender(events: &[(String, i64)]) -> HashMap<String, Vec<i64>> {
    let mut map: HashMap<String, Vec<i64>> = HashMap::new();
    for (sender, seq) in events {
        map.entry(sender.clone()).or_default().push(*seq);
    }
    map
}

async fn collect(room: &mut busbar_client::RoomMembership, count: usize) -> Vec<RoomEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(30), room.next())
            .await
            .expect("events keep coming")
            .expect("stream open")
            .expect("no error");
        events.push(event);
    }
    events
}

#[tokio::test]
async fn three_members_in_two_processes_get_every_event_once_in_order() {
    let (node, admin) = Node::start_with(&[], CHAT, ResourceKind::Room).await;
    let bob = node
        .new_user_granted(
            &admin,
            "bob",
            "bob-password",
            CHAT,
            busbar_client::Right::Write,
        )
        .await;

    // Member 3 lives in another process: the CLI's `room listen`.
    let mut listener = node
        .cli(&["room", "listen", CHAT])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut a = admin.join(CHAT).await.unwrap();
    let mut b = bob.join(CHAT).await.unwrap();
    // Wait until the CLI member has joined: a probe it must print.
    let mut cli_lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let cli_reader = std::thread::spawn(move || {
        let mut events = Vec::new();
        for line in cli_lines.by_ref() {
            let value: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let done = value["kind"] == "deleted";
            events.push(value);
            if done {
                break;
            }
        }
        events
    });
    loop {
        if admin.emit(CHAT, "probe", vec![]).await.unwrap() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Two emitters at once, each numbering its events.
    let emit_all = |client: busbar_client::Client| async move {
        for seq in 0..PER_EMITTER {
            client.emit(CHAT, "seq", vec![seq.into()]).await.unwrap();
        }
    };
    tokio::join!(emit_all(admin.clone()), emit_all(bob.clone()));
    admin.rm(CHAT, false).await.unwrap();

    let expected: Vec<i64> = (0..PER_EMITTER as i64).collect();
    for member in [&mut a, &mut b] {
        let mut seen = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), member.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            match event.kind {
                RoomEventKind::Deleted => break,
                _ if event.event == "seq" => {
                    seen.push((event.sender, event.args[0].as_i64().unwrap()))
                }
                _ => {}
            }
        }
        let sequences = by_sender(&seen);
        assert_eq!(
            sequences["admin"], expected,
            "admin's events once each, in order"
        );
        assert_eq!(
            sequences["bob"], expected,
            "bob's events once each, in order"
        );
        assert!(
            member.next().await.is_none(),
            "the stream ends after deleted"
        );
    }
    let cli_events = cli_reader.join().unwrap();
    let seen: Vec<_> = cli_events
        .iter()
        .filter(|e| e["event"] == "seq")
        .map(|e| {
            (
                e["sender"].as_str().unwrap().to_string(),
                e["args"][0].as_i64().unwrap(),
            )
        })
        .collect();
    let sequences = by_sender(&seen);
    assert_eq!(sequences["admin"], expected);
    assert_eq!(sequences["bob"], expected);
    assert_eq!(
        cli_events.first().unwrap()["kind"],
        "joined",
        "the joined line comes first"
    );
    assert_eq!(cli_events.last().unwrap()["kind"], "deleted");
    assert!(listener.wait().unwrap().success());
}

#[tokio::test]
async fn peers_only_emit_skips_the_sender_and_leave_ends_the_stream() {
    let (_node, admin) = Node::start_with(&[], CHAT, ResourceKind::Room).await;
    let mut a = admin.join(CHAT).await.unwrap();
    let mut b = admin.join(CHAT).await.unwrap();
    assert_eq!(a.emit_peers("to-peers", vec!["x".into()]).await.unwrap(), 1);
    assert_eq!(a.emit("to-all", vec![]).await.unwrap(), 2);
    let got_a = collect(&mut a, 1).await;
    assert_eq!(
        got_a[0].event, "to-all",
        "the sender does not get its peers-only event"
    );
    let got_b = collect(&mut b, 2).await;
    assert_eq!(got_b[0].event, "to-peers");
    assert_eq!(got_b[0].args, vec![serde_json::json!("x")]);
    assert_eq!(got_b[1].event, "to-all");

    a.leave().await.unwrap();
    assert_eq!(collect(&mut a, 1).await[0].kind, RoomEventKind::Left);
    assert!(a.next().await.is_none());
    assert_error(a.leave().await, ErrorCode::NotFound, "no member");
    assert_eq!(admin.emit(CHAT, "after", vec![]).await.unwrap(), 1);

    assert_error(
        admin.emit(CHAT, "", vec![]).await,
        ErrorCode::InvalidArgument,
        "bad event name",
    );
    admin
        .create("/home/admin/pipe", ResourceKind::Wire, false)
        .await
        .unwrap();
    assert_error(
        admin.join("/home/admin/pipe").await,
        ErrorCode::FailedPrecondition,
        "not a room",
    );
}

#[tokio::test]
async fn a_slow_member_is_cut_and_server_memory_stays_bounded() {
    let (node, admin) = Node::start_with(&["--room-queue", "16"], CHAT, ResourceKind::Room).await;
    // Separate connections, so HTTP/2 flow control on one cannot hold the other.
    let mut slow = node.admin().await.join(CHAT).await.unwrap();
    let mut fast = node.admin().await.join(CHAT).await.unwrap();
    let fast_reader = tokio::spawn(async move {
        let mut count = 0usize;
        while let Some(Ok(_)) = fast.next().await {
            count += 1;
        }
        count
    });

    let before = node.rss_kib();
    // 4,000 events of 16 KiB: 64 MiB that must not pile up for the stalled member.
    let payload = serde_json::Value::String("x".repeat(16 * 1024));
    for _ in 0..4_000 {
        admin
            .emit(CHAT, "big", vec![payload.clone()])
            .await
            .unwrap();
    }
    let after = node.rss_kib();
    assert!(
        after < before + 48 * 1024,
        "server memory grew from {before} KiB to {after} KiB with a stalled member"
    );

    // The stalled member reads what was queued, then the cut.
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next())
            .await
            .unwrap()
        {
            Some(Ok(_)) => continue,
            Some(Err(error)) => break error,
            None => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(error.code(), ErrorCode::SlowConsumer, "{error}");
    assert!(
        error.message().contains("fell more than 16 events behind"),
        "{error}"
    );
    assert!(
        node.metrics_text()
            .contains("busbar_slow_consumer_drops_total{kind=\"room\"} 1")
    );

    admin.rm(CHAT, false).await.unwrap();
    assert_eq!(
        fast_reader.await.unwrap(),
        4_001,
        "the member that kept up got everything"
    );
}

#[tokio::test]
async fn an_emitter_streams_events_in_order_without_round_trips() {
    // A queue larger than the burst: this test is about order, not slow consumers.
    let (node, admin) = Node::start_with(&["--room-queue", "8192"], CHAT, ResourceKind::Room).await;
    let mut member = node.admin().await.join(CHAT).await.unwrap();
    let mut me = admin.join(CHAT).await.unwrap();

    // Members read while the events stream in.
    let emitter = me.emitter();
    let member_reader = tokio::spawn(async move { collect(&mut member, 2_001).await });
    let my_reader = tokio::spawn(async move { collect(&mut me, 2_000).await });
    for seq in 0..2_000 {
        emitter.emit("seq", vec![seq.into()]).await.unwrap();
    }
    emitter.emit_peers("not-for-me", vec![]).await.unwrap();
    let summary = emitter.finish().await.unwrap();
    assert_eq!(summary.events, 2_001);
    assert_eq!(summary.delivered, 2 * 2_000 + 1);

    let got = member_reader.await.unwrap();
    let seqs: Vec<i64> = got[..2_000]
        .iter()
        .map(|e| e.args[0].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (0..2_000).collect::<Vec<_>>(), "in the order emitted");
    assert_eq!(got[2_000].event, "not-for-me");
    let mine = my_reader.await.unwrap();
    assert_eq!(mine.last().unwrap().args[0], 1_999);

    // One emitter shared by tasks (emit takes &self): everything arrives,
    // each task's events in that task's order.
    let mut member = node.admin().await.join(CHAT).await.unwrap();
    let reader = tokio::spawn(async move { collect(&mut member, 4 * 250).await });
    let shared = std::sync::Arc::new(admin.emitter(CHAT));
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let shared = shared.clone();
            tokio::spawn(async move {
                for seq in 0..250 {
                    shared
                        .emit("tagged", vec![task.into(), seq.into()])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let shared = std::sync::Arc::into_inner(shared).expect("the tasks are done");
    assert_eq!(shared.finish().await.unwrap().events, 4 * 250);
    let got = reader.await.unwrap();
    for task in 0..4 {
        let seqs: Vec<i64> = got
            .iter()
            .filter(|e| e.args[0] == task)
            .map(|e| e.args[1].as_i64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (0..250).collect::<Vec<_>>(),
            "task {task} in its order"
        );
    }

    // A missing right ends the stream; the error comes back from emit or finish.
    let bob = node.new_user(&admin, "bob", "bob-password").await;
    let denied = bob.emitter(CHAT);
    let mut outcome = Ok(());
    for _ in 0..1_000 {
        outcome = denied.emit("x", vec![]).await;
        if outcome.is_err() {
            break;
        }
    }
    let error = match outcome {
        Err(error) => error,
        Ok(()) => denied.finish().await.unwrap_err(),
    };
    assert_eq!(error.code(), ErrorCode::PermissionDenied, "{error}");
}

#[tokio::test]
async fn one_emit_stream_sends_to_several_rooms_and_sees_a_revoked_right() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    for room in ["/home/admin/a", "/home/admin/b"] {
        admin.create(room, ResourceKind::Room, false).await.unwrap();
    }
    let bob = node.new_user(&admin, "bob", "bob-password").await;
    for room in ["/home/admin/a", "/home/admin/b"] {
        admin
            .grant(room, "bob", busbar_client::Right::Write)
            .await
            .unwrap();
    }
    let mut in_a = admin.join("/home/admin/a").await.unwrap();
    let mut in_b = admin.join("/home/admin/b").await.unwrap();

    // The generic streaming call: each message names its room.
    let mut call = bob
        .stream("busbar.v1.Rooms/EmitStream", None)
        .await
        .unwrap();
    let emit = |room: &str, event: &str, seq: i64| serde_json::json!({"path": room, "event": event, "args": [seq]});
    for (room, event, seq) in [
        ("/home/admin/a", "one", 1),
        ("/home/admin/b", "two", 2),
        ("/home/admin/a", "three", 3),
        ("/home/admin/a", "four", 4),
    ] {
        call.send(emit(room, event, seq)).await.unwrap();
    }
    let got_a = collect(&mut in_a, 3).await;
    let got_b = collect(&mut in_b, 1).await;
    let summary = |events: &[RoomEvent]| -> Vec<(String, String, String, i64)> {
        events
            .iter()
            .map(|e| {
                assert_eq!(e.kind, RoomEventKind::Emit);
                let seq = e.args[0].as_i64().unwrap();
                (e.room_path.clone(), e.event.clone(), e.sender.clone(), seq)
            })
            .collect()
    };
    let entry = |room: &str, event: &str, seq| (room.into(), event.into(), "bob".into(), seq);
    assert_eq!(
        summary(&got_a),
        vec![
            entry("/home/admin/a", "one", 1),
            entry("/home/admin/a", "three", 3),
            entry("/home/admin/a", "four", 4),
        ]
    );
    assert_eq!(summary(&got_b), vec![entry("/home/admin/b", "two", 2)]);

    // A right revoked while the stream is open: its next emit there is refused
    // and ends the stream; nothing reaches the room.
    admin.revoke("/home/admin/a", "bob").await.unwrap();
    let _ = call.send(emit("/home/admin/a", "five", 5)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), call.next_message())
        .await
        .expect("the stream ends");
    let error = outcome.expect("an outcome").expect_err("refused");
    assert_eq!(error.code(), ErrorCode::PermissionDenied, "{error}");
    admin.emit("/home/admin/a", "marker", vec![]).await.unwrap();
    let next = collect(&mut in_a, 1).await;
    assert_eq!(
        next[0].event, "marker",
        "the refused event was not delivered"
    );
}
