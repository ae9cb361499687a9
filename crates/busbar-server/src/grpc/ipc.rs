//! Arrow IPC streams carried in `bytes` fields: record batches out as pieces
//! of at most [`MAX_PIECE`] bytes, pieces in as a blocking reader.

use crate::error::{Error, Result};
use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::Schema;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Largest Arrow IPC piece per message; receivers concatenate pieces.
pub const MAX_PIECE: usize = 1 << 20;

/// Room left in a message for what carries a piece (its field's tag and
/// length, the message around it).
const PIECE_FRAMING: usize = 64;

/// Writes one Arrow IPC stream, handing out its bytes as they are made.
pub struct IpcPieces {
    writer: Option<StreamWriter<Vec<u8>>>,
    piece: usize,
}

fn ipc_error(e: arrow_schema::ArrowError) -> Error {
    Error::internal(format!("Arrow IPC: {e}"))
}

/// Slices of one buffer of at most `piece` bytes each: no copy per piece.
fn split(buffer: Vec<u8>, piece: usize) -> Vec<Bytes> {
    let bytes = Bytes::from(buffer);
    (0..bytes.len())
        .step_by(piece)
        .map(|start| bytes.slice(start..bytes.len().min(start + piece)))
        .collect()
}

impl IpcPieces {
    /// Pieces that fit, with what carries them, in messages of at most
    /// `max_message_bytes` (the node's limit), and never over [`MAX_PIECE`].
    pub fn within(max_message_bytes: usize) -> IpcPieces {
        IpcPieces {
            writer: None,
            piece: max_message_bytes
                .saturating_sub(PIECE_FRAMING)
                .clamp(1, MAX_PIECE),
        }
    }

    fn writer(&mut self, schema: &Schema) -> Result<&mut StreamWriter<Vec<u8>>> {
        if self.writer.is_none() {
            self.writer = Some(StreamWriter::try_new(Vec::new(), schema).map_err(ipc_error)?);
        }
        Ok(self.writer.as_mut().expect("set above"))
    }

    /// The pieces of one batch (the first batch also carries the schema).
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<Bytes>> {
        let piece = self.piece;
        let writer = self.writer(&batch.schema())?;
        writer.write(batch).map_err(ipc_error)?;
        Ok(split(std::mem::take(writer.get_mut()), piece))
    }

    /// The end of the stream; a stream without batches still carries `schema`.
    pub fn finish(&mut self, schema: &Schema) -> Result<Vec<Bytes>> {
        let piece = self.piece;
        let writer = self.writer(schema)?;
        writer.finish().map_err(ipc_error)?;
        Ok(split(std::mem::take(writer.get_mut()), piece))
    }
}

/// A piece of an inbound stream, or word that the caller broke off.
pub type Piece = std::result::Result<Bytes, Error>;

/// The record batches of an inbound Arrow IPC stream arriving as pieces on
/// a channel, handed to `take` one by one; this blocks the (blocking-pool)
/// thread while it waits. Every message is checked before it is decoded and
/// none may exceed `max_message_bytes` (busbar-ipc), so malformed or
/// oversized bytes are the caller's INVALID_ARGUMENT and never a panic or an
/// allocation the bytes did not pay for. No bytes at all is a table without
/// rows.
pub fn read_batches(
    mut pieces: mpsc::Receiver<Piece>,
    max_message_bytes: usize,
    take: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let bad = |e: busbar_ipc::Malformed| {
        Error::invalid_argument(format!("the Arrow IPC stream is malformed: {e}"))
    };
    let mut decoder = busbar_ipc::Decoder::new(max_message_bytes);
    while let Some(piece) = pieces.blocking_recv() {
        for batch in decoder.decode(arrow_buffer::Buffer::from(piece?)) {
            take(&batch.map_err(bad)?)?;
        }
    }
    if let Some(batch) = decoder.finish().map_err(bad)? {
        take(&batch)?;
    }
    Ok(())
}
