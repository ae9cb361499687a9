//! Resource paths ("/home/bob/chat") and identity names: validation and the
//! small amount of string arithmetic the tree needs.

use crate::error::{Error, Result};

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Deepest accepted path, in components.
pub const MAX_DEPTH: usize = 32;
/// Longest accepted component or identity name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Checks and normalises a resource path: absolute, no empty, "." or ".."
/// components, no control characters; a trailing slash is dropped.
pub fn normalize(path: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::invalid_argument(format!(
            "bad path {path:?}: {why}; paths look like \"/home/bob/chat\""
        ))
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(bad(&format!("longer than {MAX_PATH_BYTES} bytes")));
    }
    if !path.starts_with('/') {
        return Err(bad("it must start with '/'"));
    }
    if path == "/" {
        return Ok("/".to_string());
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let mut depth = 0;
    for component in trimmed[1..].split('/') {
        depth += 1;
        if component.is_empty() {
            return Err(bad("it has an empty component ('//')"));
        }
        if component == "." || component == ".." {
            return Err(bad("'.' and '..' are not allowed"));
        }
        if component.len() > MAX_NAME_BYTES {
            return Err(bad(&format!(
                "a component is longer than {MAX_NAME_BYTES} bytes"
            )));
        }
        if component.chars().any(char::is_control) {
            return Err(bad("it contains a control character"));
        }
    }
    if depth > MAX_DEPTH {
        return Err(bad(&format!("deeper than {MAX_DEPTH} components")));
    }
    Ok(trimmed.to_string())
}

/// The parent of a normalised path; `None` for "/".
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The last component of a normalised path ("" for "/").
pub fn name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// "/" and every ancestor of a normalised path, root first, the path itself last.
pub fn lineage(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    if path == "/" {
        return out;
    }
    for (i, _) in path.match_indices('/').skip(1) {
        out.push(path[..i].to_string());
    }
    out.push(path.to_string());
    out
}

/// Whether `path` is `ancestor` or lies below it.
pub fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// Identity and group names: 1 to 64 of letters, digits, '_', '-', '.',
/// starting with a letter or digit.
pub fn validate_identity_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "bad name {name:?}: use 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_accepts_and_trims() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a/b/").unwrap(), "/a/b");
        assert_eq!(
            normalize("/home/bøb/chat room").unwrap(),
            "/home/bøb/chat room"
        );
    }

    #[test]
    fn normalize_rejects_bad_paths_with_reason() {
        for (bad, why) in [
            ("", "start with '/'"),
            ("home", "start with '/'"),
            ("/a//b", "empty component"),
            ("/a/../b", "'..'"),
            ("/a/./b", "'.'"),
            ("/a/\u{7}", "control character"),
        ] {
            let err = normalize(bad).unwrap_err();
            assert!(err.message.contains(why), "{bad:?}: {}", err.message);
        }
        assert!(normalize(&format!("/{}", "x".repeat(300))).is_err());
        assert!(normalize(&"/a".repeat(40)).is_err());
    }

    #[test]
    fn lineage_parent_name() {
        assert_eq!(lineage("/a/b/c"), vec!["/", "/a", "/a/b", "/a/b/c"]);
        assert_eq!(lineage("/"), vec!["/"]);
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(name("/a/b"), "b");
        assert!(is_within("/a/b", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/anything", "/"));
    }

    #[test]
    fn identity_names() {
        assert!(validate_identity_name("bob_1.x-y").is_ok());
        for bad in ["", "-bob", "bob smith", "bob/x", &"a".repeat(65)] {
            assert!(validate_identity_name(bad).is_err(), "{bad:?}");
        }
    }
}
