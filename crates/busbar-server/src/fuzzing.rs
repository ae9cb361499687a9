//! Entry points for the fuzz targets (`fuzz/`, `make fuzz`) and for the
//! test that replays their corpus (`tests/fuzz_corpus.rs`). Each takes bytes
//! as a client or a file would send them and must not panic, hang or hold
//! memory without bound; where a decoder has an invariant, it is asserted.

use crate::sql::{SqlParam, SqlParams};

/// Resource paths: a path that normalises is a fixed point of normalising,
/// with no empty, "." or ".." component and no control character.
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = crate::resources::paths::normalize(text) {
        assert_eq!(
            crate::resources::paths::normalize(&normal).as_deref(),
            Ok(normal.as_str())
        );
        assert!(normal == "/" || !normal.ends_with('/'));
        assert!(!normal.contains("//") && !normal.chars().any(char::is_control));
        assert!(!normal.split('/').any(|c| c == "." || c == ".."));
    }
}

/// The node's TOML configuration file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = toml::from_str::<crate::config::Settings>(text) {
        let _ = crate::config::ServerConfig::from_settings(settings);
    }
}

/// A Flight SQL statement ticket as a client sends it back.
pub fn flight_ticket(data: &[u8]) {
    let _ = crate::sql::flight_sql::ParsedTicket::decode(data);
}

/// A Flight SQL command (a protobuf `Any`) as DoGet, GetFlightInfo and
/// DoPut receive it.
pub fn flight_command(data: &[u8]) {
    use arrow_flight::sql::{Any, Command};
    use prost::Message;
    if let Ok(any) = Any::decode(data) {
        let _ = Command::try_from(any);
    }
}

/// An Arrow IPC stream of points, as a time-series write receives it: in
/// pieces (the first byte sets their size), checked and decoded by
/// busbar-ipc, then checked as points.
pub fn series_points(data: &[u8]) {
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = busbar_ipc::Decoder::new(1 << 20);
    for piece in stream.chunks(usize::from(size).max(1)) {
        for batch in decoder.decode(arrow_buffer::Buffer::from(piece.to_vec())) {
            match batch {
                Ok(batch) => {
                    let _ = crate::timeseries::model::check_points(&batch);
                }
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
}

/// User SQL in the sandbox: the first line is the statement, every further
/// byte a bound integer. Whatever it is, the connection stays in autocommit
/// (no transaction left open) and no database is attached.
pub fn sql(data: &[u8]) {
    let (text, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let params = SqlParams {
        positional: rest.iter().map(|&b| SqlParam::Integer(b.into())).collect(),
        named: Vec::new(),
    };
    crate::sql::embedded::fuzz_statement(text, &params);
}
