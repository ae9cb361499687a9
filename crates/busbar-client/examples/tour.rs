//! A tour of the Rust client: run it next to a node started with `make run`.
//! cargo run -p busbar-client --example tour [path/to/admin.json]
use busbar_client::{Client, ResourceKind, RoomEventKind};
use futures::StreamExt;

#[tokio::main]
async fn main() -> busbar_client::Result<()> {
    let config = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "busbar-data/admin.json".into());
    // One file holds the address, the CA to trust and the credential.
    let client = Client::from_config_file(&config).await?;
    println!("connected to busbar {}", client.status().await?.version);

    // A room: join (a Stream of events), emit, receive.
    client
        .create("/home/admin/tour-room", ResourceKind::Room, false)
        .await?;
    let mut room = client.join("/home/admin/tour-room").await?;
    room.emit("greeting", vec!["hello".into(), 42.into()])
        .await?;
    if let Some(event) = room.next().await {
        let event = event?;
        println!("{} sent {} {:?}", event.sender, event.event, event.args);
    }

    // Any RPC by name, JSON in and out.
    let listing = client
        .call(
            "busbar.v1.Resources/List",
            serde_json::json!({"path": "/home/admin"}),
        )
        .await?;
    println!(
        "{} resources in /home/admin",
        listing["resources"].as_array().map_or(0, Vec::len)
    );

    // Typed errors with stable codes.
    let error = client.get("/home/admin/missing").await.unwrap_err();
    println!("{:?}: {}", error.code(), error.message());

    client.rm("/home/admin/tour-room", false).await?;
    if let Some(Ok(event)) = room.next().await {
        assert_eq!(event.kind, RoomEventKind::Deleted);
    }
    Ok(())
}
