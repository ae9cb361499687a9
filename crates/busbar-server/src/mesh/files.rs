//! The protobuf descriptor files the node serves through reflection: its own
//! (busbar.v1, health, reflection, the well-known types) and those of every
//! live provided service, each kept while a provider uses it.

use super::registry::{MethodShape, ServiceShape};
use crate::error::{Error, Result};
use bytes::Bytes;
use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::method_options::IdempotencyLevel;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use std::collections::{BTreeMap, HashMap};

/// Where provided services live in the resource tree.
pub(crate) const SERVICES_FOLDER: &str = "/services";

/// Packages the node's own services use: nothing else may be offered there.
const RESERVED_PACKAGES: &[&str] = &["busbar.", "grpc.", "google.", "arrow.flight."];

/// The most files and bytes one offer's descriptor set may hold.
const MAX_OFFER_FILES: usize = 256;

struct FileEntry {
    proto: FileDescriptorProto,
    encoded: Bytes,
    /// Providers using the file; `None` for the node's own.
    users: Option<usize>,
}

/// Descriptor files by name, and the file defining each symbol.
pub(crate) struct DescriptorFiles {
    files: HashMap<String, FileEntry>,
    symbols: HashMap<String, String>,
}

/// A checked offer: the services' shapes and the files they need.
pub(crate) struct Offered {
    pub shapes: Vec<ServiceShape>,
    pub files: Vec<FileDescriptorProto>,
}

impl DescriptorFiles {
    /// The node's own files, from encoded descriptor sets, with the
    /// well-known types.
    pub fn own(sets: &[&[u8]]) -> Result<DescriptorFiles> {
        let mut pool = DescriptorPool::global();
        for set in sets {
            pool.decode_file_descriptor_set(*set)
                .map_err(|e| Error::internal(format!("the node's own descriptors: {e}")))?;
        }
        let mut files = DescriptorFiles {
            files: HashMap::new(),
            symbols: HashMap::new(),
        };
        for file in pool.files() {
            files.insert(file.file_descriptor_proto().clone(), None);
        }
        Ok(files)
    }

    fn insert(&mut self, proto: FileDescriptorProto, users: Option<usize>) {
        let name = proto.name().to_string();
        for symbol in symbols_of(&proto) {
            self.symbols.insert(symbol, name.clone());
        }
        let encoded = proto.encode_to_vec().into();
        self.files.insert(
            name,
            FileEntry {
                proto,
                encoded,
                users,
            },
        );
    }

    /// Files an offer brings that clash with one the node serves under the
    /// same name.
    fn check_names(&self, files: &[FileDescriptorProto]) -> Result<()> {
        for file in files {
            if let Some(held) = self.files.get(file.name())
                && held.proto != *file
            {
                return Err(Error::failed_precondition(format!(
                    "descriptor file {:?} differs from the one the node already serves under that name ({}); rename the .proto file or make it identical",
                    file.name(),
                    if held.users.is_none() {
                        "the node's own"
                    } else {
                        "a live provider's"
                    }
                )));
            }
        }
        Ok(())
    }

    /// Takes the files of an accepted offer (counting one more user of
    /// those already held); nothing changes when one clashes.
    pub fn add(&mut self, files: &[FileDescriptorProto]) -> Result<()> {
        self.check_names(files)?;
        for file in files {
            match self.files.get_mut(file.name()) {
                Some(entry) => {
                    if let Some(users) = &mut entry.users {
                        *users += 1;
                    }
                }
                None => self.insert(file.clone(), Some(1)),
            }
        }
        Ok(())
    }

    /// Gives back files a provider used; a file no provider uses goes.
    pub fn release(&mut self, names: &[String]) {
        for name in names {
            let Some(entry) = self.files.get_mut(name) else {
                continue;
            };
            let Some(users) = &mut entry.users else {
                continue;
            };
            *users -= 1;
            if *users == 0
                && let Some(entry) = self.files.remove(name)
            {
                for symbol in symbols_of(&entry.proto) {
                    self.symbols.remove(&symbol);
                }
            }
        }
    }

    /// Whether `name` is one of the node's own files.
    pub fn is_own(&self, name: &str) -> bool {
        self.files.get(name).is_some_and(|f| f.users.is_none())
    }

    /// A file's encoded descriptor.
    pub fn file(&self, name: &str) -> Option<&Bytes> {
        self.files.get(name).map(|f| &f.encoded)
    }

    /// The name of the file defining `symbol` (a package-qualified name of
    /// a service, method, message, field, enum or enum value).
    pub fn defining(&self, symbol: &str) -> Option<&str> {
        self.symbols.get(symbol).map(String::as_str)
    }

    /// `name` and every file it imports, directly or not, encoded.
    pub fn with_imports(&self, name: &str) -> Vec<Bytes> {
        let mut order = Vec::new();
        let mut stack = vec![name.to_string()];
        let mut seen = std::collections::HashSet::new();
        while let Some(next) = stack.pop() {
            if !seen.insert(next.clone()) {
                continue;
            }
            if let Some(entry) = self.files.get(&next) {
                order.push(entry.encoded.clone());
                stack.extend(entry.proto.dependency.iter().cloned());
            }
        }
        order
    }

    /// Services defined in the node's own files.
    pub fn own_services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .files
            .values()
            .filter(|f| f.users.is_none())
            .flat_map(|f| {
                let package = f.proto.package().to_string();
                f.proto
                    .service
                    .iter()
                    .map(move |s| qualified(&package, s.name()))
            })
            .collect();
        names.sort();
        names
    }

    /// Checks an offer: its descriptor set decodes, forms a consistent set
    /// with the files the node holds, defines every service offered (each
    /// named outside the node's own packages) and clashes with no file the
    /// node serves.
    pub fn check_offer(&self, services: &[String], encoded_set: &[u8]) -> Result<Offered> {
        if services.is_empty() {
            return Err(Error::invalid_argument(
                "an offer names at least one service (its protobuf full name, e.g. mesh.trust.Tokenizer)",
            ));
        }
        for name in services {
            check_service_name(name)?;
        }
        let set = FileDescriptorSet::decode(encoded_set).map_err(|e| {
            Error::invalid_argument(format!(
                "the offer's file_descriptor_set is not an encoded google.protobuf.FileDescriptorSet: {e}"
            ))
        })?;
        if set.file.len() > MAX_OFFER_FILES {
            return Err(Error::invalid_argument(format!(
                "the offer's descriptor set holds {} files; at most {MAX_OFFER_FILES}",
                set.file.len()
            )));
        }
        let mut files: Vec<FileDescriptorProto> = set
            .file
            .into_iter()
            .map(|mut file| {
                // Comments and source positions are not part of a service's shape.
                file.source_code_info = None;
                file
            })
            .collect();
        files.sort_by(|a, b| a.name().cmp(b.name()));
        files.dedup_by(|a, b| a.name() == b.name() && a == b);
        // The offer's files, resolved against the others the node holds.
        // A file the offer redefines is read as the offer has it: a clash
        // with a live one is refused when the offer is added, after a
        // changed service shape (the clearer message) is.
        let mut pool = DescriptorPool::new();
        let held: Vec<FileDescriptorProto> = self
            .files
            .values()
            .filter(|f| !files.iter().any(|o| o.name() == f.proto.name()))
            .map(|f| f.proto.clone())
            .collect();
        pool.add_file_descriptor_protos(held.into_iter().chain(files.iter().cloned()))
            .map_err(|e| {
                Error::invalid_argument(format!("the offer's descriptors do not resolve: {e}"))
            })?;
        let mut shapes = Vec::new();
        for name in services {
            let service = pool.get_service_by_name(name).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "the offer's descriptor set defines no service {name}"
                ))
            })?;
            if !files
                .iter()
                .any(|f| f.name() == service.parent_file().name())
            {
                return Err(Error::invalid_argument(format!(
                    "service {name} is defined by the node's own files, not the offer's"
                )));
            }
            let mut methods = HashMap::new();
            let mut signature = BTreeMap::new();
            for method in service.methods() {
                let idempotency = method
                    .method_descriptor_proto()
                    .options
                    .as_ref()
                    .map(|o| o.idempotency_level())
                    .unwrap_or(IdempotencyLevel::IdempotencyUnknown);
                let shape = MethodShape {
                    client_streaming: method.is_client_streaming(),
                    server_streaming: method.is_server_streaming(),
                    idempotent: matches!(
                        idempotency,
                        IdempotencyLevel::Idempotent | IdempotencyLevel::NoSideEffects
                    ),
                };
                signature.insert(
                    method.name().to_string(),
                    format!(
                        "{}({}{}) -> {}{}",
                        method.name(),
                        if shape.client_streaming {
                            "stream "
                        } else {
                            ""
                        },
                        method.input().full_name(),
                        if shape.server_streaming {
                            "stream "
                        } else {
                            ""
                        },
                        method.output().full_name()
                    ),
                );
                methods.insert(method.name().to_string(), shape);
            }
            shapes.push(ServiceShape {
                name: name.clone(),
                path: format!("{SERVICES_FOLDER}/{name}"),
                methods,
                signature: signature.into_values().collect(),
            });
        }
        Ok(Offered { shapes, files })
    }
}

fn qualified(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_string()
    } else {
        format!("{package}.{name}")
    }
}

/// A protobuf full name: dot-separated identifiers, outside the node's
/// own packages.
pub(crate) fn check_service_name(name: &str) -> Result<()> {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if name.is_empty() || name.len() > 200 || !name.split('.').all(identifier) {
        return Err(Error::invalid_argument(format!(
            "bad service name {name:?}: use a protobuf full name such as mesh.trust.Tokenizer"
        )));
    }
    if let Some(reserved) = RESERVED_PACKAGES.iter().find(|p| name.starts_with(*p)) {
        return Err(Error::invalid_argument(format!(
            "service {name} is in the package {} the node keeps for its own services; choose another package",
            reserved.trim_end_matches('.')
        )));
    }
    Ok(())
}

/// Every symbol a file defines, package-qualified.
fn symbols_of(file: &FileDescriptorProto) -> Vec<String> {
    fn messages(
        prefix: &str,
        list: &[prost_types::DescriptorProto],
        enums: &[prost_types::EnumDescriptorProto],
        out: &mut Vec<String>,
    ) {
        for message in list {
            let name = qualified(prefix, message.name());
            for field in &message.field {
                out.push(qualified(&name, field.name()));
            }
            messages(&name, &message.nested_type, &message.enum_type, out);
            out.push(name);
        }
        for e in enums {
            let name = qualified(prefix, e.name());
            // Enum values are scoped like their enum's siblings.
            for value in &e.value {
                out.push(qualified(prefix, value.name()));
            }
            out.push(name);
        }
    }
    let package = file.package();
    let mut out = Vec::new();
    messages(package, &file.message_type, &file.enum_type, &mut out);
    for service in &file.service {
        let name = qualified(package, service.name());
        for method in &service.method {
            out.push(qualified(&name, method.name()));
        }
        out.push(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_full_names_outside_the_nodes_packages() {
        assert!(check_service_name("mesh.trust.Tokenizer").is_ok());
        assert!(check_service_name("Echo").is_ok());
        for bad in [
            "",
            "mesh..x",
            "1mesh.X",
            "mesh/X",
            "mesh.X ",
            "busbar.v1.Node",
            "grpc.health.v1.Health",
        ] {
            assert!(check_service_name(bad).is_err(), "{bad:?}");
        }
    }
}
