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
/// components, no control or invisible characters, no percent-escapes, no
/// blank at either end of a component; a trailing slash is dropped and the
/// text is put in Unicode NFC, so every spelling of a path either names
/// exactly one resource or is refused (docs/security.md).
pub fn normalize(path: &str) -> Result<String> {
    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
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
    let composed: String;
    let trimmed = if is_nfc_quick(trimmed.chars()) == IsNormalized::Yes {
        trimmed
    } else {
        composed = trimmed.nfc().collect();
        &composed
    };
    // NFC can lengthen text (U+1D15F and kin decompose; at most threefold),
    // so the limit holds for the stored spelling too: a path is never
    // accepted here and refused when it comes back normalised.
    if trimmed.len() > MAX_PATH_BYTES {
        return Err(bad(&format!("longer than {MAX_PATH_BYTES} bytes in NFC")));
    }
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
        if component.chars().any(invisible) {
            return Err(bad(
                "it contains an invisible or direction-changing character",
            ));
        }
        if component.starts_with(char::is_whitespace) || component.ends_with(char::is_whitespace) {
            return Err(bad("a component starts or ends with a blank"));
        }
        if has_percent_escape(component) {
            return Err(bad(
                "it contains a percent-escape ('%2F'): paths are never decoded, write the character itself",
            ));
        }
    }
    if depth > MAX_DEPTH {
        return Err(bad(&format!("deeper than {MAX_DEPTH} components")));
    }
    Ok(trimmed.to_string())
}

/// Format characters that render as nothing or reorder text (zero-width
/// spaces and joiners, bidirectional controls, the BOM, soft hyphen), and
/// line and paragraph separators: two paths that differ only by one of
/// them would look the same.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0000}'..='\u{E0FFF}')
}

fn has_percent_escape(component: &str) -> bool {
    let bytes = component.as_bytes();
    bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
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

/// Whether `name` is 1 to `max` ASCII letters, digits, '_', '-' and '.':
/// a name that stands in paths, subjects and SQL identifiers as it is.
pub fn is_plain_name(name: &str, max: usize) -> bool {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (1..=max).contains(&name.len()) && name.chars().all(plain)
}

/// Identity and group names: 1 to 64 of letters, digits, '_', '-', '.',
/// starting with a letter or digit.
pub fn validate_identity_name(name: &str) -> Result<()> {
    if is_plain_name(name, 64) && name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
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
            ("/a/b\u{200B}", "invisible"),
            ("/a/\u{202E}cod.exe", "invisible"),
            ("/a/\u{FEFF}b", "invisible"),
            ("/a/ b", "blank"),
            ("/a/b ", "blank"),
            ("/a/b%2Fc", "percent"),
            ("/a/%2e%2e", "percent"),
            ("/a/\0b", "control"),
        ] {
            let err = normalize(bad).unwrap_err();
            assert!(err.message.contains(why), "{bad:?}: {}", err.message);
        }
        assert!(normalize("/a/100%").is_ok(), "a bare % is a character");
        assert!(normalize(&format!("/{}", "x".repeat(300))).is_err());
        assert!(normalize(&format!("/{}", "a/".repeat(600))).is_err());
        assert!(normalize(&"/a".repeat(40)).is_err());
    }

    #[test]
    fn two_spellings_of_one_name_are_one_path() {
        let composed = normalize("/home/bob/caf\u{E9}").unwrap();
        let decomposed = normalize("/home/bob/cafe\u{301}/").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed, "/home/bob/caf\u{E9}");
    }

    #[test]
    fn the_length_limit_holds_after_nfc_too() {
        // U+1D15E (4 bytes) is excluded from composition: NFC gives 8 bytes.
        let notes = "\u{1D15E}".repeat(25);
        let path = format!("/{notes}").repeat(10);
        assert!(path.len() <= MAX_PATH_BYTES);
        let err = normalize(&path).unwrap_err();
        assert!(err.message.contains("in NFC"), "{}", err.message);
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
