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

/// Writes one Arrow IPC stream, handing out its bytes as they are made.
#[derive(Default)]
pub struct IpcPieces {
    writer: Option<StreamWriter<Vec<u8>>>,
}

fn ipc_error(e: arrow_schema::ArrowError) -> Error {
    Error::internal(format!("Arrow IPC: {e}"))
}

/// Slices of one buffer: no copy per piece.
fn split(buffer: Vec<u8>) -> Vec<Bytes> {
    let bytes = Bytes::from(buffer);
    (0..bytes.len())
        .step_by(MAX_PIECE)
        .map(|start| bytes.slice(start..bytes.len().min(start + MAX_PIECE)))
        .collect()
}

impl IpcPieces {
    fn writer(&mut self, schema: &Schema) -> Result<&mut StreamWriter<Vec<u8>>> {
        if self.writer.is_none() {
            self.writer = Some(StreamWriter::try_new(Vec::new(), schema).map_err(ipc_error)?);
        }
        Ok(self.writer.as_mut().expect("set above"))
    }

    /// The pieces of one batch (the first batch also carries the schema).
    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<Bytes>> {
        let writer = self.writer(&batch.schema())?;
        writer.write(batch).map_err(ipc_error)?;
        Ok(split(std::mem::take(writer.get_mut())))
    }

    /// The end of the stream; a stream without batches still carries `schema`.
    pub fn finish(&mut self, schema: &Schema) -> Result<Vec<Bytes>> {
        let writer = self.writer(schema)?;
        writer.finish().map_err(ipc_error)?;
        Ok(split(std::mem::take(writer.get_mut())))
    }
}

/// A piece of an inbound stream, or word that the caller broke off.
pub type Piece = std::result::Result<Bytes, Error>;

/// Reads pieces arriving on a channel as one byte stream, blocking the
/// (blocking-pool) thread while it waits. The end of the channel is the end
/// of the stream; an `Err` piece fails the read.
pub struct PieceReader {
    pieces: mpsc::Receiver<Piece>,
    current: Bytes,
}

impl PieceReader {
    pub fn new(pieces: mpsc::Receiver<Piece>) -> PieceReader {
        PieceReader {
            pieces,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.pieces.blocking_recv() {
                None => return Ok(0),
                Some(Ok(piece)) => self.current = piece,
                Some(Err(error)) => return Err(std::io::Error::other(error.message)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The record batches of an inbound Arrow IPC stream, handed to `take` one by
/// one. Malformed bytes are the caller's fault: INVALID_ARGUMENT.
pub fn read_batches(
    reader: PieceReader,
    take: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let bad = |e: arrow_schema::ArrowError| {
        Error::invalid_argument(format!("the Arrow IPC stream is malformed: {e}"))
    };
    // An empty stream (no bytes at all) is a table without rows.
    let mut reader = std::io::BufReader::with_capacity(1 << 16, reader);
    if std::io::BufRead::fill_buf(&mut reader)
        .map_err(|e| Error::invalid_argument(e.to_string()))?
        .is_empty()
    {
        return Ok(());
    }
    let batches = arrow_ipc::reader::StreamReader::try_new(reader, None).map_err(bad)?;
    for batch in batches {
        take(&batch.map_err(bad)?)?;
    }
    Ok(())
}
