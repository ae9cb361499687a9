//! SQL statements from Python parameters, results to `pyarrow.Table`
//! through the Arrow C stream interface (no per-row Python objects).

use crate::convert::{ToPython, invalid};
use busbar_client::{Error, SqlParam, SqlResult, Statement};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// One parameter: None, bool, int, float, str, bytes-like, date or
/// datetime (naive = UTC, aware = converted to UTC; a date is its midnight
/// UTC), or a numpy scalar of one of those.
pub(crate) fn param(py: Python<'_>, value: &Bound<'_, PyAny>) -> Result<SqlParam, Error> {
    if value.is_none() {
        return Ok(SqlParam::Null);
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(SqlParam::Boolean(b.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        return value
            .extract::<i64>()
            .map(SqlParam::Integer)
            .map_err(|_| invalid(format!("integer parameter {value} does not fit in 64 bits")));
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        return Ok(SqlParam::Real(f.value()));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(SqlParam::Text(s.to_string()));
    }
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(SqlParam::Blob(b.as_bytes().to_vec()));
    }
    let helper = py
        .import("busbar._bridge")
        .and_then(|m| m.getattr("sql_param"))
        .map_err(|e| invalid(e.to_string()))?;
    // datetime, bytearray, memoryview: normalised by the Python helper.
    let normalised = helper.call1((value,)).map_err(|e| invalid(e.to_string()))?;
    let (kind, inner): (String, Bound<'_, PyAny>) = normalised
        .extract()
        .map_err(|e: PyErr| invalid(e.to_string()))?;
    let extracted = |e: PyErr| invalid(e.to_string());
    match kind.as_str() {
        "timestamp_ms" => Ok(SqlParam::TimestampMs(inner.extract().map_err(extracted)?)),
        "blob" => Ok(SqlParam::Blob(inner.extract().map_err(extracted)?)),
        "null" => Ok(SqlParam::Null),
        "bool" | "int" | "real" | "text" => param(py, &inner),
        _ => Err(invalid(format!(
            "a {} cannot be a SQL parameter: use None, bool, int, float, str, bytes, date, datetime or a numpy scalar of one",
            value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))),
    }
}

/// A statement with positional (list/tuple) or named (dict) parameters.
pub(crate) fn statement(
    py: Python<'_>,
    sql: String,
    params: Option<&Bound<'_, PyAny>>,
) -> Result<Statement, Error> {
    let mut statement = Statement::new(sql);
    let Some(params) = params.filter(|p| !p.is_none()) else {
        return Ok(statement);
    };
    if let Ok(named) = params.cast::<PyDict>() {
        for (name, value) in named.iter() {
            let name: String = name
                .extract()
                .map_err(|_| invalid("named parameters need str keys"))?;
            statement = statement.bind_named(name, param(py, &value)?);
        }
    } else if params.is_instance_of::<PyList>() || params.is_instance_of::<PyTuple>() {
        for value in params.try_iter().map_err(|e| invalid(e.to_string()))? {
            statement = statement.bind(param(py, &value.map_err(|e| invalid(e.to_string()))?)?);
        }
    } else {
        return Err(invalid(
            "params must be a list or tuple (positional ?) or a dict (named :name)",
        ));
    }
    Ok(statement)
}

/// The parameter rows of an executemany: an iterable of lists, tuples or
/// dicts, as `execute` takes them.
pub(crate) fn statements(py: Python<'_>, rows: &Bound<'_, PyAny>) -> Result<Vec<Statement>, Error> {
    let rows = rows
        .try_iter()
        .map_err(|_| invalid("executemany takes an iterable of parameter rows"))?;
    let mut statements = Vec::new();
    for (n, row) in rows.enumerate() {
        let row = row.map_err(|e| invalid(e.to_string()))?;
        let bound = statement(py, String::new(), Some(&row))
            .map_err(|e| invalid(format!("row {}: {}", n + 1, e.message())))?;
        statements.push(bound);
    }
    Ok(statements)
}

/// A statement's result on its way to Python: a `pyarrow.Table` whose
/// schema metadata holds the statement's summary (`busbar.rows_affected`,
/// `busbar.last_insert_rowid`), beside any metadata the node sent.
pub(crate) struct SqlTable(pub(crate) SqlResult);

impl ToPython for SqlTable {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let SqlResult {
            schema,
            batches,
            summary,
        } = self.0;
        // A statement without a result set gives a table without columns.
        let mut schema = schema.map_or_else(arrow_schema::Schema::empty, |s| (*s).clone());
        schema.metadata.extend([
            (
                "busbar.rows_affected".to_string(),
                summary.rows_affected.to_string(),
            ),
            (
                "busbar.last_insert_rowid".to_string(),
                summary.last_insert_rowid.to_string(),
            ),
        ]);
        // The batches keep their own schema: a table's batches need the same
        // fields, not the same metadata.
        crate::data::pyarrow_table(py, batches, std::sync::Arc::new(schema)).map(Bound::unbind)
    }
}
