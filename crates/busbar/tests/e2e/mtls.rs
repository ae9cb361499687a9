//! Client certificates (mTLS) as a credential: issued by the node's CA,
//! refused in the handshake when from another CA, out of date or revoked,
//! and required of every connection when the node says so.

use crate::harness::{Node, assert_denied, assert_error};
use busbar_client::proto::{IdentityKind, IssueCertificateRequest};
use busbar_client::{Client, ConnectOptions, ErrorCode};
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use std::path::Path;

/// `busbar identity ARGS...` as the admin; panics with its stderr on failure.
fn identity_cli(node: &Node, args: &[&str]) -> String {
    let mut all = vec!["identity"];
    all.extend_from_slice(args);
    node.cli_ok(&all)
}

fn credential_of(config: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(config).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["credential"].clone()
}

/// A client certificate for `name` over a fresh key, signed by `issuer`
/// with the given validity; returns (certificate PEM, key PEM).
fn forged(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A CA that is not the node's.
fn stranger_ca() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Busbar node CA");
    Issuer::new(params, key)
}

/// The node's own CA, from its data directory (as an attacker who stole a
/// certificate, not the key, could not do; here it makes expired ones).
fn node_ca(node: &Node) -> Issuer<'static, KeyPair> {
    let tls = node.dir.path().join("data").join("tls");
    let key = KeyPair::from_pem(&std::fs::read_to_string(tls.join("ca.key")).unwrap()).unwrap();
    Issuer::new(busbar_server::tls::ca_params().unwrap(), key)
}

async fn connect_with(node: &Node, certificate: &str, key: &str) -> busbar_client::Result<Client> {
    let admin = node.admin_json();
    ConnectOptions::new(node.address.clone())
        .ca_pem(admin["ca_pem"].as_str().unwrap())
        .certificate(certificate, key)
        .connect()
        .await
}

#[tokio::test]
async fn a_certificate_identity_logs_in_renews_and_is_revoked() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    let out = node.dir.path().join("dev.json");
    identity_cli(
        &node,
        &[
            "new",
            "dev",
            "--cert",
            "--days",
            "7",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(credential_of(&out)["kind"], "certificate");
    let dev = Client::from_config_file(&out).await.unwrap();
    let me = dev.whoami().await.unwrap();
    assert_eq!(
        (me.name.as_str(), me.kind()),
        ("dev", IdentityKind::Certificate)
    );
    assert_eq!(me.home, "/home/dev");
    // The session lives no longer than the certificate.
    dev.refresh().await.unwrap();

    let listed = admin.certificates("dev").await.unwrap();
    assert_eq!(listed.len(), 1);
    let first = listed[0].clone();
    assert!(!first.revoked);
    let week_ms = 7 * 86_400_000;
    assert!((first.expires_ms - first.created_ms - week_ms).abs() < 600_000);
    let printed = identity_cli(&node, &["certs", "dev"]);
    assert!(
        printed.contains(&first.fingerprint) && printed.contains("live"),
        "{printed}"
    );

    // A second certificate (a renewal) works beside the first.
    let renewed = node.dir.path().join("dev2.json");
    identity_cli(&node, &["cert", "dev", "--out", renewed.to_str().unwrap()]);
    let dev2 = Client::from_config_file(&renewed).await.unwrap();
    assert_eq!(dev2.whoami().await.unwrap().name, "dev");

    // Revoking the first: its session ends and a new handshake is refused
    // by name; the renewed one is untouched.
    identity_cli(&node, &["revoke-cert", &first.fingerprint]);
    assert_error(
        dev.whoami().await,
        ErrorCode::Unauthenticated,
        "has been revoked",
    );
    assert_error(
        Client::from_config_file(&out).await,
        ErrorCode::Unauthenticated,
        "the node refused this client certificate: it has been revoked",
    );
    // The node logs the refusal as the handshake ends: the client may read
    // the alert a moment before the line is written.
    let mut logged = false;
    for _ in 0..100 {
        logged = node.log().contains("refused the client certificate");
        if logged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(logged, "the node logged no refusal");
    assert_eq!(dev2.whoami().await.unwrap().name, "dev");
    let printed = identity_cli(&node, &["certs", "dev"]);
    assert!(printed.contains("revoked"), "{printed}");

    // Revoking the identity revokes every certificate it holds.
    admin.revoke_identity("dev").await.unwrap();
    assert_error(
        Client::from_config_file(&renewed).await,
        ErrorCode::Unauthenticated,
        "has been revoked",
    );

    // Revocations outlive a restart of the node.
    let mut node = node;
    node.restart();
    assert_error(
        Client::from_config_file(&out).await,
        ErrorCode::Unauthenticated,
        "has been revoked",
    );
}

#[tokio::test]
async fn certificates_of_another_ca_or_out_of_date_are_refused_in_the_handshake() {
    let node = Node::start(&[]);
    let (stranger, ca) = (stranger_ca(), node_ca(&node));
    for (issuer, (not_before, not_after), words) in [
        (
            &stranger,
            ((2025, 1, 1), (2035, 1, 1)),
            "it was not issued by this node's CA",
        ),
        (
            &ca,
            ((2020, 1, 1), (2021, 1, 1)),
            "it has expired or is not yet valid",
        ),
        (
            &ca,
            ((2090, 1, 1), (2091, 1, 1)),
            "it has expired or is not yet valid",
        ),
        // Signed by the node's CA but never issued through it: no identity.
        (&ca, ((2025, 1, 1), (2035, 1, 1)), "names no identity here"),
    ] {
        let (cert, key) = forged(issuer, "admin", not_before, not_after);
        assert_error(
            connect_with(&node, &cert, &key).await,
            ErrorCode::Unauthenticated,
            words,
        );
    }
    // A key that does not match the certificate is caught before dialling.
    let (cert, _) = forged(&ca, "admin", (2025, 1, 1), (2035, 1, 1));
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    assert_error(
        connect_with(&node, &cert, &other_key).await,
        ErrorCode::InvalidArgument,
        "do not go together",
    );
    // None of it disturbed the node.
    node.admin().await.status().await.unwrap();
}

#[tokio::test]
async fn a_node_can_require_certificates_of_every_connection() {
    let node = Node::start(&["--client-certs", "required"]);
    // admin.json carries a certificate of its own, and logs in with its password.
    let admin_json = node.admin_json();
    assert!(admin_json["client_certificate"]["certificate_pem"].is_string());
    assert_eq!(admin_json["credential"]["kind"], "password");
    let admin = node.admin().await;
    admin
        .create_user("bob", "bob-password", false)
        .await
        .unwrap();

    // Without a certificate, a right password does not get through.
    let mut bare = admin_json.clone();
    bare.as_object_mut().unwrap().remove("client_certificate");
    bare["credential"] =
        serde_json::json!({"kind": "password", "user": "bob", "password": "bob-password"});
    let bare_path = node.dir.path().join("bare.json");
    std::fs::write(&bare_path, bare.to_string()).unwrap();
    assert_error(
        Client::from_config_file(&bare_path).await,
        ErrorCode::Unauthenticated,
        "the node requires a client certificate",
    );

    // A certificate presented beside a password: the password picks the identity.
    let out = node.dir.path().join("laptop.json");
    identity_cli(
        &node,
        &["new", "laptop", "--cert", "--out", out.to_str().unwrap()],
    );
    let laptop = credential_of(&out);
    let bob = ConnectOptions::new(node.address.clone())
        .ca_pem(admin_json["ca_pem"].as_str().unwrap())
        .client_certificate(
            laptop["certificate_pem"].as_str().unwrap(),
            laptop["private_key_pem"].as_str().unwrap(),
        )
        .password("bob", "bob-password")
        .connect()
        .await
        .unwrap();
    assert_eq!(bob.whoami().await.unwrap().name, "bob");
    // The certificate alone logs in as its own identity.
    let laptop = Client::from_config_file(&out).await.unwrap();
    assert_eq!(laptop.whoami().await.unwrap().name, "laptop");

    // A restart keeps admin.json's certificate while it is live.
    let before = admin_json["client_certificate"].clone();
    let mut node = node;
    node.restart();
    assert_eq!(node.admin_json()["client_certificate"], before);
    node.admin().await.status().await.unwrap();
}

#[tokio::test]
async fn bad_certificate_requests_change_nothing() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    let key = KeyPair::generate().unwrap().subject_public_key_info();
    let request = |name: &str, public_key: Vec<u8>, days: u32| IssueCertificateRequest {
        name: name.into(),
        public_key: public_key.into(),
        days,
        create: true,
        admin: false,
    };
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .unwrap()
        .subject_public_key_info();
    for (bad, code, says) in [
        (
            request("c1", b"not a key".to_vec(), 0),
            ErrorCode::InvalidArgument,
            "bad public_key",
        ),
        (
            request("c2", p384, 0),
            ErrorCode::InvalidArgument,
            "bad public_key",
        ),
        (
            request("c3", key.clone(), 5000),
            ErrorCode::InvalidArgument,
            "bad days 5000",
        ),
        (
            request("bad name", key.clone(), 0),
            ErrorCode::InvalidArgument,
            "name",
        ),
        (
            request("admin", key.clone(), 0),
            ErrorCode::AlreadyExists,
            "already exists",
        ),
    ] {
        assert_error(admin.issue_certificate(bad).await, code, says);
    }
    let mut renew_missing = request("ghost", key.clone(), 0);
    renew_missing.create = false;
    assert_error(
        admin.issue_certificate(renew_missing).await,
        ErrorCode::NotFound,
        "no identity named ghost",
    );
    let identities = admin.identities().await.unwrap();
    let names: Vec<&str> = identities.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["admin"], "a refused request created nothing");
    assert!(admin.certificates("admin").await.unwrap().is_empty());

    assert_error(
        admin.revoke_certificate("zz").await,
        ErrorCode::InvalidArgument,
        "bad fingerprint",
    );
    assert_error(
        admin.revoke_certificate(&"ab".repeat(32)).await,
        ErrorCode::NotFound,
        "no certificate with fingerprint",
    );

    // Only an admin of / issues, lists and revokes certificates.
    let bob = node.new_user(&admin, "bob", "bob-password").await;
    assert_denied(
        bob.issue_certificate(request("mine", key, 0)).await,
        "issuing client certificates",
    );
    assert_denied(bob.certificates("bob").await, "listing client certificates");
    assert_denied(
        bob.revoke_certificate(&"ab".repeat(32)).await,
        "revoking client certificates",
    );
}

#[tokio::test]
async fn client_cert_settings_are_checked_at_start() {
    for (flags, says) in [
        (
            &["--client-certs", "sometimes"][..],
            "bad client_certs \"sometimes\"",
        ),
        (
            &["--client-certs", "required", "--insecure"][..],
            "needs TLS",
        ),
    ] {
        let said = crate::harness::serve_refused(flags);
        assert!(said.contains(says), "{flags:?}: {said}");
    }
    // A plaintext node has no CA to issue from.
    let (_node, admin) = Node::start_with_admin(&["--insecure"]).await;
    let key = KeyPair::generate().unwrap().subject_public_key_info();
    assert_error(
        admin
            .issue_certificate(IssueCertificateRequest {
                name: "dev".into(),
                public_key: key.into(),
                create: true,
                ..Default::default()
            })
            .await,
        ErrorCode::FailedPrecondition,
        "serves plaintext",
    );
}
