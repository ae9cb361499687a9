//! gRPC reflection (v1 and v1alpha) over the node's own descriptor files
//! and those of the live provided services, so any reflection-driven
//! client (grpcurl, Busbar's dynamic `call`, a grpcio client) finds a
//! provided method like one of the node's own. tonic-reflection serves only
//! files fixed at start, hence this one.
//!
//! The node's own services are listed to everyone, as before; a provided
//! service is listed only to a logged-in caller with read on it, and the
//! files of provided services are served to logged-in callers only.

use crate::auth::access::Caller;
use crate::node::Node;
use crate::store::Right;
use futures::{Stream, StreamExt};
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};
use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

#[derive(Clone)]
pub struct Reflection {
    pub node: Arc<Node>,
}

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn not_found(message: String) -> MessageResponse {
    MessageResponse::ErrorResponse(v1::ErrorResponse {
        error_code: tonic::Code::NotFound as i32,
        error_message: message,
    })
}

impl Reflection {
    async fn answer(
        &self,
        caller: Option<&Caller>,
        request: v1::ServerReflectionRequest,
    ) -> v1::ServerReflectionResponse {
        let message_response = match &request.message_request {
            Some(MessageRequest::ListServices(_)) => {
                let mut names = self.node.mesh.files().own_services();
                if let Some(caller) = caller {
                    for (name, path) in self.node.mesh.names() {
                        let right = self.node.access.right(caller, &path).await;
                        if matches!(right, Ok(Some(r)) if r >= Right::Read) {
                            names.push(name);
                        }
                    }
                }
                names.sort();
                MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: names
                        .into_iter()
                        .map(|name| v1::ServiceResponse { name })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => {
                if caller.is_some() && self.node.mesh.files().file(name).is_none() {
                    self.refresh().await;
                }
                self.files(caller, Some(name.as_str()), name)
            }
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                if caller.is_some() && self.node.mesh.files().defining(symbol).is_none() {
                    self.refresh().await;
                }
                let files = self.node.mesh.files();
                let name = files.defining(symbol).map(str::to_string);
                drop(files);
                self.files(caller, name.as_deref(), symbol)
            }
            Some(MessageRequest::FileContainingExtension(_)) => {
                not_found("the node's services define no extensions".into())
            }
            Some(MessageRequest::AllExtensionNumbersOfType(name)) => {
                MessageResponse::AllExtensionNumbersResponse(v1::ExtensionNumberResponse {
                    base_type_name: name.clone(),
                    extension_number: Vec::new(),
                })
            }
            None => MessageResponse::ErrorResponse(v1::ErrorResponse {
                error_code: tonic::Code::InvalidArgument as i32,
                error_message: "a reflection request names what it asks for".into(),
            }),
        };
        v1::ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(message_response),
        }
    }

    /// On a cluster node, reads the cluster's providers again (a lookup
    /// may name what another node offered a moment ago).
    async fn refresh(&self) {
        if let Some(cluster) = &self.node.mesh_cluster {
            cluster.refresh_soon(&self.node).await;
        }
    }

    /// The file `name` with its imports, or NOT_FOUND naming `asked`.
    fn files(&self, caller: Option<&Caller>, name: Option<&str>, asked: &str) -> MessageResponse {
        let files = self.node.mesh.files();
        let found = name.filter(|name| caller.is_some() || files.is_own(name));
        match found {
            Some(name) if files.file(name).is_some() => {
                MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse {
                    file_descriptor_proto: files
                        .with_imports(name)
                        .into_iter()
                        .map(|b| b.to_vec())
                        .collect(),
                })
            }
            _ => not_found(format!("the node knows no {asked}")),
        }
    }
}

impl Reflection {
    /// The answers to a reflection stream of either version: each request
    /// is read as v1's (the messages are the same, field for field; see
    /// [`convert`]) and each answer written back in the version asked.
    fn answers<Q, A>(&self, request: Request<Streaming<Q>>) -> Answers<A>
    where
        Q: Message + Default + Send + 'static,
        A: Message + Default + Send + 'static,
    {
        let caller = request.extensions().get::<Caller>().cloned();
        let this = self.clone();
        Box::pin(request.into_inner().then(move |request| {
            let this = this.clone();
            let caller = caller.clone();
            async move {
                let request: v1::ServerReflectionRequest = convert(&request?)?;
                convert(&this.answer(caller.as_ref(), request).await)
            }
        }))
    }
}

/// v1alpha's messages are v1's, field for field: each is re-read as the other.
fn convert<A: Message, B: Message + Default>(message: &A) -> Result<B, Status> {
    B::decode(message.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("reflection message conversion: {e}")))
}

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = Answers<v1::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(self.answers(request)))
    }
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = Answers<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(self.answers(request)))
    }
}
