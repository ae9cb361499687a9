use super::*;
use arrow_array::{Float64Array, Int64Array};
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::{DataType, Field, Schema};
use std::sync::Arc;

fn batch(rows: i64) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("utc_time", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows)),
            Arc::new(Float64Array::from_iter(
                (0..rows).map(|i| (i % 3 != 0).then_some(i as f64)),
            )),
        ],
    )
    .unwrap()
}

fn stream(batches: &[RecordBatch], options: IpcWriteOptions) -> Vec<u8> {
    let mut writer =
        StreamWriter::try_new_with_options(Vec::new(), &batches[0].schema(), options).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
    writer.into_inner().unwrap()
}

/// Feeds `bytes` in pieces of `piece` bytes; the batches, or the first error.
fn decode_in_pieces(
    bytes: &[u8],
    piece: usize,
    limit: usize,
) -> Result<Vec<RecordBatch>, Malformed> {
    let mut decoder = Decoder::new(limit);
    let mut batches = Vec::new();
    for chunk in bytes.chunks(piece) {
        for batch in decoder.decode(Buffer::from(chunk.to_vec())) {
            batches.push(batch?);
        }
    }
    batches.extend(decoder.finish()?);
    Ok(batches)
}

#[test]
fn a_sound_stream_decodes_the_same_in_pieces_of_any_size() {
    let sent = vec![batch(5), batch(0), batch(1000)];
    let bytes = stream(&sent, IpcWriteOptions::default());
    for piece in [1, 3, 7, 8, 100, 4096, bytes.len()] {
        assert_eq!(
            decode_in_pieces(&bytes, piece, 1 << 20).unwrap(),
            sent,
            "pieces of {piece}"
        );
    }
}

#[test]
fn a_last_batch_without_rows_or_an_end_marker_is_not_lost() {
    // What a writer sends that never calls finish(): no end-of-stream marker.
    let sent = vec![batch(4), batch(0)];
    let mut writer = StreamWriter::try_new(Vec::new(), &sent[0].schema()).unwrap();
    for batch in &sent {
        writer.write(batch).unwrap();
    }
    let bytes = writer.into_inner().unwrap();
    for piece in [1, 16, bytes.len()] {
        assert_eq!(
            decode_in_pieces(&bytes, piece, 1 << 20).unwrap(),
            sent,
            "pieces of {piece}"
        );
    }
}

#[test]
fn the_legacy_framing_without_a_continuation_marker_is_read() {
    let sent = vec![batch(10)];
    let options = IpcWriteOptions::try_new(8, true, arrow_ipc::MetadataVersion::V4).unwrap();
    let bytes = stream(&sent, options);
    assert_ne!(bytes[..4], CONTINUATION);
    for piece in [1, 5, bytes.len()] {
        assert_eq!(decode_in_pieces(&bytes, piece, 1 << 20).unwrap(), sent);
    }
}

#[test]
fn a_buffer_outside_its_body_is_refused_where_arrow_ipc_would_panic() {
    // Found by `make fuzz` (series_points): arrow-ipc 59 panics on it. The
    // corpus file's first byte is the fuzz target's piece size.
    let found = &include_bytes!("../../../fuzz/corpus/series_points/regress-ipc-buffer")[1..];
    let error = decode_in_pieces(found, found.len(), 1 << 20).unwrap_err();
    assert!(error.0.contains("outside"), "{error}");
}

#[test]
fn a_message_past_the_limit_is_refused_before_its_body_arrives() {
    let bytes = stream(&[batch(1000)], IpcWriteOptions::default());
    let error = decode_in_pieces(&bytes, bytes.len(), 4096).unwrap_err();
    assert!(error.0.contains("claims a body"), "{error}");
}

#[test]
fn lengths_that_claim_more_than_arrived_or_less_than_nothing_are_refused() {
    for (prefix, why) in [
        (
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F][..],
            "claims 2147483647 bytes",
        ),
        (
            &[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x80][..],
            "claims -2147483648 bytes",
        ),
        (&[0x00, 0x00, 0x00, 0x90][..], "claims"),
    ] {
        let mut gate = Gate::new(1 << 20);
        let error = gate.check(prefix).unwrap_err();
        assert!(error.0.contains(why), "{error}");
    }
    let mut gate = Gate::new(1 << 20);
    let error = gate
        .check(&[
            0xFF, 0xFF, 0xFF, 0xFF, 16, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
            16,
        ])
        .unwrap_err();
    assert!(error.0.contains("flatbuffer"), "{error}");
}

#[test]
fn a_stream_cut_inside_a_message_or_carrying_bytes_past_its_end_is_refused() {
    let bytes = stream(&[batch(50)], IpcWriteOptions::default());
    let cut = decode_in_pieces(&bytes[..bytes.len() - 20], 64, 1 << 20).unwrap_err();
    assert!(cut.0.contains("ends inside"), "{cut}");
    let mut longer = bytes.clone();
    longer.push(0);
    let after = decode_in_pieces(&longer, 64, 1 << 20).unwrap_err();
    assert!(after.0.contains("after the end"), "{after}");
}

#[test]
fn a_flight_message_is_checked_against_the_body_that_came_with_it() {
    let sent = batch(100);
    let (_, data) = arrow_ipc::writer::IpcDataGenerator::default()
        .encode(
            &sent,
            &mut arrow_ipc::writer::DictionaryTracker::new(false),
            &IpcWriteOptions::default(),
            &mut Default::default(),
        )
        .unwrap();
    let header = &data.ipc_message;
    let body = data.arrow_data.len();
    assert_eq!(check_flight_message(header, body), Ok(()));
    let short = check_flight_message(header, body / 2).unwrap_err();
    assert!(short.0.contains("outside"), "{short}");
    assert_eq!(check_flight_message(&[], 0), Ok(()));
    assert!(check_flight_message(&[1, 2, 3], 0).is_err());
}

#[test]
fn whole_streams_and_files_in_memory_are_read_through_the_same_checks() {
    let sent = vec![batch(3), batch(70)];
    let bytes = stream(&sent, IpcWriteOptions::default());
    assert_eq!(read_stream(Buffer::from(bytes.clone())).unwrap(), sent);
    let mut writer = arrow_ipc::writer::FileWriter::try_new(Vec::new(), &sent[0].schema()).unwrap();
    for batch in &sent {
        writer.write(batch).unwrap();
    }
    writer.finish().unwrap();
    let file = writer.into_inner().unwrap();
    assert_eq!(read_file(Buffer::from(file.clone())).unwrap(), sent);

    let not_a_file = read_file(Buffer::from(bytes)).unwrap_err();
    assert!(not_a_file.0.contains("ARROW1"), "{not_a_file}");
    let mut bad_footer = file.clone();
    let at = bad_footer.len() - 10;
    bad_footer[at..at + 4].copy_from_slice(&i32::MAX.to_le_bytes());
    let error = read_file(Buffer::from(bad_footer)).unwrap_err();
    assert!(error.0.contains("footer length"), "{error}");
}

#[test]
fn a_schema_arrow_ipc_cannot_convert_is_refused_where_it_would_panic() {
    // Found by `make fuzz` (series_points, client_series_read, cli_import):
    // arrow-ipc 59 panics converting unknown types and parameters.
    let found = &include_bytes!("../../../fuzz/corpus/series_points/regress-schema-panic")[1..];
    let pieces = include_bytes!("../../../fuzz/corpus/series_points/regress-schema-panic")[0];
    let error = decode_in_pieces(found, usize::from(pieces).max(1), 1 << 20).unwrap_err();
    assert!(error.0.contains("does not know"), "{error}");
}

#[test]
fn a_stream_of_no_bytes_is_one_without_batches() {
    assert_eq!(Decoder::new(1 << 20).finish(), Ok(None));
}
