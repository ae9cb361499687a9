//! Regenerates `crates/busbar-proto/src/generated/` from `proto/`.
//!
//! Run with `cargo run -p codegen` from the workspace root. The output is
//! checked in so that users need neither protoc nor a build script; CI runs
//! this again and fails when `git diff --exit-code` finds a difference.

use prost::Message;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("proto");
    let out_dir = root.join("crates/busbar-proto/src/generated");
    std::fs::create_dir_all(&out_dir)?;

    let mut files: Vec<String> = std::fs::read_dir(proto_dir.join("busbar/v1"))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("busbar/v1/{name}"))
        .collect();
    files.sort();

    // Reflection needs every file a service refers to, imports included.
    let mut with_imports = protox::Compiler::new([&proto_dir])?;
    with_imports.include_imports(true).include_source_info(true);
    with_imports.open_files(&files)?;
    std::fs::write(
        out_dir.join("busbar_descriptor.bin"),
        with_imports.file_descriptor_set().encode_to_vec(),
    )?;

    // Well-known types (google.protobuf.*) map to prost-types, so only our own
    // package is written out even though the set holds the imports.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `bytes` fields as `bytes::Bytes`: decoding slices the receive buffer instead of copying.
        .bytes(".")
        .out_dir(&out_dir)
        .compile_fds(with_imports.file_descriptor_set())?;
    println!("generated {} files into {}", files.len(), out_dir.display());
    Ok(())
}
