//! Every RPC of every busbar service, called by an identity without rights,
//! is refused before it does anything, and the same way whether the
//! resource it names exists or not. The method list comes from the
//! descriptors the node serves through reflection, so a new RPC is tested
//! the day it is added: it is refused like the rest, or it must be put in
//! `OPEN_TO_EVERY_IDENTITY` with what it answers.

use crate::harness::Node;
use busbar_client::{Client, ErrorCode, MethodKind, ResourceKind};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor, MethodDescriptor};
use std::time::Duration;

/// Methods any authenticated identity may call (about itself, or the node),
/// grouped by what each answers to eve's request below.
const OPEN_TO_EVERY_IDENTITY: &[(ErrorCode, &[&str])] = &[
    (
        ErrorCode::Unspecified,
        &[
            "busbar.v1.Auth/Challenge",
            "busbar.v1.Auth/Refresh",
            "busbar.v1.Auth/WhoAmI",
            "busbar.v1.Node/Status",
            "busbar.v1.Node/Events",
            "busbar.v1.Sessions/Open",
        ],
    ),
    // A login with a made-up credential.
    (ErrorCode::Unauthenticated, &["busbar.v1.Auth/Login"]),
    (
        ErrorCode::NotFound,
        &[
            "busbar.v1.Sessions/KeepAlive",
            "busbar.v1.Sessions/Commit",
            "busbar.v1.Sessions/Rollback",
            "busbar.v1.Rooms/Leave",
        ],
    ),
    // Any identity may offer; the rights are checked per service offered
    // (tests/e2e/mesh.rs). Eve's offer names no valid service.
    (ErrorCode::InvalidArgument, &["busbar.v1.Mesh/Provide"]),
];

/// What eve puts in a string field: the target path, the admin's identity
/// name, or a plain value.
fn fill(field: &str, path: &str) -> String {
    match field {
        "path" | "paths" | "database" | "from" | "to" => path.to_string(),
        "name" | "user" | "identity" | "group" | "principal" => "admin".into(),
        "password" => "a-long-password".into(),
        _ => "x-value".into(),
    }
}

fn request(method: &MethodDescriptor, path: &str) -> serde_json::Value {
    message(&method.input(), path, 0)
}

/// A message with every string field filled (see [`fill`]), every enum set
/// to its first real value, nested messages filled alike, and one member
/// of each oneof: a request that passes validation, so a refusal comes
/// from the rights check.
fn message(descriptor: &MessageDescriptor, path: &str, depth: usize) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    let mut oneofs_seen = Vec::new();
    for field in descriptor.fields() {
        if let Some(oneof) = field.containing_oneof() {
            if oneofs_seen.contains(&oneof.name().to_string()) {
                continue;
            }
            oneofs_seen.push(oneof.name().to_string());
        }
        let value: serde_json::Value = match field.kind() {
            Kind::String => fill(field.name(), path).into(),
            Kind::Enum(kind) => match kind.values().find(|v| v.number() != 0) {
                Some(value) => value.name().into(),
                None => continue,
            },
            // Nested requests (a write's header) are filled too; maps,
            // google.protobuf values and optional extras (a series spec on
            // Create) stay empty.
            Kind::Message(nested)
                if depth < 3
                    && !field.is_map()
                    && !nested.full_name().starts_with("google.protobuf")
                    && (field.containing_oneof().is_some() || depth > 0) =>
            {
                message(&nested, path, depth + 1)
            }
            _ => continue,
        };
        let value = if field.is_list() {
            serde_json::Value::Array(vec![value])
        } else {
            value
        };
        object.insert(field.name().to_string(), value);
    }
    serde_json::Value::Object(object)
}

/// The code a call ends with (Unspecified: it succeeded, or a stream is
/// still open after a moment) and its message.
async fn outcome(client: &Client, method: &MethodDescriptor, path: &str) -> (ErrorCode, String) {
    let name = format!("{}/{}", method.parent_service().full_name(), method.name());
    let body = request(method, path);
    let result = if !method.is_client_streaming() && !method.is_server_streaming() {
        client.call(&name, body).await.map(|_| ())
    } else {
        match client.stream(&name, Some(body)).await {
            Err(error) => Err(error),
            Ok(mut call) => {
                if matches!(
                    call.kind(),
                    MethodKind::ClientStreaming | MethodKind::BidiStreaming
                ) {
                    call.close_send();
                }
                match tokio::time::timeout(Duration::from_secs(2), call.next_message()).await {
                    Ok(Some(Err(error))) => Err(error),
                    _ => Ok(()),
                }
            }
        }
    };
    match result {
        Ok(()) => (ErrorCode::Unspecified, String::new()),
        Err(error) => (error.code(), error.message().to_string()),
    }
}

#[tokio::test]
async fn every_rpc_refuses_an_identity_without_rights_and_reveals_nothing() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    let mut existing = Vec::new();
    for (path, kind) in [
        ("/home/admin/db", ResourceKind::Database),
        ("/home/admin/room", ResourceKind::Room),
        ("/home/admin/wire", ResourceKind::Wire),
        ("/home/admin/folder", ResourceKind::Folder),
    ] {
        admin.create(path, kind, false).await.unwrap();
        existing.push(path);
    }
    admin
        .create_series(
            "/home/admin/series",
            &busbar_client::SeriesSpec::new(busbar_client::Resolution::Breakpoint),
            false,
        )
        .await
        .unwrap();
    existing.push("/home/admin/series");
    let eve = node.new_user(&admin, "eve", "eve-password").await;

    let pool = DescriptorPool::decode(busbar_proto::FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<MethodDescriptor> = pool
        .services()
        .filter(|s| s.package_name() == "busbar.v1")
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect();
    assert!(methods.len() >= 40, "only {} methods found", methods.len());
    let mut failures = Vec::new();
    for method in &methods {
        let name = format!("{}/{}", method.parent_service().full_name(), method.name());
        let missing = outcome(&eve, method, "/home/admin/nothing-here").await;
        let open = OPEN_TO_EVERY_IDENTITY
            .iter()
            .find(|(_, methods)| methods.contains(&name.as_str()));
        if let Some((expected, _)) = open {
            if *expected != missing.0 {
                failures.push(format!("{name}: {:?} {}", missing.0, missing.1));
            }
            continue;
        }
        if missing.0 != ErrorCode::PermissionDenied {
            failures.push(format!(
                "{name} (missing path): {:?} {}",
                missing.0, missing.1
            ));
            continue;
        }
        for path in &existing {
            let found = outcome(&eve, method, path).await;
            let same = found.0 == missing.0
                && found.1.replace(path, "PATH")
                    == missing.1.replace("/home/admin/nothing-here", "PATH");
            if !same {
                failures.push(format!(
                    "{name} tells {path} from a missing path: {:?} {:?} vs {:?} {:?}",
                    found.0, found.1, missing.0, missing.1
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing eve asked for happened.
    assert!(admin.ls("/home/admin", false).await.unwrap().len() == existing.len());
    assert!(admin.get("/home/admin/nothing-here").await.is_err());
}
