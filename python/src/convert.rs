//! Values across the border: JSON ↔ Python objects, protocol messages →
//! dicts, busbar errors → `busbar.errors` exceptions.

use busbar_client::{Error, ErrorCode};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::Value;
use std::sync::OnceLock;

/// The exception of `busbar.errors` for `error`'s code, with its message and trace id.
pub(crate) fn to_pyerr(py: Python<'_>, error: &Error) -> PyErr {
    let made = py.import("busbar.errors").and_then(|errors| {
        errors.getattr("_from_code")?.call1((
            error.code().as_str_name(),
            error.message(),
            error.trace_id(),
        ))
    });
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(import_failed) => import_failed,
    }
}

/// An INVALID_ARGUMENT error for input the client refuses before sending it.
pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidArgument, message)
}

/// Results that become Python objects once the GIL is held again.
pub(crate) trait ToPython {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>>;
}

impl ToPython for Value {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self).map(Bound::unbind)
    }
}

impl ToPython for Option<Value> {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Some(value) => value.to_python(py),
            None => Ok(py.None()),
        }
    }
}

macro_rules! to_python_via_into_py {
    ($($t:ty),*) => {$(
        impl ToPython for $t {
            fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
                self.into_py_any(py)
            }
        }
    )*};
}

to_python_via_into_py!((), u32, u64, String);

impl ToPython for Option<bytes::Bytes> {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match self {
            Some(chunk) => PyBytes::new(py, &chunk).into_any().unbind(),
            None => py.None(),
        })
    }
}

/// Python object → JSON, for requests and event arguments.
pub(crate) fn py_to_json(value: &Bound<'_, PyAny>) -> Result<Value, Error> {
    if value.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if value.is_instance_of::<PyInt>() {
        if let Ok(i) = value.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = value.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(invalid(format!("integer {value} does not fit in 64 bits")));
    }
    if let Ok(f) = value.cast::<PyFloat>() {
        return serde_json::Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| invalid(format!("{value} has no JSON form")));
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(Value::String(s.to_string()));
    }
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut map = serde_json::Map::new();
        for (key, item) in dict.iter() {
            let key = key
                .cast::<PyString>()
                .map_err(|_| invalid(format!("dict keys must be strings for JSON, not {key:?}")))?;
            map.insert(key.to_string(), py_to_json(&item)?);
        }
        return Ok(Value::Object(map));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let items: Result<Vec<_>, _> = value
            .try_iter()
            .map_err(|e| invalid(e.to_string()))?
            .map(|item| py_to_json(&item.map_err(|e| invalid(e.to_string()))?))
            .collect();
        return Ok(Value::Array(items?));
    }
    let type_name = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    Err(invalid(format!(
        "a {type_name} cannot be sent as JSON: use dict, list, tuple, str, int, float, bool or None"
    )))
}

/// A list of JSON values from a Python sequence (event arguments).
pub(crate) fn py_to_json_list(values: &Bound<'_, PyAny>) -> Result<Vec<Value>, Error> {
    match py_to_json(values)? {
        Value::Array(items) => Ok(items),
        _ => Err(invalid("arguments must be a list or tuple")),
    }
}

pub(crate) fn json_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_bound_py_any(py)?,
            (None, Some(u)) => u.into_bound_py_any(py)?,
            _ => n.as_f64().unwrap_or(f64::NAN).into_bound_py_any(py)?,
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// Bytes from `bytes`, `bytearray` or `memoryview`.
pub(crate) fn py_to_bytes(value: &Bound<'_, PyAny>) -> Result<bytes::Bytes, Error> {
    if let Ok(b) = value.cast::<PyBytes>() {
        return Ok(bytes::Bytes::copy_from_slice(b.as_bytes()));
    }
    value
        .extract::<Vec<u8>>()
        .ok()
        .filter(|_| !value.is_instance_of::<PyString>())
        .map(bytes::Bytes::from)
        .ok_or_else(|| {
            invalid(format!(
                "wire chunks are bytes, bytearray or memoryview, not {}",
                value
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })
}

/// Protocol messages that reach Python as dicts, with their full names
/// (the generated types carry none; the descriptor set is looked up by it).
pub(crate) trait ProtoMessage: prost::Message {
    const FULL_NAME: &'static str;
}

macro_rules! proto_messages {
    ($($name:ident),*) => {$(
        impl ProtoMessage for busbar_proto::v1::$name {
            const FULL_NAME: &'static str = concat!("busbar.v1.", stringify!($name));
        }
    )*};
}

proto_messages!(
    NodeStatus,
    Identity,
    Resource,
    Grant,
    CertificateInfo,
    Procedure,
    DropProcedureResponse,
    SeriesInfo,
    ExecuteSummary,
    PublishSummary,
    ServiceInfo
);

/// A protocol message as the same JSON `call()` returns for it (proto field
/// names, enums by name, 64-bit integers as numbers, every field present),
/// so typed calls give Python the dicts the dynamic path always gave.
pub(crate) fn message_to_json<M: ProtoMessage>(message: &M) -> Value {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        DescriptorPool::decode(busbar_proto::FILE_DESCRIPTOR_SET)
            .expect("busbar-proto's descriptor set decodes")
    });
    let descriptor = pool
        .get_message_by_name(M::FULL_NAME)
        .expect("every busbar message is in the descriptor set");
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message decodes as itself");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("a message serializes to JSON")
}

/// Protocol messages as a list of the dicts `message_to_json` makes.
pub(crate) fn messages_to_json<M: ProtoMessage>(messages: &[M]) -> Value {
    Value::Array(messages.iter().map(message_to_json).collect())
}
