//! PostgreSQL statement text, read the way PostgreSQL reads it: quoted
//! strings (`'…'`, `E'…'`, `$tag$…$tag$`), quoted names, and comments
//! (`--`, nested `/* */`) are skipped, so a `;` or `:name` inside them
//! means nothing. Used to split a procedure's body into statements and to
//! turn `:name` parameters (the embedded node's spelling, kept so SQL moves
//! over unchanged) into PostgreSQL's `$n`.

use crate::error::{Error, Result};

/// A piece of statement text outside strings, names and comments.
#[derive(Debug, PartialEq)]
enum Mark {
    /// A `;` ending a statement, at this byte.
    End(usize),
    /// `:name`: the range of the whole mark (colon included) and the name.
    Named(std::ops::Range<usize>, String),
    /// `$n`, PostgreSQL's own positional parameter.
    Positional(u32),
}

fn marks(sql: &str) -> Result<Vec<Mark>> {
    let bytes = sql.as_bytes();
    let mut marks = Vec::new();
    let mut at = 0;
    let unterminated =
        |what: &str| Error::invalid_argument(format!("SQL error: unterminated {what}"));
    let word = |from: usize| {
        let mut end = from;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        end
    };
    while at < bytes.len() {
        match bytes[at] {
            b'\'' => {
                // E'…' strings take backslash escapes; standard ones do not.
                let escapes = at > 0
                    && matches!(bytes[at - 1], b'e' | b'E')
                    && (at < 2
                        || !(bytes[at - 2].is_ascii_alphanumeric() || bytes[at - 2] == b'_'));
                at += 1;
                loop {
                    match bytes.get(at) {
                        None => return Err(unterminated("string")),
                        Some(b'\\') if escapes => at += 2,
                        Some(b'\'') if bytes.get(at + 1) == Some(&b'\'') => at += 2,
                        Some(b'\'') => break,
                        Some(_) => at += 1,
                    }
                }
                at += 1;
            }
            b'"' => {
                at += 1;
                loop {
                    match bytes.get(at) {
                        None => return Err(unterminated("quoted name")),
                        Some(b'"') if bytes.get(at + 1) == Some(&b'"') => at += 2,
                        Some(b'"') => break,
                        Some(_) => at += 1,
                    }
                }
                at += 1;
            }
            b'-' if bytes.get(at + 1) == Some(&b'-') => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
            }
            b'/' if bytes.get(at + 1) == Some(&b'*') => {
                let mut depth = 0;
                loop {
                    match (bytes.get(at), bytes.get(at + 1)) {
                        (None, _) => return Err(unterminated("comment")),
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            at += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            at += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => at += 1,
                    }
                }
            }
            b'$' if bytes.get(at + 1).is_some_and(u8::is_ascii_digit) => {
                let end = word(at + 1);
                let number = sql[at + 1..end].parse().map_err(|_| {
                    Error::invalid_argument(format!("bad parameter {}", &sql[at..end]))
                })?;
                marks.push(Mark::Positional(number));
                at = end;
            }
            b'$' if at == 0
                || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') =>
            {
                // A dollar quote: $tag$ … $tag$ (the tag may be empty).
                let tag_end = word(at + 1);
                if bytes.get(tag_end) != Some(&b'$') {
                    at += 1;
                    continue;
                }
                let tag = &sql[at..=tag_end];
                let body = tag_end + 1;
                let close = sql[body..]
                    .find(tag)
                    .ok_or_else(|| unterminated("dollar-quoted string"))?;
                at = body + close + tag.len();
            }
            b':' if bytes.get(at + 1) == Some(&b':') => at += 2,
            b':' if bytes
                .get(at + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') =>
            {
                let end = word(at + 1);
                marks.push(Mark::Named(at..end, sql[at + 1..end].to_string()));
                at = end;
            }
            b';' => {
                marks.push(Mark::End(at));
                at += 1;
            }
            _ => at += 1,
        }
    }
    Ok(marks)
}

/// The statements of `sql`, split at each `;` outside strings, names and
/// comments; empty ones are left out.
pub fn statements(sql: &str) -> Result<Vec<&str>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for mark in marks(sql)? {
        if let Mark::End(at) = mark {
            pieces.push(&sql[start..at]);
            start = at + 1;
        }
    }
    pieces.push(&sql[start..]);
    pieces.retain(|piece| !piece.trim().is_empty() && !only_comments(piece));
    Ok(pieces)
}

fn only_comments(piece: &str) -> bool {
    let mut rest = piece.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after
                .split_once('\n')
                .map_or("", |(_, next)| next)
                .trim_start();
        } else if rest.starts_with("/*") {
            // Nested comments were checked by `marks`; find the matching end.
            let mut depth = 0;
            let mut end = None;
            let bytes = rest.as_bytes();
            let mut at = 0;
            while at + 1 < bytes.len() {
                match (bytes[at], bytes[at + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        at += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        at += 2;
                        if depth == 0 {
                            end = Some(at);
                            break;
                        }
                    }
                    _ => at += 1,
                }
            }
            match end {
                Some(end) => rest = rest[end..].trim_start(),
                None => return false,
            }
        } else {
            return rest.is_empty();
        }
    }
}

/// One statement: refuses a `;` that would start another (the extended
/// protocol would too, less clearly).
pub fn one_statement(sql: &str) -> Result<()> {
    if statements(sql)?.len() > 1 {
        return Err(Error::invalid_argument(
            "one statement per call: split this into several calls, or use a session or a \
             procedure to run them together",
        ));
    }
    Ok(())
}

/// `sql` with each `:name` parameter turned into `$n`, and the names in the
/// order of their numbers (a name used twice keeps one number). Text
/// without `:name` comes back unchanged, with no names. Mixing `:name`
/// and `$n` in one statement is refused.
pub fn number_names(sql: &str) -> Result<(String, Vec<String>)> {
    let marks = marks(sql)?;
    let named = marks.iter().any(|m| matches!(m, Mark::Named(..)));
    if !named {
        return Ok((sql.to_string(), Vec::new()));
    }
    if marks.iter().any(|m| matches!(m, Mark::Positional(_))) {
        return Err(Error::invalid_argument(
            "use :name parameters or $1, $2, … in one statement, not both",
        ));
    }
    let mut names: Vec<String> = Vec::new();
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for mark in marks {
        if let Mark::Named(range, name) = mark {
            let number = match names.iter().position(|n| *n == name) {
                Some(index) => index + 1,
                None => {
                    names.push(name);
                    names.len()
                }
            };
            out.push_str(&sql[copied..range.start]);
            out.push_str(&format!("${number}"));
            copied = range.end;
        }
    }
    out.push_str(&sql[copied..]);
    Ok((out, names))
}

/// The highest `$n` in `sql` (0 when it has none).
pub fn positional_count(sql: &str) -> Result<u32> {
    Ok(marks(sql)?
        .into_iter()
        .filter_map(|m| match m {
            Mark::Positional(n) => Some(n),
            _ => None,
        })
        .max()
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_only_outside_strings_names_and_comments() {
        let body = "INSERT INTO t VALUES ('a;b', \"c;d\"); -- x; y\n\
                    SELECT $$;$$, $f$ ; $f$, E'\\';' /* ; /* ; */ */;\n  ;  -- only a comment";
        let pieces = statements(body).unwrap();
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert!(pieces[1].contains("E'\\';'"));
        assert!(statements("SELECT 'open").is_err());
        assert!(statements("SELECT $q$ open").is_err());
        assert!(statements("/* open").is_err());
        assert!(one_statement("SELECT 1;").is_ok());
        assert!(one_statement("SELECT 1; SELECT 2").is_err());
    }

    #[test]
    fn names_become_numbers_and_casts_strings_and_comments_stay() {
        let (sql, names) =
            number_names("SELECT :a::int, ':b', \":c\", :a -- :d\n WHERE x = :e_1").unwrap();
        assert_eq!(sql, "SELECT $1::int, ':b', \":c\", $1 -- :d\n WHERE x = $2");
        assert_eq!(names, ["a", "e_1"]);
        let (sql, names) = number_names("SELECT $1 + $2, x::text").unwrap();
        assert_eq!(sql, "SELECT $1 + $2, x::text");
        assert!(names.is_empty());
        assert!(number_names("SELECT :a, $1").is_err());
        assert_eq!(positional_count("SELECT $2, $10, '$11'").unwrap(), 10);
    }
}
