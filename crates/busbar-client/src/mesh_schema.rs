//! Protobuf descriptors synthesized from a plain interface schema, for SDKs
//! whose interfaces are declared in their own language (the Python
//! `@busbar.interface`): each method's request is a message whose fields
//! are the method's parameters, by name and in order; its reply is a
//! message whose one field, `value`, holds the return value (no field when
//! the method returns nothing).
//!
//! The schema is plain JSON, so an SDK needs no protobuf library of its own:
//!
//! ```
//! let schema: busbar_client::InterfaceSchema = serde_json::from_value(serde_json::json!({
//!     "service": "mesh.trust.Tokenizer",
//!     "methods": [
//!         {"name": "apply", "params": [{"name": "kind", "type": "string"},
//!                                      {"name": "duration", "type": "int64"}],
//!          "returns": "string"},
//!         {"name": "verify", "params": [{"name": "token", "type": "string"}],
//!          "returns": "bool", "idempotent": true},
//!     ],
//! })).unwrap();
//! let descriptors = busbar_client::interface_descriptors(&schema).unwrap();
//! assert_eq!(descriptors, busbar_client::interface_descriptors(&schema).unwrap());
//! ```
//!
//! The output is deterministic: the same schema gives the same bytes
//! (methods and messages sorted by name), because the node accepts a file
//! it already serves only when it is identical.

use crate::error::{Error, Result};
use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::method_options::IdempotencyLevel;
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    MethodDescriptorProto, MethodOptions, OneofDescriptorProto, ServiceDescriptorProto,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The reply message's field that holds a method's return value.
pub const REPLY_FIELD: &str = "value";

/// Where `google.protobuf.Struct` is defined (the node has the file).
const STRUCT_FILE: &str = "google/protobuf/struct.proto";

/// A service: its protobuf full name, its methods and the message types
/// its parameters and return values use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceSchema {
    /// "package.Service", e.g. "mesh.trust.Tokenizer".
    pub service: String,
    pub methods: Vec<MethodSchema>,
    #[serde(default)]
    pub messages: Vec<MessageSchema>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSchema {
    pub name: String,
    /// The request's fields, numbered from 1 in this order. A client
    /// streaming method has one: each request message carries one item.
    #[serde(default)]
    pub params: Vec<FieldSchema>,
    /// The return value's type (for a server streaming method, each
    /// reply's); `None`: the reply is an empty message.
    #[serde(default)]
    pub returns: Option<TypeSchema>,
    /// Marks the method `idempotency_level = IDEMPOTENT`: the node may run
    /// it again on another provider when one is lost mid-call.
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default)]
    pub client_streaming: bool,
    #[serde(default)]
    pub server_streaming: bool,
}

/// A message type of the interface's own (a Python dataclass or TypedDict).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSchema {
    /// Its name within the interface; the protobuf message is named
    /// `<Service><name>` in the service's package.
    pub name: String,
    pub fields: Vec<FieldSchema>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSchema {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: TypeSchema,
}

/// A field's type. In JSON: `"string"`, `"int64"`, `"double"`, `"bool"`,
/// `"bytes"`, `"struct"` (google.protobuf.Struct), `{"message": NAME}`,
/// `{"list": TYPE}` (repeated) or `{"optional": TYPE}` (proto3 optional for
/// a scalar; a message field has presence anyway).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeSchema {
    String,
    Int64,
    Double,
    Bool,
    Bytes,
    Struct,
    Message(String),
    List(Box<TypeSchema>),
    Optional(Box<TypeSchema>),
}

impl TypeSchema {
    fn describe(&self) -> String {
        match self {
            TypeSchema::String => "string".into(),
            TypeSchema::Int64 => "int64".into(),
            TypeSchema::Double => "double".into(),
            TypeSchema::Bool => "bool".into(),
            TypeSchema::Bytes => "bytes".into(),
            TypeSchema::Struct => "struct".into(),
            TypeSchema::Message(name) => format!("message {name}"),
            TypeSchema::List(item) => format!("list of {}", item.describe()),
            TypeSchema::Optional(item) => format!("optional {}", item.describe()),
        }
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of one file,
/// `busbar/mesh/<service>.proto`, defining the service and its messages
/// (importing only `google/protobuf/struct.proto`, when a field is a
/// struct). INVALID_ARGUMENT, naming the culprit, for a schema protobuf
/// cannot express: a bad name, two of one name, a list of lists, an
/// unknown message.
pub fn interface_descriptors(schema: &InterfaceSchema) -> Result<Vec<u8>> {
    let file = interface_file(schema)?;
    // The pool checks what the rules above do not: that every name
    // resolves and nothing is defined twice.
    let mut pool = DescriptorPool::global();
    pool.add_file_descriptor_proto(file.clone()).map_err(|e| {
        Error::invalid_argument(format!(
            "interface {} does not make a valid protobuf file: {e}",
            schema.service
        ))
    })?;
    Ok(FileDescriptorSet { file: vec![file] }.encode_to_vec())
}

/// The file `interface_descriptors` encodes.
fn interface_file(schema: &InterfaceSchema) -> Result<FileDescriptorProto> {
    let service = schema.service.as_str();
    let (package, simple) = match service.rsplit_once('.') {
        Some((package, simple)) => (package, simple),
        None => ("", service),
    };
    if !service.split('.').all(is_identifier) {
        return Err(Error::invalid_argument(format!(
            "bad interface name {service:?}: use a protobuf full name, dot-separated identifiers such as mesh.trust.Tokenizer"
        )));
    }
    if schema.methods.is_empty() {
        return Err(Error::invalid_argument(format!(
            "interface {service} declares no methods"
        )));
    }
    let mut builder = Builder {
        service,
        package,
        simple,
        names: BTreeMap::new(),
        uses_struct: false,
    };
    let mut own: BTreeMap<&str, &MessageSchema> = BTreeMap::new();
    for message in &schema.messages {
        if !is_identifier(&message.name) {
            return Err(Error::invalid_argument(format!(
                "interface {service}: bad message name {:?}; use an identifier",
                message.name
            )));
        }
        if own.insert(&message.name, message).is_some() {
            return Err(Error::invalid_argument(format!(
                "interface {service}: two message types are named {}; rename one",
                message.name
            )));
        }
    }
    let mut messages = Vec::new();
    for message in own.values() {
        let name = builder.claim(
            format!("{simple}{}", message.name),
            format!("type {}", message.name),
        )?;
        messages.push(builder.message(
            name,
            &message.fields,
            &own,
            &format!("type {}", message.name),
        )?);
    }
    let mut methods: Vec<&MethodSchema> = schema.methods.iter().collect();
    methods.sort_by(|a, b| a.name.cmp(&b.name));
    let mut method_protos = Vec::new();
    for (i, method) in methods.iter().enumerate() {
        let name = &method.name;
        if !is_identifier(name) {
            return Err(Error::invalid_argument(format!(
                "interface {service}: bad method name {name:?}; use an identifier"
            )));
        }
        if i > 0 && methods[i - 1].name == *name {
            return Err(Error::invalid_argument(format!(
                "interface {service} has two methods named {name}"
            )));
        }
        if method.client_streaming && method.params.len() != 1 {
            return Err(Error::invalid_argument(format!(
                "{service}/{name} streams its requests, so it takes exactly one parameter (the stream's items), not {}",
                method.params.len()
            )));
        }
        let capital = capitalized(name);
        let request = builder.claim(
            format!("{simple}{capital}Request"),
            format!("the request of {name}"),
        )?;
        let reply = builder.claim(
            format!("{simple}{capital}Reply"),
            format!("the reply of {name}"),
        )?;
        let returns: Vec<FieldSchema> = method
            .returns
            .iter()
            .map(|ty| FieldSchema {
                name: REPLY_FIELD.into(),
                ty: ty.clone(),
            })
            .collect();
        messages.push(builder.message(
            request.clone(),
            &method.params,
            &own,
            &format!("method {name}"),
        )?);
        messages.push(builder.message(
            reply.clone(),
            &returns,
            &own,
            &format!("the return value of {name}"),
        )?);
        method_protos.push(MethodDescriptorProto {
            name: Some(name.clone()),
            input_type: Some(builder.qualified(&request)),
            output_type: Some(builder.qualified(&reply)),
            options: method.idempotent.then(|| MethodOptions {
                idempotency_level: Some(IdempotencyLevel::Idempotent as i32),
                ..Default::default()
            }),
            client_streaming: Some(method.client_streaming),
            server_streaming: Some(method.server_streaming),
        });
    }
    messages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(FileDescriptorProto {
        name: Some(format!("busbar/mesh/{service}.proto")),
        package: (!package.is_empty()).then(|| package.to_string()),
        dependency: if builder.uses_struct {
            vec![STRUCT_FILE.into()]
        } else {
            Vec::new()
        },
        message_type: messages,
        service: vec![ServiceDescriptorProto {
            name: Some(simple.into()),
            method: method_protos,
            options: None,
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    })
}

struct Builder<'a> {
    service: &'a str,
    package: &'a str,
    simple: &'a str,
    /// Message names taken in the file, and by what (for the error).
    names: BTreeMap<String, String>,
    uses_struct: bool,
}

impl Builder<'_> {
    /// Takes a message name, refusing one already taken.
    fn claim(&mut self, name: String, by: String) -> Result<String> {
        if let Some(first) = self.names.get(&name) {
            return Err(Error::invalid_argument(format!(
                "interface {}: {first} and {by} would both be the message {}; rename one",
                self.service,
                self.qualified(&name).trim_start_matches('.')
            )));
        }
        self.names.insert(name.clone(), by);
        Ok(name)
    }

    fn qualified(&self, name: &str) -> String {
        if self.package.is_empty() {
            format!(".{name}")
        } else {
            format!(".{}.{name}", self.package)
        }
    }

    /// A message with `fields`, numbered from 1 in order. `what` names its
    /// origin in errors.
    fn message(
        &mut self,
        name: String,
        fields: &[FieldSchema],
        own: &BTreeMap<&str, &MessageSchema>,
        what: &str,
    ) -> Result<DescriptorProto> {
        let mut message = DescriptorProto {
            name: Some(name),
            ..Default::default()
        };
        let mut seen = BTreeSet::new();
        let mut json_names = BTreeMap::new();
        for (i, field) in fields.iter().enumerate() {
            let field_name = &field.name;
            let place = || format!("{}: {what}, field {field_name}", self.service);
            if !is_identifier(field_name) {
                return Err(Error::invalid_argument(format!(
                    "{}: bad name; use an identifier",
                    place()
                )));
            }
            if !seen.insert(field_name.clone()) {
                return Err(Error::invalid_argument(format!(
                    "{}: the name is given twice",
                    place()
                )));
            }
            let json_name = json_name(field_name);
            if let Some(other) = json_names.insert(json_name.clone(), field_name.clone()) {
                return Err(Error::invalid_argument(format!(
                    "{}: its JSON name {json_name} is also {other}'s; rename one",
                    place()
                )));
            }
            let (ty, label, optional) = match &field.ty {
                TypeSchema::List(item) => match item.as_ref() {
                    TypeSchema::List(_) | TypeSchema::Optional(_) => {
                        return Err(Error::invalid_argument(format!(
                            "{}: a {} cannot be a protobuf field (a repeated field holds plain items); wrap the inner value in a message",
                            place(),
                            field.ty.describe()
                        )));
                    }
                    item => (item, Label::Repeated, false),
                },
                TypeSchema::Optional(item) => match item.as_ref() {
                    TypeSchema::List(_) | TypeSchema::Optional(_) => {
                        return Err(Error::invalid_argument(format!(
                            "{}: a {} cannot be a protobuf field (a repeated field has no presence); use the list itself, empty for none",
                            place(),
                            field.ty.describe()
                        )));
                    }
                    item => (item, Label::Optional, true),
                },
                item => (item, Label::Optional, false),
            };
            let (kind, type_name) = match ty {
                TypeSchema::String => (Type::String, None),
                TypeSchema::Int64 => (Type::Int64, None),
                TypeSchema::Double => (Type::Double, None),
                TypeSchema::Bool => (Type::Bool, None),
                TypeSchema::Bytes => (Type::Bytes, None),
                TypeSchema::Struct => {
                    self.uses_struct = true;
                    (Type::Message, Some(".google.protobuf.Struct".to_string()))
                }
                TypeSchema::Message(target) => {
                    if !own.contains_key(target.as_str()) {
                        return Err(Error::invalid_argument(format!(
                            "{}: no message type {target} is declared",
                            place()
                        )));
                    }
                    (
                        Type::Message,
                        Some(self.qualified(&format!("{}{target}", self.simple))),
                    )
                }
                TypeSchema::List(_) | TypeSchema::Optional(_) => unreachable!("matched above"),
            };
            // A message field has presence anyway; only a scalar needs
            // proto3's `optional` (a synthetic one-field oneof) for it.
            let synthetic = optional && kind != Type::Message;
            if synthetic {
                message.oneof_decl.push(OneofDescriptorProto {
                    name: Some(format!("_{field_name}")),
                    options: None,
                });
            }
            message.field.push(FieldDescriptorProto {
                name: Some(field_name.clone()),
                number: Some(i as i32 + 1),
                label: Some(label as i32),
                r#type: Some(kind as i32),
                type_name,
                json_name: Some(json_name),
                oneof_index: synthetic.then(|| message.oneof_decl.len() as i32 - 1),
                proto3_optional: synthetic.then_some(true),
                ..Default::default()
            });
        }
        Ok(message)
    }
}

/// A protobuf identifier: a letter or `_`, then letters, digits and `_`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// The JSON name protoc gives a field: underscores dropped, the letter
/// after each one capitalized (`user_id` → `userId`). Filled in as protoc
/// does, so a client that reads descriptors (grpcio's json_format) sees
/// the name it expects.
fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::{DynamicMessage, Kind};
    use serde_json::json;

    fn schema(value: serde_json::Value) -> InterfaceSchema {
        serde_json::from_value(value).expect("a schema")
    }

    fn pool(schema: &InterfaceSchema) -> DescriptorPool {
        let mut pool = DescriptorPool::global();
        pool.decode_file_descriptor_set(interface_descriptors(schema).unwrap().as_slice())
            .unwrap();
        pool
    }

    fn tokenizer() -> serde_json::Value {
        json!({
            "service": "mesh.trust.Tokenizer",
            "methods": [
                {"name": "verify", "params": [{"name": "token", "type": "string"}],
                 "returns": "bool", "idempotent": true},
                {"name": "apply", "params": [{"name": "kind", "type": "string"},
                                             {"name": "duration", "type": "int64"}],
                 "returns": "string"},
                {"name": "nothing"},
            ],
        })
    }

    #[test]
    fn methods_take_their_parameters_as_fields_and_answer_in_value() {
        let pool = pool(&schema(tokenizer()));
        let file = pool
            .get_file_by_name("busbar/mesh/mesh.trust.Tokenizer.proto")
            .unwrap();
        assert_eq!(file.package_name(), "mesh.trust");
        let service = pool.get_service_by_name("mesh.trust.Tokenizer").unwrap();
        let names: Vec<_> = service.methods().map(|m| m.name().to_string()).collect();
        assert_eq!(names, ["apply", "nothing", "verify"]);
        let apply = service.methods().find(|m| m.name() == "apply").unwrap();
        assert_eq!(
            apply.input().full_name(),
            "mesh.trust.TokenizerApplyRequest"
        );
        let fields: Vec<_> = apply
            .input()
            .fields()
            .map(|f| (f.name().to_string(), f.number(), f.kind()))
            .collect();
        assert_eq!(
            fields,
            [
                ("kind".to_string(), 1, Kind::String),
                ("duration".to_string(), 2, Kind::Int64)
            ]
        );
        let value = apply.output().get_field_by_name(REPLY_FIELD).unwrap();
        assert_eq!(value.kind(), Kind::String);
        let nothing = service.methods().find(|m| m.name() == "nothing").unwrap();
        assert_eq!(nothing.output().fields().count(), 0);
        let verify = service.methods().find(|m| m.name() == "verify").unwrap();
        assert_eq!(
            verify
                .method_descriptor_proto()
                .options
                .as_ref()
                .unwrap()
                .idempotency_level(),
            IdempotencyLevel::Idempotent
        );
        assert!(apply.method_descriptor_proto().options.is_none());
    }

    #[test]
    fn the_same_interface_gives_the_same_bytes_whatever_the_order_of_methods() {
        let one = interface_descriptors(&schema(tokenizer())).unwrap();
        let mut reordered = schema(tokenizer());
        reordered.methods.reverse();
        assert_eq!(one, interface_descriptors(&reordered).unwrap());
    }

    #[test]
    fn lists_optionals_structs_and_nested_messages_map_to_protobuf() {
        let schema = schema(json!({
            "service": "mesh.shapes.Plotter",
            "methods": [{
                "name": "plot",
                "params": [
                    {"name": "points", "type": {"list": {"message": "Point"}}},
                    {"name": "label", "type": {"optional": "string"}},
                    {"name": "style", "type": "struct"},
                    {"name": "raw", "type": "bytes"},
                ],
                "returns": {"optional": {"message": "Point"}},
                "server_streaming": true,
            }],
            "messages": [
                {"name": "Point", "fields": [
                    {"name": "x", "type": "double"},
                    {"name": "children", "type": {"list": {"message": "Point"}}},
                    {"name": "is_set", "type": "bool"},
                ]},
            ],
        }));
        let pool = pool(&schema);
        let plot = pool
            .get_service_by_name("mesh.shapes.Plotter")
            .unwrap()
            .methods()
            .next()
            .unwrap();
        assert!(plot.is_server_streaming() && !plot.is_client_streaming());
        let input = plot.input();
        let points = input.get_field_by_name("points").unwrap();
        assert!(points.is_list());
        assert_eq!(
            points.kind().as_message().unwrap().full_name(),
            "mesh.shapes.PlotterPoint"
        );
        let label = input.get_field_by_name("label").unwrap();
        assert!(label.supports_presence() && label.containing_oneof().is_some());
        assert_eq!(
            input
                .get_field_by_name("style")
                .unwrap()
                .kind()
                .as_message()
                .unwrap()
                .full_name(),
            "google.protobuf.Struct"
        );
        let point = pool
            .get_message_by_name("mesh.shapes.PlotterPoint")
            .unwrap();
        assert_eq!(
            point.get_field_by_name("is_set").unwrap().json_name(),
            "isSet"
        );
        // JSON in and out with proto field names.
        let request = DynamicMessage::deserialize(
            input.clone(),
            json!({"points": [{"x": 1.5, "children": [{"x": 2}]}], "style": {"a": 1}}),
        )
        .unwrap();
        assert!(!request.has_field_by_name("label"));
        let file = pool
            .get_file_by_name("busbar/mesh/mesh.shapes.Plotter.proto")
            .unwrap();
        assert_eq!(
            file.file_descriptor_proto().dependency,
            ["google/protobuf/struct.proto"]
        );
    }

    #[test]
    fn what_protobuf_cannot_say_is_refused_naming_the_place() {
        let refused = |value: serde_json::Value, expected: &str| {
            let error = interface_descriptors(&schema(value)).unwrap_err();
            assert_eq!(error.code(), crate::ErrorCode::InvalidArgument);
            assert!(
                error.message().contains(expected),
                "{} lacks {expected:?}",
                error.message()
            );
        };
        refused(
            json!({"service": "mesh.x.S", "methods": [{"name": "m", "params": [
                {"name": "grid", "type": {"list": {"list": "int64"}}}]}]}),
            "method m, field grid: a list of list of int64",
        );
        refused(
            json!({"service": "mesh.x.S", "methods": [{"name": "m", "params": [
                {"name": "p", "type": {"message": "Nope"}}]}]}),
            "no message type Nope",
        );
        refused(
            json!({"service": "mesh.x.S", "methods": [{"name": "m"}, {"name": "M"}]}),
            "would both be the message mesh.x.SMRequest",
        );
        refused(
            json!({"service": "mesh x", "methods": [{"name": "m"}]}),
            "bad interface name",
        );
        refused(json!({"service": "mesh.x.S", "methods": []}), "no methods");
        refused(
            json!({"service": "mesh.x.S", "methods": [{"name": "m", "client_streaming": true,
                "params": [{"name": "a", "type": "string"}, {"name": "b", "type": "string"}]}]}),
            "exactly one parameter",
        );
        refused(
            json!({"service": "mesh.x.S", "methods": [{"name": "m", "params": [
                {"name": "user_id", "type": "string"}, {"name": "userId", "type": "string"}]}]}),
            "JSON name userId",
        );
    }
}
