//! The resource tree and permissions.

use crate::harness::{Node, assert_denied, assert_error};
use busbar_client::{ErrorCode, ResourceKind, Right};

#[tokio::test]
async fn tree_operations() {
    let (_node, admin) = Node::start_with_admin(&[]).await;
    let chat = admin
        .create("/projects/a/chat", ResourceKind::Room, true)
        .await
        .unwrap();
    admin
        .create("/projects/a/pipe", ResourceKind::Wire, false)
        .await
        .unwrap();
    let paths =
        |list: Vec<busbar_client::Resource>| list.into_iter().map(|r| r.path).collect::<Vec<_>>();
    assert_eq!(
        paths(admin.ls("/projects", false).await.unwrap()),
        ["/projects/a"]
    );
    assert_eq!(
        paths(admin.ls("/projects", true).await.unwrap()),
        ["/projects/a", "/projects/a/chat", "/projects/a/pipe"]
    );
    assert_error(
        admin.mkdir("/projects/a", false).await,
        ErrorCode::AlreadyExists,
        "already exists",
    );
    assert_error(
        admin.mkdir("/x/y", false).await,
        ErrorCode::NotFound,
        "parent folder /x does not exist",
    );
    assert_error(
        admin.rm("/projects", false).await,
        ErrorCode::FailedPrecondition,
        "not empty",
    );

    let moved = admin.mv("/projects/a", "/projects/b").await.unwrap();
    assert_eq!(moved.path, "/projects/b");
    assert_eq!(
        admin.get("/projects/b/chat").await.unwrap().id,
        chat.id,
        "ids survive moves"
    );
    assert_error(
        admin.get("/projects/a/chat").await,
        ErrorCode::NotFound,
        "does not exist",
    );
    assert_eq!(admin.rm("/projects", true).await.unwrap(), 4);
    // Where a service belongs, it is made; elsewhere or under a bad name it
    // is refused, as is a series without its definition.
    admin
        .create("/services/mesh.demo.Echo", ResourceKind::Service, false)
        .await
        .unwrap();
    for (path, kind, words) in [
        (
            "/home/admin/service",
            ResourceKind::Service,
            "a service lives at /services/<protobuf full name>",
        ),
        (
            "/services/not a name",
            ResourceKind::Service,
            "bad service name",
        ),
        (
            "/home/admin/series",
            ResourceKind::Timeseries,
            "needs a definition",
        ),
    ] {
        assert_error(
            admin.create(path, kind, false).await,
            ErrorCode::InvalidArgument,
            words,
        );
    }
    assert!(admin.get("/home/admin/series").await.is_err());
}

#[tokio::test]
async fn permissions_are_denied_and_inherited() {
    let (node, admin) = Node::start_with_admin(&[]).await;
    let bob = node.new_user(&admin, "bob", "bob-password").await;
    let carol = node.new_user(&admin, "carol", "carol-password").await;
    admin
        .create("/shared/team/chat", ResourceKind::Room, true)
        .await
        .unwrap();

    // Own home: full rights; elsewhere: nothing until granted.
    bob.mkdir("/home/bob/notes", false).await.unwrap();
    assert_denied(bob.ls("/shared", false).await, "bob lacks read on /shared");
    assert_denied(
        bob.ls("/home/carol", false).await,
        "lacks read on /home/carol",
    );
    // No hint whether a path exists without rights on it.
    assert_denied(bob.get("/shared/nothing-here").await, "lacks read");

    // A grant on /shared is inherited by everything below it.
    admin.grant("/shared", "bob", Right::Read).await.unwrap();
    assert_eq!(
        bob.get("/shared/team/chat").await.unwrap().path,
        "/shared/team/chat"
    );
    assert_denied(
        bob.mkdir("/shared/team/new", false).await,
        "bob lacks write on /shared/team",
    );
    assert_denied(
        bob.emit("/shared/team/chat", "hi", vec![]).await,
        "lacks write on /shared/team/chat",
    );
    let effective = admin.grants("/shared/team/chat", true).await.unwrap();
    assert!(
        effective
            .iter()
            .any(|g| g.principal == "bob" && g.path == "/shared")
    );

    // Groups.
    admin.add_group_member("team", "carol").await.unwrap();
    admin
        .grant("/shared/team", "group:team", Right::Write)
        .await
        .unwrap();
    carol.mkdir("/shared/team/carols", false).await.unwrap();
    assert_denied(
        carol.ls("/shared", false).await,
        "carol lacks read on /shared",
    );

    // Revoking takes effect at once.
    admin.revoke("/shared", "bob").await.unwrap();
    assert_denied(bob.get("/shared/team/chat").await, "lacks read");

    // Only admins of a resource grant on it; only admins of / manage identities.
    assert_denied(
        bob.grant("/shared", "bob", Right::Admin).await,
        "lacks admin on /shared",
    );
    assert_denied(
        bob.create_user("eve", "eve-password", false).await,
        "admin on /",
    );
    assert_error(
        admin.grant("/shared", "nobody", Right::Read).await,
        ErrorCode::NotFound,
        "no identity named nobody",
    );
}
