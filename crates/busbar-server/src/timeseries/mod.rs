//! Time series, one job in one place. The services (`busbar.v1.TimeSeries`
//! in `service`, Arrow Flight tickets in `flight`) check rights and reach
//! storage only through the [`SeriesEngine`] trait; `model` is what every
//! backend shares (a series' definition and grid, how points are checked).
//! The embedded engine (`embedded`: one SQLite file per series, points in
//! column chunks sent without another copy) is the only code that holds
//! SQLite connections and transactions; a cluster's engine (`postgres`: a
//! table per series in the shared PostgreSQL) fills the same trait, with
//! the same checks (`model`) and the same message builders.

pub mod embedded;
pub mod flight;
pub mod model;
pub mod postgres;
pub mod service;

pub use embedded::{PointsColumns, PointsMessage, TimeSeriesStore};
pub use model::{Extent, SeriesSpec, WriteSummary};

use crate::error::Result;
use crate::sessions::DataSession;
use arrow_array::RecordBatch;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// An interval `[start, end)` of one series, to read or to replace, and
/// the session it goes through (whose uncommitted writes a read then sees).
#[derive(Clone)]
pub struct SeriesInterval {
    pub session: Option<Arc<DataSession>>,
    pub id: String,
    pub range: (Option<i64>, Option<i64>),
}

/// Where a read's points go, in the form the caller asked for: framed Arrow
/// IPC messages, or the columns form. Bounded: the engine waits for room.
pub enum PointsSink {
    Ipc(mpsc::Sender<PointsMessage>),
    Columns(mpsc::Sender<PointsColumns>),
}

/// Where a read sends its extent before its points, when the caller asks.
pub type ExtentFirst = Option<oneshot::Sender<Extent>>;

impl SeriesInterval {
    pub fn new(
        session: Option<Arc<DataSession>>,
        id: String,
        range: (Option<i64>, Option<i64>),
    ) -> Self {
        SeriesInterval { session, id, range }
    }

    /// The write that replaces this interval with the points of `source`,
    /// under `key` when it has one.
    pub fn replaced_by(
        self,
        source: BatchSource,
        key: Option<oneshot::Receiver<crate::calls::CallKey>>,
    ) -> IntervalWrite {
        IntervalWrite {
            interval: self,
            source,
            key,
        }
    }
}

/// A write: the interval it replaces, the points, and on a cluster node its
/// idempotency key (`crate::calls`), known only once its last point came in
/// (its digest covers them all). A write with a key records it with its
/// outcome in its own transaction; a write in a data session takes none
/// (a session lives on one node, so its calls are never retried elsewhere).
pub struct IntervalWrite {
    pub interval: SeriesInterval,
    pub source: BatchSource,
    pub key: Option<oneshot::Receiver<crate::calls::CallKey>>,
}

/// Hands a write's record batches, in order, to the function it is given;
/// called once, on the engine's blocking thread.
pub type BatchSource =
    Box<dyn FnOnce(&mut dyn FnMut(&RecordBatch) -> Result<()>) -> Result<()> + Send>;

/// Everything the services ask of time series.
#[async_trait]
pub trait SeriesEngine: Send + Sync + 'static {
    /// Makes the storage of a new TIMESERIES resource.
    async fn create(&self, id: &str, spec: &SeriesSpec) -> Result<()>;
    /// Drops the storage of a deleted one.
    async fn remove(&self, id: &str);
    /// A series' definition.
    async fn spec(&self, id: &str) -> Result<Arc<SeriesSpec>>;
    /// How many points a series holds and where they start and end.
    async fn extent(&self, session: Option<Arc<DataSession>>, id: &str) -> Result<Extent>;
    /// Reads points into `sink` in one snapshot; `header`, when given,
    /// first gets the extent from that same snapshot (so it agrees with the
    /// points even while writers commit). Returns how many points were read.
    async fn read(&self, of: SeriesInterval, header: ExtentFirst, sink: PointsSink) -> Result<u64>;
    /// Replaces `range` of a series with the points `source` hands over,
    /// all or nothing: in a transaction of its own, or inside `session`
    /// (where a rejected write leaves the session's earlier work alone).
    async fn write(&self, write: IntervalWrite) -> Result<WriteSummary>;
}
