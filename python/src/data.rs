//! Data beyond single statements: stored procedures, sessions and time
//! series. Tables cross to Python through the Arrow C stream interface.

use crate::bridge::{Face, finish};
use crate::connection::Core;
use crate::convert::{ToPython, invalid};
use crate::locked;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use busbar_client::{Error, ErrorCode, POINTS_SCHEMA, ProcedureArgs, SeriesData, Session};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple};
use serde_json::json;
use std::sync::Mutex;

/// Procedure arguments: a list/tuple by position, a dict by name.
pub(crate) fn procedure_args(
    py: Python<'_>,
    args: Option<&Bound<'_, PyAny>>,
    kwargs: Option<&Bound<'_, PyAny>>,
) -> Result<ProcedureArgs, Error> {
    let mut out = ProcedureArgs::new();
    if let Some(args) = args.filter(|a| !a.is_none()) {
        if !(args.is_instance_of::<PyList>() || args.is_instance_of::<PyTuple>()) {
            return Err(invalid("positional arguments come as a list or tuple"));
        }
        for value in args.try_iter().map_err(|e| invalid(e.to_string()))? {
            let value = value.map_err(|e| invalid(e.to_string()))?;
            out = out.arg(crate::sql::param(py, &value)?);
        }
    }
    if let Some(kwargs) = kwargs.filter(|k| !k.is_none()) {
        let kwargs = kwargs
            .cast::<PyDict>()
            .map_err(|_| invalid("keyword arguments come as a dict"))?;
        for (name, value) in kwargs.iter() {
            let name: String = name
                .extract()
                .map_err(|_| invalid("argument names are str"))?;
            out = out.kwarg(name, crate::sql::param(py, &value)?);
        }
    }
    Ok(out)
}

/// `pyarrow.RecordBatchReader`, looked up once.
static RECORD_BATCH_READER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `batches` as a `pyarrow.Table`, through the Arrow C stream interface (the
/// batches' buffers become the table's; nothing is copied).
///
/// Not `pyarrow.table(...)`: it first asks whether its argument is a pandas
/// DataFrame, which imports pandas when pandas is installed. That made the
/// first read or query of a process 0.3-0.5 s slower and loaded some 400
/// modules that a program using only pyarrow never asked for.
pub(crate) fn pyarrow_table(
    py: Python<'_>,
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
) -> PyResult<Bound<'_, PyAny>> {
    let stream = pyo3_arrow::PyTable::try_new(batches, schema)?;
    RECORD_BATCH_READER
        .import(py, "pyarrow", "RecordBatchReader")?
        .call_method1(intern!(py, "from_stream"), (stream,))?
        .call_method0(intern!(py, "read_all"))
}

/// Series read back, one `pyarrow.Table` each (tz-aware UTC timestamps).
pub(crate) struct SeriesTables(pub(crate) Vec<SeriesData>);

impl ToPython for SeriesTables {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let tables = PyList::empty(py);
        for data in self.0 {
            tables.append(pyarrow_table(py, data.batches, POINTS_SCHEMA.clone())?)?;
        }
        Ok(tables.into_any().unbind())
    }
}

impl ToPython for CoreSession {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(Py::new(py, self)?.into_any())
    }
}

/// An open data session. `core()` is a connection whose SQL, procedure and
/// time-series calls run in the session; `end` commits or rolls it back.
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct CoreSession {
    face: Face,
    id: String,
    client: busbar_client::Client,
    session: Mutex<Option<Session>>,
}

impl CoreSession {
    pub(crate) fn new(face: Face, session: Session) -> CoreSession {
        CoreSession {
            face,
            id: session.id().to_string(),
            client: (*session).clone(),
            session: Mutex::new(Some(session)),
        }
    }
}

#[pymethods]
impl CoreSession {
    #[getter]
    fn id(&self) -> String {
        self.id.clone()
    }

    #[getter]
    fn ended(&self) -> bool {
        locked(&self.session).is_none()
    }

    /// A connection whose data calls run in this session.
    fn core(&self) -> Core {
        Core::new(self.face, self.client.clone())
    }

    /// Commits (or rolls back) and ends the session; returns how many
    /// databases and series it had changed.
    #[pyo3(signature = (commit, timeout=None))]
    fn end<'py>(
        &self,
        py: Python<'py>,
        commit: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let session = locked(&self.session).take();
        let limit = crate::connection::duration(timeout, "timeout");
        finish(py, self.face, async move {
            let session = session.ok_or_else(|| {
                Error::new(
                    ErrorCode::FailedPrecondition,
                    "this session has already ended (committed or rolled back)",
                )
            })?;
            let end = async move {
                if commit {
                    session.commit().await
                } else {
                    session.rollback().await
                }
            };
            let ended = crate::connection::within(limit?, end).await?;
            Ok(json!({"databases": ended.databases, "series": ended.series}))
        })
    }
}
