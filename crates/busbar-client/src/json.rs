//! `serde_json::Value` ↔ `google.protobuf.Value`, for room event arguments.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

pub fn to_proto(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(list_to_proto(items)),
        serde_json::Value::Object(map) => Kind::StructValue(Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_proto(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

pub fn list_to_proto(items: Vec<serde_json::Value>) -> ListValue {
    ListValue {
        values: items.into_iter().map(to_proto).collect(),
    }
}

/// Numbers that are whole and within ±2^53 come back as integers.
pub fn from_proto(value: Value) -> serde_json::Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_992.0 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(list)) => list_from_proto(list).into(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, from_proto(v)))
                .collect(),
        ),
    }
}

pub fn list_from_proto(list: ListValue) -> Vec<serde_json::Value> {
    list.values.into_iter().map(from_proto).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let value = serde_json::json!([null, true, 3, -2.5, "x", [1, {"a": {"b": [false]}}]]);
        let items = value.as_array().unwrap().clone();
        assert_eq!(
            serde_json::Value::from(list_from_proto(list_to_proto(items))),
            value
        );
    }
}
