//! Transport sessions (`conn.transport(...)`): the results of pops and
//! peeks as Python dicts (the payload as `bytes`), and the checks of what
//! Python hands over.

use crate::convert::{ToPython, invalid};
use busbar_client::{Error, TransportMessage};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString};
use std::collections::HashMap;
use std::time::Duration;

/// A popped or peeked message (or none): a dict with id, topic, payload
/// (bytes), metadata, pushed_ms, receipt ("" unless leased) and
/// lease_expires_ms (0 unless leased), or None.
pub(crate) struct Popped(pub(crate) Option<TransportMessage>);

impl ToPython for Popped {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let Some(message) = self.0 else {
            return Ok(py.None());
        };
        let dict = PyDict::new(py);
        dict.set_item("id", message.id)?;
        dict.set_item("topic", message.topic)?;
        dict.set_item("payload", PyBytes::new(py, &message.payload))?;
        dict.set_item("metadata", message.metadata)?;
        dict.set_item("pushed_ms", message.pushed_ms)?;
        dict.set_item("receipt", message.receipt)?;
        dict.set_item("lease_expires_ms", message.lease_expires_ms)?;
        Ok(dict.into_any().unbind())
    }
}

/// Metadata from a Python dict of str to str (None: empty).
pub(crate) fn metadata(given: Option<&Bound<'_, PyAny>>) -> PyResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    let Some(given) = given.filter(|g| !g.is_none()) else {
        return Ok(out);
    };
    let dict = given.cast::<PyDict>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "metadata is a dict of str to str, not {}",
            type_name(given)
        ))
    })?;
    for (key, value) in dict.iter() {
        let (Ok(k), Ok(v)) = (key.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "metadata keys and values are str: {} = {} ({}); convert it with str()",
                key.repr().map(|r| r.to_string()).unwrap_or_default(),
                value.repr().map(|r| r.to_string()).unwrap_or_default(),
                type_name(&value)
            )));
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A payload: bytes, bytearray or memoryview (TypeError otherwise).
pub(crate) fn payload(given: &Bound<'_, PyAny>) -> PyResult<bytes::Bytes> {
    if let Ok(b) = given.cast::<PyBytes>() {
        return Ok(bytes::Bytes::copy_from_slice(b.as_bytes()));
    }
    if given.is_instance_of::<PyByteArray>() || given.is_instance_of::<PyMemoryView>() {
        let copied = given.py().get_type::<PyBytes>().call1((given,))?;
        let copied = copied.cast::<PyBytes>()?;
        return Ok(bytes::Bytes::copy_from_slice(copied.as_bytes()));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "a payload is bytes, bytearray or memoryview, not {}{}",
        type_name(given),
        if given.is_instance_of::<PyString>() {
            " (encode text: text.encode())"
        } else {
            ""
        }
    )))
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// Seconds from Python as a wait or lease: 0 or more, finite.
pub(crate) fn seconds(value: f64, what: &str) -> Result<Duration, Error> {
    if value.is_finite() && (0.0..1e9).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(invalid(format!(
            "bad {what} {value}: use 0 or more seconds"
        )))
    }
}
