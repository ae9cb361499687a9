//! Arrow IPC from a peer Busbar does not trust.
//!
//! `arrow-ipc` trusts the metadata of the messages it decodes. Its
//! `StreamReader` sizes a message's body from the message's own
//! `bodyLength` before reading a byte of it, so a few bytes claiming a
//! terabyte abort the process; and a buffer whose offset points past the
//! body panics while slicing. `make fuzz` found the second in the node's
//! time-series write path (`fuzz/corpus/series_points/regress-ipc-buffer`).
//!
//! [`Decoder`] puts a [`Gate`] in front of arrow-ipc's incremental
//! `StreamDecoder`: the gate follows the stream's framing, verifies each
//! message's flatbuffer, bounds its metadata and body by the caller's limit
//! and checks that every buffer lies inside the body. Only bytes the gate
//! has passed reach arrow-ipc, and arrow-ipc only ever holds bytes that
//! arrived. [`check_flight_message`] does the same for a Flight `FlightData`
//! (its header and body come apart).
//!
//! arrow-ipc's schema conversion panics on types it does not know (an odd
//! integer width, an unknown unit, a union with bad ids…), in too many
//! places to mirror here, so a schema is converted once under
//! `catch_unwind` while it is checked, and decoding runs under it too as the
//! last line: a panic there refuses the stream instead of ending the task
//! or the process. [`quiet_caught_panics`] keeps the panic hook from
//! printing (and, with `RUST_BACKTRACE` set, symbolising a backtrace for)
//! the panics caught here, so hostile bytes cost neither log lines nor
//! memory. What `catch_unwind` cannot catch, an allocation failure, the
//! bounds above prevent.

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::{Message, MessageHeader};
use arrow_schema::{ArrowError, SchemaRef};

std::thread_local! {
    /// Set while this thread runs arrow-ipc under `catch_unwind`.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` (arrow-family code on bytes nobody vouches for: arrow-ipc
/// here, the parquet reader in the CLI), turning a panic into `None`;
/// [`quiet_caught_panics`] keeps such panics out of the log.
pub fn caught<T>(work: impl FnOnce() -> T) -> Option<T> {
    let outer = CATCHING.replace(true); // nested calls leave it set
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    CATCHING.set(outer);
    outcome.ok()
}

/// Makes the process's panic hook skip the panics this crate catches and
/// turns into errors; every other panic goes to the hook that was there.
/// Call it once at the start of a process that reads a peer's Arrow IPC
/// (the node does; a library leaves the hook to its application).
pub fn quiet_caught_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.get() {
                previous(info);
            }
        }));
    });
}

/// Why a peer's Arrow IPC was refused; the text is for the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl From<ArrowError> for Malformed {
    fn from(error: ArrowError) -> Self {
        Malformed(error.to_string())
    }
}

fn malformed(text: impl Into<String>) -> Malformed {
    Malformed(text.into())
}

/// The marker before each message's length (IPC format 0.15 and later);
/// older streams carry the length alone.
const CONTINUATION: [u8; 4] = [0xFF; 4];

#[derive(Debug)]
enum State {
    /// The marker and length of the next message (`have` bytes so far).
    Prefix {
        bytes: [u8; 8],
        have: usize,
    },
    Metadata {
        len: usize,
        bytes: Vec<u8>,
    },
    Body {
        left: usize,
    },
    /// The end-of-stream marker has been read.
    Finished,
}

impl State {
    /// Before a message: nothing of its prefix read yet.
    fn next_prefix() -> State {
        State::Prefix {
            bytes: [0; 8],
            have: 0,
        }
    }
}

/// Follows an IPC stream's framing across pieces of any size and refuses
/// the first message that is not sound (see the crate's documentation).
#[derive(Debug)]
pub struct Gate {
    state: State,
    max_message_bytes: usize,
}

impl Gate {
    /// `max_message_bytes` bounds one message's metadata and its body.
    pub fn new(max_message_bytes: usize) -> Gate {
        Gate {
            state: State::next_prefix(),
            max_message_bytes,
        }
    }

    /// Checks the next bytes of the stream.
    pub fn check(&mut self, bytes: &[u8]) -> Result<(), Malformed> {
        let used = self.advance(bytes)?;
        if used < bytes.len() {
            return Err(malformed("bytes after the end of the Arrow IPC stream"));
        }
        Ok(())
    }

    /// Checks bytes up to the stream's end-of-stream marker; how many that
    /// took (all of them unless the marker came first).
    fn advance(&mut self, all: &[u8]) -> Result<usize, Malformed> {
        let mut bytes = all;
        while !bytes.is_empty() {
            match &mut self.state {
                State::Prefix {
                    bytes: prefix,
                    have,
                } => {
                    let wanted = if *have >= 4 && prefix[..4] == CONTINUATION {
                        8
                    } else {
                        4
                    };
                    let take = (wanted - *have).min(bytes.len());
                    prefix[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    bytes = &bytes[take..];
                    if *have == 4 && prefix[..4] == CONTINUATION {
                        continue; // the length follows the marker
                    }
                    if *have == wanted {
                        let length = [
                            prefix[wanted - 4],
                            prefix[wanted - 3],
                            prefix[wanted - 2],
                            prefix[wanted - 1],
                        ];
                        self.state = self.metadata(i32::from_le_bytes(length))?;
                    }
                }
                State::Metadata {
                    len,
                    bytes: metadata,
                } => {
                    let take = (*len - metadata.len()).min(bytes.len());
                    metadata.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if metadata.len() == *len {
                        let message = arrow_ipc::root_as_message(metadata).map_err(|e| {
                            malformed(format!(
                                "an Arrow IPC message is not a valid flatbuffer: {e}"
                            ))
                        })?;
                        let body = usize::try_from(message.bodyLength())
                            .ok()
                            .filter(|&body| body <= self.max_message_bytes)
                            .ok_or_else(|| {
                                malformed(format!(
                                    "an Arrow IPC message claims a body of {} bytes; the limit is {}",
                                    message.bodyLength(),
                                    self.max_message_bytes
                                ))
                            })?;
                        check_message(&message, body)?;
                        self.state = State::Body { left: body };
                        self.next_message_if_done();
                    }
                }
                State::Body { left } => {
                    let take = (*left).min(bytes.len());
                    *left -= take;
                    bytes = &bytes[take..];
                    self.next_message_if_done();
                }
                State::Finished => break,
            }
        }
        Ok(all.len() - bytes.len())
    }

    /// True once the end-of-stream marker has been read.
    pub fn finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// True between messages: the bytes so far are whole messages.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Prefix { have: 0, .. } | State::Finished)
    }

    fn metadata(&self, len: i32) -> Result<State, Malformed> {
        match usize::try_from(len) {
            Ok(0) => Ok(State::Finished),
            Ok(len) if len <= self.max_message_bytes => Ok(State::Metadata {
                len,
                bytes: Vec::with_capacity(len.min(1 << 16)),
            }),
            _ => Err(malformed(format!(
                "an Arrow IPC message claims {len} bytes of metadata; the limit is {}",
                self.max_message_bytes
            ))),
        }
    }

    fn next_message_if_done(&mut self) {
        if matches!(self.state, State::Body { left: 0 }) {
            self.state = State::next_prefix();
        }
    }
}

/// Checks one message against the body that comes with it: the kinds
/// Busbar reads (schema, record batch, dictionary batch), no compression
/// (the node is built without codecs), non-negative counts, and every
/// buffer inside the body.
fn check_message(message: &Message, body_len: usize) -> Result<(), Malformed> {
    let batch = match message.header_type() {
        MessageHeader::Schema => return check_schema(message),
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => message
            .header_as_dictionary_batch()
            .and_then(|dictionary| dictionary.data()),
        other => {
            return Err(malformed(format!(
                "an Arrow IPC message of kind {other:?} is not accepted; send a schema and record batches"
            )));
        }
    };
    let batch = batch.ok_or_else(|| malformed("an Arrow IPC batch message has no batch"))?;
    if batch.compression().is_some() {
        return Err(malformed(
            "compressed Arrow IPC is not accepted; send it uncompressed",
        ));
    }
    if batch.length() < 0 {
        return Err(malformed("an Arrow IPC batch has a negative row count"));
    }
    for node in batch.nodes().into_iter().flatten() {
        if node.length() < 0 || node.null_count() < 0 || node.null_count() > node.length() {
            return Err(malformed(format!(
                "an Arrow IPC column has {} rows and {} nulls",
                node.length(),
                node.null_count()
            )));
        }
    }
    for buffer in batch.buffers().into_iter().flatten() {
        let inside = usize::try_from(buffer.offset())
            .ok()
            .zip(usize::try_from(buffer.length()).ok())
            .and_then(|(offset, length)| offset.checked_add(length))
            .is_some_and(|end| end <= body_len);
        if !inside {
            return Err(malformed(format!(
                "an Arrow IPC buffer (offset {}, length {}) lies outside its {body_len}-byte body",
                buffer.offset(),
                buffer.length()
            )));
        }
    }
    Ok(())
}

/// Converts a schema message as arrow-ipc will, refusing it where the
/// conversion panics.
fn check_schema(message: &Message) -> Result<(), Malformed> {
    let schema = message
        .header_as_schema()
        .ok_or_else(|| malformed("an Arrow IPC schema message has no schema"))?;
    caught(|| arrow_ipc::convert::fb_to_schema(schema))
        .map(drop)
        .ok_or_else(|| {
            malformed("the Arrow IPC schema has a type or parameter Arrow does not know")
        })
}

/// Checks one Flight `FlightData` (its `data_header` and the length of its
/// `data_body`) before arrow-flight decodes it. A message without a header
/// carries only application metadata and passes.
pub fn check_flight_message(header: &[u8], body_len: usize) -> Result<(), Malformed> {
    if header.is_empty() {
        return Ok(());
    }
    let message = arrow_ipc::root_as_message(header).map_err(|e| {
        malformed(format!(
            "a Flight message header is not a valid flatbuffer: {e}"
        ))
    })?;
    check_message(&message, body_len)
}

/// An Arrow IPC stream arriving in pieces, decoded batch by batch behind a
/// [`Gate`].
#[derive(Debug)]
pub struct Decoder {
    gate: Gate,
    arrow: StreamDecoder,
    /// Decoding panicked once: arrow's state is unknown, so nothing more
    /// is read from this stream.
    spoiled: bool,
}

impl Decoder {
    /// `max_message_bytes` bounds one message (one record batch): what the
    /// decoder may hold at once.
    pub fn new(max_message_bytes: usize) -> Decoder {
        Decoder {
            gate: Gate::new(max_message_bytes),
            arrow: StreamDecoder::new(),
            spoiled: false,
        }
    }

    /// The batches that `bytes` completes, in order. After an error the
    /// stream is spoiled: stop reading it.
    pub fn decode(
        &mut self,
        mut bytes: Buffer,
    ) -> impl Iterator<Item = Result<RecordBatch, Malformed>> + '_ {
        let mut refused = if self.spoiled {
            Some(malformed("the Arrow IPC stream was refused earlier"))
        } else {
            self.gate.check(bytes.as_slice()).err()
        };
        let (arrow, spoiled) = (&mut self.arrow, &mut self.spoiled);
        std::iter::from_fn(move || {
            if let Some(error) = refused.take() {
                bytes = Buffer::from(Vec::<u8>::new());
                return Some(Err(error));
            }
            while !bytes.is_empty() {
                match caught(|| arrow.decode(&mut bytes)) {
                    Some(Ok(Some(batch))) => return Some(Ok(batch)),
                    Some(Ok(None)) => {}
                    Some(Err(error)) => {
                        bytes = Buffer::from(Vec::<u8>::new());
                        return Some(Err(error.into()));
                    }
                    None => {
                        *spoiled = true;
                        bytes = Buffer::from(Vec::<u8>::new());
                        return Some(Err(malformed(
                            "the Arrow IPC stream is malformed (arrow-ipc could not decode it)",
                        )));
                    }
                }
            }
            None
        })
    }

    /// The stream's schema, once its first message has been decoded.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.arrow.schema()
    }

    /// Ends the stream: it must end between messages. Returns the last
    /// batch when it had no body (no rows, no buffers) and came last without
    /// an end-of-stream marker after it: arrow-ipc's decoder only finishes a
    /// message when bytes follow, so it is given the marker here.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, Malformed> {
        if !self.gate.at_boundary() {
            return Err(malformed("the Arrow IPC stream ends inside a message"));
        }
        let mut last = None;
        if !self.gate.finished() && !self.spoiled {
            const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
            for batch in self.decode(Buffer::from(END_OF_STREAM.to_vec())) {
                last = Some(batch?);
            }
        }
        self.arrow.finish()?;
        Ok(last)
    }
}

/// Every batch of a whole Arrow IPC stream held in memory (a file a user
/// names, say): no message may be larger than the bytes there are.
pub fn read_stream(data: Buffer) -> Result<Vec<RecordBatch>, Malformed> {
    let mut decoder = Decoder::new(data.len());
    let mut batches = decoder.decode(data).collect::<Result<Vec<_>, _>>()?;
    batches.extend(decoder.finish()?);
    Ok(batches)
}

/// The magic at both ends of an Arrow IPC file.
const FILE_MAGIC: &[u8; 6] = b"ARROW1";

/// Every batch of an Arrow IPC file held in memory. A file is the stream
/// format (ending in its end-of-stream marker) between a padded magic and a
/// footer that indexes it; the batches are read from the stream in order,
/// through the same checks, and the footer only marks where the stream
/// must end.
pub fn read_file(data: Buffer) -> Result<Vec<RecordBatch>, Malformed> {
    const HEAD: usize = 8; // the magic padded to 8 bytes
    const TAIL: usize = 10; // the footer's length, then the magic
    let len = data.len();
    if len < HEAD + TAIL || &data[..6] != FILE_MAGIC || &data[len - 6..] != FILE_MAGIC {
        return Err(malformed(
            "not an Arrow IPC file (it must start and end with ARROW1)",
        ));
    }
    let footer = i32::from_le_bytes([data[len - 10], data[len - 9], data[len - 8], data[len - 7]]);
    let stream_end = usize::try_from(footer)
        .ok()
        .and_then(|footer| (len - TAIL).checked_sub(footer))
        .filter(|&end| end >= HEAD)
        .ok_or_else(|| {
            malformed(format!(
                "the Arrow IPC file's footer length {footer} does not fit the file"
            ))
        })?;
    // Writers pad the magic to their alignment (arrow-rs: 64 bytes) and may
    // pad between the end-of-stream marker and the footer. A zero word
    // before the first message is padding, not an empty stream.
    let mut start = HEAD;
    while start + 4 <= stream_end && data[start..start + 4] == [0; 4] {
        start += 4;
    }
    let stream = data.slice_with_length(start, stream_end - start);
    let used = Gate::new(stream.len()).advance(&stream)?;
    read_stream(stream.slice_with_length(0, used))
}

#[cfg(test)]
mod tests;
