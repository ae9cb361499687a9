//! Embeds the built web console (`web/dist/`, made by `make web`) into the
//! server: writes `$OUT_DIR/console_files.rs`, a table of the files with
//! their bytes (`include_bytes!`) and an ETag each, which `src/console.rs`
//! serves. Without `web/dist/` the table is empty and the node answers `/`
//! with a page saying how to build the console.
//!
//! Only what is in the table is ever served, so no request path reaches the
//! file system at run time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Files larger than this are left out (the console is a few hundred KiB):
/// a stray large file in dist/ should not bloat the binary.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let web = manifest.join("../../web");
    let dist = web.join("dist");
    // A directory is watched recursively. While dist/ is missing, watching
    // web/ notices it appear (a missing watched path would rerun every build).
    if dist.is_dir() {
        println!("cargo:rerun-if-changed={}", dist.display());
    } else if web.is_dir() {
        println!("cargo:rerun-if-changed={}", web.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    if dist.is_dir() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();

    let mut table = String::from(
        "/// The embedded console: (URL path, bytes, ETag), sorted by path.\n\
         pub(crate) static FILES: &[(&str, &[u8], &str)] = &[\n",
    );
    for (url, path) in &files {
        let bytes = std::fs::read(path).expect("reading a console file");
        let path = path.canonicalize().expect("a console file's full path");
        writeln!(
            table,
            "    ({url:?}, include_bytes!({:?}), \"\\\"{:016x}\\\"\"),",
            path.display().to_string(),
            fnv1a(&bytes)
        )
        .expect("writing to a String");
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("console_files.rs"), table).expect("writing console_files.rs");
}

/// Every regular file under `dir` as (URL path from `root`, file path).
/// Names that are not plain UTF-8 path segments are skipped.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect(root, &path, files);
        } else if kind.is_file() && entry.metadata().is_ok_and(|m| m.len() <= MAX_FILE_BYTES) {
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let segments: Option<Vec<&str>> = relative.iter().map(|s| s.to_str()).collect();
            if let Some(segments) = segments {
                files.push((format!("/{}", segments.join("/")), path));
            }
        }
    }
}

/// FNV-1a, 64-bit: a content hash for ETags (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
