//! Authentication over TLS: each method works, each rejection says which.

use crate::harness::{Node, assert_error};
use base64::Engine;
use busbar_client::{Client, ConnectOptions, ErrorCode};
use std::time::Duration;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn password_token_and_key_logins_over_tls() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    let status = admin.status().await.unwrap();
    assert!(status.tls);
    assert_eq!(admin.whoami().await.unwrap().name, "admin");

    let bob = node.new_user(&admin, "bob", "bob-password").await;
    assert_eq!(bob.whoami().await.unwrap().home, "/home/bob");

    let (token, _) = bob.create_token("ci", None).await.unwrap();
    let config = node.config_with(
        "bob-token",
        serde_json::json!({"kind": "token", "token": token}),
    );
    let by_token = Client::from_config_file(&config).await.unwrap();
    assert_eq!(by_token.whoami().await.unwrap().name, "bob");

    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    admin
        .register_key("robot", &b64(key.verifying_key().as_bytes()), false)
        .await
        .unwrap();
    let config = node.config_with(
        "robot",
        serde_json::json!({"kind": "key", "name": "robot", "private_key": b64(&key.to_bytes())}),
    );
    let robot = Client::from_config_file(&config).await.unwrap();
    assert_eq!(robot.whoami().await.unwrap().name, "robot");

    // The CLI's `identity new` writes a config that logs in as the new identity.
    let out = node.dir.path().join("carol.json");
    node.cli_ok(&["identity", "new", "carol", "--out", out.to_str().unwrap()]);
    let carol = Client::from_config_file(&out).await.unwrap();
    assert_eq!(carol.whoami().await.unwrap().name, "carol");

    // Pinning the server certificate alone (no CA) is enough too.
    let admin_json = node.admin_json();
    let pinned = ConnectOptions::new(node.address.clone())
        .server_name("localhost")
        .pin_fingerprint(admin_json["server_fingerprint_sha256"].as_str().unwrap())
        .password("bob", "bob-password")
        .connect()
        .await
        .unwrap();
    assert_eq!(pinned.whoami().await.unwrap().name, "bob");
}

#[tokio::test]
async fn each_rejection_says_which_and_what_to_do() {
    let (node, admin, bob) = Node::start_with_user("bob", "bob-password").await;
    let unauthenticated = ErrorCode::Unauthenticated;

    let wrong_password = node.user("bob", "not-the-password").await;
    let unknown_user = node.user("nobody", "not-the-password").await;
    assert_error(
        wrong_password.clone(),
        unauthenticated,
        "wrong user name or password",
    );
    assert_eq!(
        wrong_password.err().unwrap().message(),
        unknown_user.err().unwrap().message(),
        "the reply must not tell which users exist"
    );

    let token_login = |token: String| {
        let config = node.config_with("t", serde_json::json!({"kind": "token", "token": token}));
        async move { Client::from_config_file(config).await }
    };
    assert_error(
        token_login("bbt_not-a-real-token".into()).await,
        unauthenticated,
        "unknown API token",
    );

    let (token, _) = bob.create_token("ci", None).await.unwrap();
    let by_token = token_login(token.clone()).await.unwrap();
    bob.revoke_token("ci").await.unwrap();
    assert_error(token_login(token).await, unauthenticated, "revoked");
    // A session that came from the revoked token ends too.
    assert_error(by_token.whoami().await, unauthenticated, "revoked");

    let (short, _) = bob
        .create_token("short", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let by_short = token_login(short.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_error(token_login(short).await, unauthenticated, "expired");
    // The session that came from it ends with it.
    assert_error(by_short.whoami().await, unauthenticated, "expired");

    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let key_config = |name: &str, key: &ed25519_dalek::SigningKey| {
        node.config_with(
            name,
            serde_json::json!({"kind": "key", "name": name, "private_key": b64(&key.to_bytes())}),
        )
    };
    assert_error(
        Client::from_config_file(key_config("ghost", &key)).await,
        unauthenticated,
        "no key identity named ghost",
    );
    admin
        .register_key("robot", &b64(key.verifying_key().as_bytes()), false)
        .await
        .unwrap();
    let other = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    assert_error(
        Client::from_config_file(key_config("robot", &other)).await,
        unauthenticated,
        "bad signature",
    );

    admin.revoke_identity("bob").await.unwrap();
    assert_error(
        node.user("bob", "bob-password").await,
        unauthenticated,
        "revoked",
    );
    assert_error(bob.whoami().await, unauthenticated, "revoked");
}

#[tokio::test]
async fn transport_mistakes_get_a_clear_error() {
    let node = Node::start(&[]);
    let plain = node.address.replace("https://", "http://");
    let result = ConnectOptions::new(plain)
        .password("admin", "x")
        .connect()
        .await;
    assert_error(result, ErrorCode::Unavailable, "requires TLS");

    let other_ca = "-----BEGIN CERTIFICATE-----\nMIIBZjCCAQ2gAwIBAgIUQ0DjI7zgsG0D4w3zqvkG8v1Wm0QwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";
    let result = ConnectOptions::new(node.address.clone())
        .ca_pem(other_ca)
        .connect()
        .await;
    assert_eq!(
        result.err().unwrap().code(),
        ErrorCode::InvalidArgument,
        "a broken CA is bad input"
    );

    let wrong_pin = ConnectOptions::new(node.address.clone())
        .server_name("localhost")
        .pin_fingerprint("00".repeat(32))
        .password("admin", "x")
        .connect()
        .await;
    assert_error(wrong_pin, ErrorCode::Unavailable, "fingerprint");

    let insecure = Node::start(&["--insecure"]);
    assert!(insecure.address.starts_with("http://"));
    let admin = insecure.admin().await;
    assert!(!admin.status().await.unwrap().tls);
    let tls_to_plain = ConnectOptions::new(insecure.address.replace("http://", "https://"))
        .pin_fingerprint("00".repeat(32))
        .password("admin", "x")
        .connect()
        .await;
    assert_error(tls_to_plain, ErrorCode::Unavailable, "cannot reach");
}

#[tokio::test]
async fn session_token_is_required_and_checked() {
    let node = Node::start(&[]);
    // A client with no credential can reach the node but not call busbar methods.
    let anonymous = ConnectOptions::new(node.address.clone())
        .ca_pem(node.admin_json()["ca_pem"].as_str().unwrap())
        .server_name("localhost")
        .connect()
        .await;
    assert_error(anonymous, ErrorCode::Unauthenticated, "needs credentials");

    // Short sessions are renewed by the client before they expire.
    let short = Node::start(&["--session-ttl", "10"]);
    let admin = short.admin().await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(admin.whoami().await.unwrap().name, "admin");
}
