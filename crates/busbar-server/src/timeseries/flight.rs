//! Plain Arrow Flight: time series. Every descriptor, ticket and action that
//! is not Flight SQL lands here (see [`super::flight`]).
//!
//! - `FlightDescriptor.for_path("/home/me/wind")` (or the path's segments,
//!   `for_path("home", "me", "wind")`) names all points of a series;
//!   `for_command('{"path": "/home/me/wind", "start": …, "end": …}')` an
//!   interval `[start, end)`, each end ISO 8601 / RFC 3339 (no offset: UTC)
//!   or epoch milliseconds, either may be left out.
//! - `GetFlightInfo` answers with the points schema and one endpoint whose
//!   ticket is the same JSON; `DoGet` streams the points (rights are checked
//!   again on every ticket, so a ticket grants nothing by itself).
//! - `DoPut` replaces the interval the descriptor names, or the table's own
//!   first..last timestamp, exactly as `TimeSeries/Write` does; its one
//!   `PutResult` carries the write summary as JSON.
//! - `ListFlights` lists every series the caller may read.

use super::service::{WriteKey, resolve, start_read};
use crate::error::{Error, Result};
use crate::grpc::flight::FlightDataStream;
use crate::grpc::flight::{caller_of, checked_flight_data, flight_error, info};
use crate::node::Node;
use crate::store::{ResourceKind, ResourceRecord, Right};
use crate::timeseries::model::{POINTS_SCHEMA, parse_time};
use crate::timeseries::{PointsSink, SeriesInterval};
use arrow_array::RecordBatch;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{
    Action, ActionType, Criteria, FlightData, FlightDescriptor, FlightInfo, PutResult, SchemaAsIpc,
    Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// What a descriptor or ticket names: a series and an interval.
#[derive(Debug, Clone, PartialEq)]
struct Points {
    path: String,
    start: Option<i64>,
    end: Option<i64>,
}

impl Points {
    fn ticket(&self) -> Vec<u8> {
        serde_json::json!({"path": self.path, "start": self.start, "end": self.end})
            .to_string()
            .into_bytes()
    }

    fn range(&self) -> (Option<i64>, Option<i64>) {
        (self.start, self.end)
    }

    /// `{"path": …, "start": …, "end": …}`, ends as text or epoch ms.
    fn from_json(bytes: &[u8], what: &str) -> Result<Points> {
        let bad = |why: String| {
            Error::invalid_argument(format!(
                "the {what} is not a series: {why}; use JSON {{\"path\": \"/home/me/wind\", \
                 \"start\": \"2026-01-01T00:00:00Z\", \"end\": …}} (start and end optional, \
                 ISO 8601 or epoch ms), or a path descriptor"
            ))
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let path = value["path"]
            .as_str()
            .ok_or_else(|| bad("it has no \"path\" string".into()))?
            .to_string();
        let end_of = |key: &str| -> Result<Option<i64>> {
            match &value[key] {
                serde_json::Value::Null => Ok(None),
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("\"{key}\" is not whole milliseconds"))),
                serde_json::Value::String(text) => parse_time(text).map(Some),
                _ => Err(bad(format!("\"{key}\" is neither a time nor a number"))),
            }
        };
        Ok(Points {
            path,
            start: end_of("start")?,
            end: end_of("end")?,
        })
    }

    fn from_descriptor(descriptor: &FlightDescriptor) -> Result<Points> {
        if descriptor.r#type == DescriptorType::Path as i32 {
            let path = match descriptor.path.as_slice() {
                [one] if one.starts_with('/') => one.clone(),
                segments => format!("/{}", segments.join("/")),
            };
            return Ok(Points {
                path,
                start: None,
                end: None,
            });
        }
        Points::from_json(&descriptor.cmd, "descriptor's command")
    }
}

fn descriptor_of(path: &str) -> FlightDescriptor {
    FlightDescriptor::new_path(vec![path.to_string()])
}

async fn series_info(
    node: &Arc<Node>,
    record: &ResourceRecord,
    points: &Points,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo> {
    let info = info(&POINTS_SCHEMA, points.ticket(), descriptor)?;
    // The total is known cheaply only for the whole series.
    if points.start.is_some() || points.end.is_some() {
        return Ok(info);
    }
    let extent = node.timeseries.extent(None, &record.id).await?;
    Ok(info.with_total_records(extent.points as i64))
}

/// The series the caller may read.
pub async fn list_flights(
    node: &Arc<Node>,
    request: Request<Criteria>,
) -> Result<Response<BoxStream<'static, Result<FlightInfo, Status>>>> {
    // A caller without credentials (the call layer lets only this Flight
    // call through without them) may read nothing, so sees nothing.
    let Some(caller) = request.extensions().get::<crate::auth::access::Caller>() else {
        return Ok(Response::new(futures::stream::empty().boxed()));
    };
    let mut infos = Vec::new();
    for record in node.store.list_resources("/", true).await? {
        if record.kind != ResourceKind::Timeseries
            || node.access.right(caller, &record.path).await? < Some(Right::Read)
        {
            continue;
        }
        let points = Points {
            path: record.path.clone(),
            start: None,
            end: None,
        };
        let descriptor = descriptor_of(&record.path);
        infos.push(Ok(series_info(node, &record, &points, descriptor).await?));
    }
    Ok(Response::new(futures::stream::iter(infos).boxed()))
}

pub async fn get_flight_info(
    node: &Arc<Node>,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>> {
    let caller = caller_of(&request)?;
    let descriptor = request.into_inner();
    let points = Points::from_descriptor(&descriptor)?;
    let record = resolve(node, &caller, &points.path, Right::Read).await?;
    Ok(Response::new(
        series_info(node, &record, &points, descriptor).await?,
    ))
}

pub async fn do_get(
    node: &Arc<Node>,
    request: Request<Ticket>,
) -> Result<Response<BoxStream<'static, Result<FlightData, Status>>>> {
    let caller = caller_of(&request)?;
    let points = Points::from_json(&request.get_ref().ticket, "ticket")?;
    let record = resolve(node, &caller, &points.path, Right::Read).await?;
    let read = SeriesInterval {
        session: None,
        id: record.id,
        range: points.range(),
    };
    let (messages, reading) = start_read(node, read, None, PointsSink::Ipc);
    // Storage's IPC messages go out as they are: metadata and body of each
    // are the FlightData's header and body, after the schema.
    let schema = FlightData::from(SchemaAsIpc::new(
        &POINTS_SCHEMA,
        &IpcWriteOptions::default(),
    ));
    let points = tokio_stream::wrappers::ReceiverStream::new(messages).map(|message| {
        Ok(FlightData::new()
            .with_data_header(message.metadata())
            .with_data_body(message.body()))
    });
    // After the last message, the reader's own error (if any) ends the stream.
    let tail = futures::stream::once(async move {
        match reading.await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(Err(Status::from(error))),
            Err(error) => Some(Err(Status::from(Error::from(error)))),
        }
    })
    .filter_map(futures::future::ready);
    Ok(Response::new(
        futures::stream::once(futures::future::ready(Ok(schema)))
            .chain(points)
            .chain(tail)
            .boxed(),
    ))
}

/// `data` still holds the first message (descriptor and schema).
pub async fn do_put(
    node: &Arc<Node>,
    descriptor: FlightDescriptor,
    data: Request<FlightDataStream>,
) -> Result<Response<BoxStream<'static, Result<PutResult, Status>>>> {
    let caller = caller_of(&data)?;
    // A Flight client sends the key as a call header, as Busbar's own do.
    let key = WriteKey::of(node, &data, &caller, "FlightService/DoPut")?;
    let points = Points::from_descriptor(&descriptor)?;
    let record = resolve(node, &caller, &points.path, Right::Write).await?;
    // The key is bound to all the call carries: its descriptor and every
    // Flight message (header and body), as they pass.
    let key = key.map(|mut key| {
        key.digest(&prost::Message::encode_to_vec(&descriptor));
        Arc::new(std::sync::Mutex::new(key))
    });
    let digesting = key.clone();
    let flight_data = checked_flight_data(data.into_inner()).inspect(move |message| {
        if let (Some(key), Ok(message)) = (&digesting, message) {
            let mut key = key.lock().unwrap_or_else(|p| p.into_inner());
            key.digest(&message.data_header);
            key.digest(&message.data_body);
        }
    });
    let mut batches =
        arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(flight_data);
    let (key_known, key_promise) = match key {
        Some(_) => {
            let (known, promise) = tokio::sync::oneshot::channel();
            (Some(known), Some(promise))
        }
        None => (None, None),
    };
    // Decoding here, checking and storing in a blocking thread; a bounded
    // queue between them, and a decode error ends the write (rolled back).
    let (queue, mut received) = mpsc::channel::<Result<RecordBatch>>(4);
    let writing = {
        let node = node.clone();
        let range = points.range();
        tokio::spawn(async move {
            let source = Box::new(move |take: &mut dyn FnMut(&RecordBatch) -> Result<()>| {
                while let Some(batch) = received.blocking_recv() {
                    take(&batch?)?;
                }
                Ok(())
            });
            let interval = SeriesInterval::new(None, record.id, range);
            node.timeseries
                .write(interval.replaced_by(source, key_promise))
                .await
        })
    };
    while let Some(item) = batches.try_next().await.map_err(flight_error).transpose() {
        let failed = item.is_err();
        if queue.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(queue);
    // Every message is in: the key, digest and all, for the writer to record.
    drop(batches);
    if let (Some(key), Some(known)) = (key, key_known) {
        let key = match Arc::try_unwrap(key) {
            Ok(key) => key.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(_) => return Err(Error::internal("a write's key is still being digested")),
        };
        let _ = known.send(key.finish());
    }
    let summary = writing.await??;
    let result = serde_json::json!({
        "points_written": summary.written,
        "points_deleted": summary.deleted,
        "start_ms": summary.start_ms,
        "end_ms": summary.end_ms,
    });
    Ok(Response::new(
        futures::stream::once(async move {
            Ok(PutResult {
                app_metadata: result.to_string().into_bytes().into(),
            })
        })
        .boxed(),
    ))
}

/// Actions other than Flight SQL's.
pub async fn do_action(
    _node: &Node,
    request: Request<Action>,
) -> Result<Response<BoxStream<'static, Result<arrow_flight::Result, Status>>>> {
    Err(Error::invalid_argument(format!(
        "unknown Flight action {:?}; ListActions lists the ones this node serves",
        request.get_ref().r#type
    )))
}

/// Actions this module serves, for `ListActions`.
pub fn list_actions(_node: &Node) -> Vec<ActionType> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_name_series_and_intervals() {
        let by_path = FlightDescriptor::new_path(vec!["/home/me/wind".into()]);
        assert_eq!(
            Points::from_descriptor(&by_path).unwrap().path,
            "/home/me/wind"
        );
        let segments = FlightDescriptor::new_path(vec!["home".into(), "me".into(), "wind".into()]);
        assert_eq!(
            Points::from_descriptor(&segments).unwrap().path,
            "/home/me/wind"
        );
        let command = FlightDescriptor::new_cmd(
            r#"{"path": "/w", "start": "2026-01-01T01:00:00+01:00", "end": 1767229200000}"#,
        );
        let points = Points::from_descriptor(&command).unwrap();
        assert_eq!(
            points.range(),
            (Some(1_767_225_600_000), Some(1_767_229_200_000))
        );
        assert_eq!(
            Points::from_json(&points.ticket(), "ticket").unwrap(),
            points
        );
        let bad = FlightDescriptor::new_cmd(r#"{"start": 1}"#);
        assert!(
            Points::from_descriptor(&bad)
                .unwrap_err()
                .message
                .contains("no \"path\"")
        );
        let bad = FlightDescriptor::new_cmd(r#"{"path": "/w", "end": "soon"}"#);
        assert!(
            Points::from_descriptor(&bad)
                .unwrap_err()
                .message
                .contains("bad time")
        );
    }
}
