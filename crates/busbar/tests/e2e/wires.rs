//! Wires as Unix pipes across processes, and their stall rule.

use crate::harness::{Node, assert_error};
use busbar_client::{ErrorCode, ResourceKind};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read, Write};
use std::process::Stdio;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn a_100_mib_pipe_arrives_intact() {
    let (node, admin) = Node::start_with(&[], "/home/admin/pipe", ResourceKind::Wire).await;

    let mut sub = node
        .cli(&["wire", "sub", "/home/admin/pipe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sub_out = sub.stdout.take().unwrap();
    // The CLI says on stderr once it is subscribed: from then on nothing published is missed.
    let mut ready = String::new();
    std::io::BufReader::new(sub.stderr.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.contains("subscribed to /home/admin/pipe"), "{ready}");
    let reader = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut total = 0usize;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = sub_out.read(&mut buffer).unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
            total += n;
        }
        (total, hex::encode(hash.finalize()))
    });
    let mut publisher = node
        .cli(&["wire", "pub", "/home/admin/pipe"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut block = vec![0u8; MIB];
        for _ in 0..100 {
            for word in block.chunks_mut(8) {
                // xorshift: incompressible, reproducible bytes
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            hash.update(&block);
            stdin.write_all(&block).unwrap();
        }
        hex::encode(hash.finalize())
    });
    let sent = writer.join().unwrap();
    assert!(publisher.wait().unwrap().success());
    admin.rm("/home/admin/pipe", false).await.unwrap(); // ends the subscriber's stream
    let (total, received) = reader.join().unwrap();
    assert!(sub.wait().unwrap().success());
    assert_eq!(total, 100 * MIB);
    assert_eq!(received, sent);
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_after_the_stall_timeout() {
    let (node, admin) = Node::start_with(
        &["--wire-queue", "2", "--wire-stall", "0.5"],
        "/home/admin/pipe",
        ResourceKind::Wire,
    )
    .await;
    let mut stalled = node
        .admin()
        .await
        .subscribe("/home/admin/pipe")
        .await
        .unwrap();
    let chunks = futures::stream::iter((0..64).map(|_| bytes::Bytes::from(vec![7u8; 256 * 1024])));
    let summary = admin.publish("/home/admin/pipe", chunks).await.unwrap();
    assert_eq!(
        summary.chunks, 64,
        "the publisher finishes once the stalled reader is cut"
    );
    let error = loop {
        match stalled.next().await {
            Some(Ok(_)) => continue,
            Some(Err(error)) => break error,
            None => panic!("ended without an error"),
        }
    };
    assert_eq!(error.code(), ErrorCode::SlowConsumer, "{error}");
    assert!(
        node.metrics_text()
            .contains("busbar_slow_consumer_drops_total{kind=\"wire\"} 1")
    );
    assert_error(
        admin.subscribe("/home/admin").await,
        ErrorCode::FailedPrecondition,
        "not a wire",
    );
}
