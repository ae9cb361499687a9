//! `busbar.v1.TimeSeries`: points of TIMESERIES resources, read as Arrow IPC
//! streams or in the columns form, written as Arrow IPC streams.

use crate::auth::access::Caller;
use crate::config;
use crate::error::{Error, Result};
use crate::grpc::ipc::{Piece, read_batches};
use crate::grpc::zero_copy::OneMethod;
use crate::grpc::zero_copy::{self, LoneBytes};
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller, caller_and_message};
use crate::sessions::DataSession;
use crate::store::{ResourceKind, ResourceRecord, Right};
use crate::timeseries::embedded::points_wire;
use crate::timeseries::model::{Curve, Resolution, SeriesSpec};
use crate::timeseries::{PointsColumns, PointsMessage, PointsSink, SeriesInterval};
use arrow_array::RecordBatch;
use busbar_proto::v1::{
    self as pb,
    read_series_response::Part as ReadPart,
    time_series_server::{TimeSeries, TimeSeriesServer},
    write_series_request::Part as WritePart,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Status, Streaming};

#[derive(Clone)]
pub struct TimeSeriesService {
    pub node: Arc<Node>,
}

/// `busbar.v1.TimeSeries` as served.
pub type TimeSeriesRouter = OneMethod<TimeSeriesServer<TimeSeriesService>>;

/// Serves `busbar.v1.TimeSeries`: `Read` answers through
/// [`zero_copy`](super::zero_copy), so the columns and IPC pieces storage
/// made go to the connection without another copy; the other methods go to
/// the generated server.
pub fn router(
    service: TimeSeriesService,
    max_message_bytes: usize,
    framing: config::Framing,
) -> TimeSeriesRouter {
    let generated = TimeSeriesServer::new(service.clone())
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let read = move |request: http::Request<tonic::body::Body>| {
        let service = service.clone();
        Box::pin(async move {
            let request = match zero_copy::unary_request(request, max_message_bytes).await {
                Ok(request) => request,
                Err(status) => return status.into_http(),
            };
            match service.read(request).await {
                Ok(stream) => zero_copy::response(stream.into_inner()),
                Err(status) => status.into_http(),
            }
        }) as futures::future::BoxFuture<'static, _>
    };
    OneMethod::new(
        generated,
        "/busbar.v1.TimeSeries/Read",
        Arc::new(read),
        framing,
    )
}

impl LoneBytes for pb::ReadSeriesResponse {
    fn lone_bytes(&self) -> Option<(u32, &Bytes)> {
        match &self.part {
            Some(ReadPart::ArrowIpc(bytes)) => Some((2, bytes)),
            Some(ReadPart::Column(bytes)) => Some((4, bytes)),
            _ => None,
        }
    }
}

/// Batches and pieces queued between storage and the network, each way.
const QUEUE: usize = 4;

pub fn spec_from_pb(spec: Option<pb::SeriesSpec>) -> Result<SeriesSpec> {
    let spec = spec.ok_or_else(|| {
        Error::invalid_argument("a time series needs a definition: at least its resolution")
    })?;
    let resolution = crate::store::known::<Resolution>(spec.resolution).ok_or_else(|| {
        Error::invalid_argument(format!(
            "bad resolution {}: use BREAKPOINT, MIN1, MIN5, MIN10, MIN15, MIN30, HOUR, DAY, WEEK, MONTH or YEAR",
            spec.resolution
        ))
    })?;
    let curve = match spec.curve {
        0 | 1 => Curve::Staircase,
        2 => Curve::PiecewiseLinear,
        other => {
            return Err(Error::invalid_argument(format!(
                "bad curve {other}: use STAIRCASE or PIECEWISE_LINEAR"
            )));
        }
    };
    let spec = SeriesSpec {
        resolution,
        unit: spec.unit,
        curve,
        time_zone: (!spec.time_zone.is_empty()).then_some(spec.time_zone),
    };
    crate::timeseries::model::time_zone_of(&spec)?;
    Ok(spec)
}

/// The series at `path`, if the caller has `right` on it.
pub(super) async fn resolve(
    node: &Node,
    caller: &Caller,
    path: &str,
    right: Right,
) -> Result<ResourceRecord> {
    let path = node.path(path).await?;
    let kind = ResourceKind::Timeseries;
    let record = node.access.require_kind(caller, &path, right, kind).await?;
    Ok(Arc::unwrap_or_clone(record))
}

impl TimeSeriesService {
    fn session(&self, caller: &Caller, id: &str) -> Result<Option<Arc<DataSession>>> {
        if id.is_empty() {
            return Ok(None);
        }
        self.node.sessions.get(id, &caller.identity_id).map(Some)
    }
}

/// A series' header as `session` sees it.
async fn info(
    node: &Node,
    session: Option<Arc<DataSession>>,
    record: &ResourceRecord,
) -> Result<pb::SeriesInfo> {
    let extent = node.timeseries.extent(session, &record.id).await?;
    info_of(node, record, extent).await
}

/// A series' header from its extent.
async fn info_of(
    node: &Node,
    record: &ResourceRecord,
    extent: crate::timeseries::Extent,
) -> Result<pb::SeriesInfo> {
    let spec = node.timeseries.spec(&record.id).await?;
    Ok(pb::SeriesInfo {
        path: record.path.clone(),
        spec: Some(spec.to_proto()),
        points: extent.points,
        first_ms: extent.first_ms,
        last_ms: extent.last_ms,
    })
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadSeriesResponse, Status>> + Send>>;

fn read_part(part: ReadPart) -> Result<pb::ReadSeriesResponse, Status> {
    Ok(pb::ReadSeriesResponse { part: Some(part) })
}

/// Where the engine sends one form of points: the sink of that form.
pub(super) type ToSink<M> = fn(mpsc::Sender<M>) -> PointsSink;

/// Where a read's responses go.
type Out = mpsc::Sender<Result<pb::ReadSeriesResponse, Status>>;

/// Starts reading one series' points into a bounded queue of ready-made
/// messages; the task's result says how many points were read. With
/// `header`, the extent from the same snapshot comes first.
pub(super) fn start_read<M: Send + 'static>(
    node: &Arc<Node>,
    read: SeriesInterval,
    header: Option<oneshot::Sender<crate::timeseries::Extent>>,
    to_sink: ToSink<M>,
) -> (mpsc::Receiver<M>, tokio::task::JoinHandle<Result<u64>>) {
    let (sink, messages) = mpsc::channel::<M>(QUEUE);
    let engine = node.timeseries.clone();
    let reading = tokio::spawn(async move { engine.read(read, header, to_sink(sink)).await });
    (messages, reading)
}

/// The pieces of one batch in the columns form: its header, then each
/// column that is not a rule.
fn columns_parts(batch: PointsColumns) -> impl Iterator<Item = ReadPart> {
    let header = pb::PointColumns {
        // A stored chunk holds at most CHUNK_POINTS rows.
        rows: batch.rows as u32,
        times: batch.times.rule().map(|step| pb::TimeStep {
            first_ms: step.first_ms,
            step_ms: step.step_ms,
        }),
        flags: batch.flags.rule().copied(),
    };
    std::iter::once(ReadPart::Columns(header))
        .chain(batch.times.into_values().map(ReadPart::Column))
        .chain(batch.flags.into_values().map(ReadPart::Column))
        .chain(std::iter::once(ReadPart::Column(batch.values)))
}

/// How one form frames a series' points: what goes before them, the
/// pieces of each message storage makes, and what goes after them.
struct Framing<M, P> {
    to_sink: ToSink<M>,
    before: Option<ReadPart>,
    parts: fn(M) -> P,
    after: Option<ReadPart>,
}

/// Arrow IPC: the schema, one IPC message per stored chunk as storage made
/// it, the end marker.
fn ipc_framing() -> Framing<PointsMessage, Option<ReadPart>> {
    Framing {
        to_sink: PointsSink::Ipc,
        before: Some(ReadPart::ArrowIpc(points_wire::SCHEMA_MESSAGE.clone())),
        parts: |message| Some(ReadPart::ArrowIpc(message.framed())),
        after: Some(ReadPart::ArrowIpc(Bytes::from_static(
            &points_wire::END_OF_STREAM,
        ))),
    }
}

/// Columns: per stored chunk a header and the columns that are not rules.
fn columns_framing() -> Framing<PointsColumns, impl Iterator<Item = ReadPart>> {
    Framing {
        to_sink: PointsSink::Columns,
        before: None,
        parts: columns_parts,
        after: None,
    }
}

/// Streams one series: its header, then its points framed by `framing`.
/// `Ok(false)` when the caller went away.
async fn send_series<M, P>(
    node: &Arc<Node>,
    reading: SeriesInterval,
    record: ResourceRecord,
    framing: Framing<M, P>,
    out: &Out,
) -> Result<bool>
where
    M: Send + 'static,
    P: IntoIterator<Item = ReadPart>,
{
    let (made, extent) = oneshot::channel();
    let (mut messages, read) = start_read(node, reading, Some(made), framing.to_sink);
    let Ok(extent) = extent.await else {
        // The header failed: the task says why.
        read.await??;
        return Err(Error::internal("a series read ended without its header"));
    };
    let header = info_of(node, &record, extent).await?;
    let parts = std::iter::once(ReadPart::Series(header)).chain(framing.before);
    for part in parts {
        if out.send(read_part(part)).await.is_err() {
            return Ok(false);
        }
    }
    while let Some(message) = messages.recv().await {
        for part in (framing.parts)(message) {
            if out.send(read_part(part)).await.is_err() {
                return Ok(false);
            }
        }
    }
    read.await??;
    match framing.after {
        Some(part) => Ok(out.send(read_part(part)).await.is_ok()),
        None => Ok(true),
    }
}

/// A streamed write's idempotency key on a cluster node: checked when the
/// call starts, and bound to everything the stream carries (its header and
/// every Arrow piece, each with its length) when it ends.
pub(crate) struct WriteKey {
    key: String,
    method: &'static str,
    digest: sha2::Sha256,
}

impl WriteKey {
    /// Refused at once when bad (nothing is written), and only kept by
    /// nodes that keep keys. `method` names the kind of write (a key used
    /// for another kind is another request).
    pub(crate) fn of<T>(
        node: &Node,
        request: &Request<T>,
        caller: &Caller,
        method: &'static str,
    ) -> Result<Option<WriteKey>> {
        if node.config.store.is_none() {
            return Ok(None);
        }
        let key = crate::calls::key_in(request.metadata(), &caller.identity_id)?;
        Ok(key.map(|key| WriteKey {
            key,
            method,
            digest: sha2::Sha256::default(),
        }))
    }

    pub(crate) fn digest(&mut self, bytes: &[u8]) {
        use sha2::Digest;
        self.digest.update((bytes.len() as u64).to_be_bytes());
        self.digest.update(bytes);
    }

    pub(crate) fn finish(self) -> crate::calls::CallKey {
        use sha2::Digest;
        crate::calls::CallKey::bound(self.key, self.method, &self.digest.finalize())
    }
}

#[tonic::async_trait]
impl TimeSeries for TimeSeriesService {
    async fn describe(&self, request: Request<pb::DescribeSeriesRequest>) -> Reply<pb::SeriesInfo> {
        let (caller, r) = caller_and_message(request)?;
        let record = resolve(&self.node, &caller, &r.path, Right::Read).await?;
        let session = self.session(&caller, &r.session)?;
        reply(info(&self.node, session, &record).await?)
    }

    type ReadStream = ReadStream;

    async fn read(&self, request: Request<pb::ReadSeriesRequest>) -> Reply<ReadStream> {
        let (caller, r) = caller_and_message(request)?;
        if r.paths.is_empty() {
            return Err(Error::invalid_argument("name at least one series to read").into());
        }
        let form = pb::PointsForm::try_from(r.form).map_err(|_| {
            Error::invalid_argument(format!(
                "bad points form {}: use POINTS_ARROW_IPC (0) or POINTS_COLUMNS (1)",
                r.form
            ))
        })?;
        // Every series is checked before anything streams.
        let mut records = Vec::with_capacity(r.paths.len());
        for path in &r.paths {
            records.push(resolve(&self.node, &caller, path, Right::Read).await?);
        }
        let session = self.session(&caller, &r.session)?;
        let range = (r.start_ms, r.end_ms);
        let node = self.node.clone();
        let (out, responses) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            for record in records {
                let reading = SeriesInterval {
                    session: session.clone(),
                    id: record.id.clone(),
                    range,
                };
                let sent = match form {
                    pb::PointsForm::PointsArrowIpc => {
                        send_series(&node, reading, record, ipc_framing(), &out).await
                    }
                    pb::PointsForm::PointsColumns => {
                        send_series(&node, reading, record, columns_framing(), &out).await
                    }
                };
                match sent {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        let _ = out.send(Err(error.into())).await;
                        return;
                    }
                }
            }
            if let Some(session) = &session {
                session.touch();
            }
        });
        reply(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            responses,
        )))
    }

    async fn write(
        &self,
        request: Request<Streaming<pb::WriteSeriesRequest>>,
    ) -> Reply<pb::WriteSeriesResponse> {
        let caller = caller(&request)?;
        let mut key = WriteKey::of(&self.node, &request, &caller, "TimeSeries/Write")?;
        let mut inbound = request.into_inner();
        let header = match inbound.next().await {
            Some(Ok(pb::WriteSeriesRequest {
                part: Some(WritePart::Header(header)),
            })) => header,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Error::invalid_argument(
                    "a write starts with its header (path and interval), then the Arrow IPC stream",
                )
                .into());
            }
        };
        let record = resolve(&self.node, &caller, &header.path, Right::Write).await?;
        let session = self.session(&caller, &header.session)?;
        if session.is_some() {
            key = None;
        }
        let (key_known, key_promise) = match &mut key {
            Some(key) => {
                key.digest(&prost::Message::encode_to_vec(&header));
                let (known, promise) = tokio::sync::oneshot::channel();
                (Some(known), Some(promise))
            }
            None => (None, None),
        };
        let (pieces, reader) = mpsc::channel::<Piece>(QUEUE);
        let node = self.node.clone();
        let range = (header.start_ms, header.end_ms);
        let limit = node.config.max_message_bytes;
        let writing = tokio::spawn(async move {
            let source = Box::new(move |take: &mut dyn FnMut(&RecordBatch) -> Result<()>| {
                read_batches(reader, limit, take)
            });
            let interval = SeriesInterval::new(session, record.id, range);
            node.timeseries
                .write(interval.replaced_by(source, key_promise))
                .await
        });
        while let Some(message) = inbound.next().await {
            let piece = match message {
                Ok(pb::WriteSeriesRequest {
                    part: Some(WritePart::ArrowIpc(bytes)),
                }) => Ok(bytes),
                Ok(_) => Err(Error::invalid_argument(
                    "the header comes once, first; the messages after it carry arrow_ipc",
                )),
                Err(status) => Err(Error::cancelled(format!(
                    "the write stream broke off: {}",
                    status.message()
                ))),
            };
            let failed = piece.is_err();
            if let (Some(key), Ok(bytes)) = (&mut key, &piece) {
                key.digest(bytes);
            }
            // The writer stops reading once it has failed; its error wins.
            if pieces.send(piece).await.is_err() || failed {
                break;
            }
        }
        drop(pieces);
        // Every point is in: the key, digest and all, for the writer to
        // record (a broken stream drops it, and the write fails anyway).
        if let (Some(key), Some(known)) = (key, key_known) {
            let _ = known.send(key.finish());
        }
        let summary = writing.await.map_err(Error::from)??;
        reply(pb::WriteSeriesResponse {
            points_written: summary.written,
            points_deleted: summary.deleted,
            start_ms: summary.start_ms,
            end_ms: summary.end_ms,
        })
    }
}
