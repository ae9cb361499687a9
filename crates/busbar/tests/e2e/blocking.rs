//! The blocking client: the same names as the async one, iterators for streams.

use crate::harness::Node;
use busbar_client::{ErrorCode, ResourceKind, RoomEventKind, blocking};

#[test]
fn blocking_client_covers_calls_rooms_and_wires_from_many_threads() {
    let node = Node::start(&[]);
    let client = blocking::Client::from_config_file(&node.admin_config).unwrap();
    assert!(client.status().unwrap().tls);
    client
        .create("/home/admin/chat", ResourceKind::Room, false)
        .unwrap();
    client
        .create("/home/admin/pipe", ResourceKind::Wire, false)
        .unwrap();

    let mut room = client.join("/home/admin/chat").unwrap();
    // One client shared by threads: each emits its own events.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    client
                        .emit("/home/admin/chat", "n", vec![serde_json::json!([t, i])])
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut seen = std::collections::HashMap::<i64, Vec<i64>>::new();
    for event in room.by_ref().take(100) {
        let args = event.unwrap().args;
        let pair = args[0].as_array().unwrap().clone();
        seen.entry(pair[0].as_i64().unwrap())
            .or_default()
            .push(pair[1].as_i64().unwrap());
    }
    for t in 0..4 {
        assert_eq!(
            seen[&t],
            (0..25).collect::<Vec<_>>(),
            "thread {t}'s events in order"
        );
    }
    let emitter = client.emitter("/home/admin/chat");
    for i in 0..10 {
        emitter.emit("streamed", vec![i.into()]).unwrap();
    }
    assert_eq!(emitter.finish().unwrap().events, 10);
    let streamed: Vec<i64> = room
        .by_ref()
        .take(10)
        .map(|e| e.unwrap().args[0].as_i64().unwrap())
        .collect();
    assert_eq!(streamed, (0..10).collect::<Vec<_>>());
    room.leave().unwrap();
    assert_eq!(room.next().unwrap().unwrap().kind, RoomEventKind::Left);

    let chunks = client.subscribe("/home/admin/pipe").unwrap();
    let sent: Vec<bytes::Bytes> = (0..10u8)
        .map(|i| bytes::Bytes::from(vec![i; 1000]))
        .collect();
    let summary = client.publish("/home/admin/pipe", sent.clone()).unwrap();
    assert_eq!(summary.bytes, 10_000);
    let received: Vec<bytes::Bytes> = chunks.take(10).map(Result::unwrap).collect();
    assert_eq!(received, sent);

    let listing = client
        .call(
            "busbar.v1.Resources/List",
            serde_json::json!({"path": "/home/admin"}),
        )
        .unwrap();
    assert_eq!(listing["resources"].as_array().unwrap().len(), 2);
    let mut events = client
        .stream("busbar.v1.Node/Events", Some(serde_json::json!({})))
        .unwrap();
    assert_eq!(events.next().unwrap().unwrap()["kind"], "READY");
    assert_eq!(client.get("/nope").unwrap_err().code(), ErrorCode::NotFound);
}

#[test]
fn config_flag_works_before_and_after_the_subcommand() {
    let node = Node::start(&[]);
    let config = node.admin_config.to_str().unwrap();
    for args in [
        vec!["--config", config, "ls", "/home"],
        vec!["ls", "/home", "--config", config],
    ] {
        let mut command = std::process::Command::new(crate::harness::BUSBAR);
        command.args(&args);
        assert!(crate::harness::succeeded(&args, command).contains("/home/admin"));
    }
    let token = node.cli(&["token", "create", "scripted"]).output().unwrap();
    let stdout = String::from_utf8(token.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    assert!(
        stdout.starts_with("bbt_"),
        "only the token on stdout: {stdout:?}"
    );
}
