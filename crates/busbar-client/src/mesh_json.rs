//! A provider whose handlers see JSON: on top of [`Client::provide`], each
//! request message is decoded with the offer's own descriptors and handed
//! over as JSON (proto field names, 64-bit integers as numbers, every
//! field without presence present, as `Client::call` answers), and each
//! JSON answer is encoded as the method's output message.
//!
//! ```no_run
//! # async fn demo(client: busbar_client::Client, descriptors: Vec<u8>) -> busbar_client::Result<()> {
//! use busbar_client::{JsonCall, Offer};
//! let offer = Offer::new(["mesh.trust.Tokenizer"], descriptors);
//! let provider = client
//!     .provide_json(offer, |mut call: JsonCall| async move {
//!         let request = call.next_request().await?.unwrap_or_default();
//!         call.send(serde_json::json!({"value": request["kind"]})).await
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::mesh::{CallContext, Offer, Provided, ProviderCall};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// One call routed to a JSON provider.
pub struct JsonCall {
    pub context: CallContext,
    call: ProviderCall,
    method: MethodDescriptor,
}

impl JsonCall {
    /// The method's descriptor (its input and output types, its kind).
    pub fn method(&self) -> &MethodDescriptor {
        &self.method
    }

    /// The next request as JSON; `None` once the caller has sent its last.
    /// A message that does not decode as the method's input is
    /// INVALID_ARGUMENT (the caller's to fix).
    pub async fn next_request(&mut self) -> Result<Option<serde_json::Value>> {
        let Some(bytes) = self.call.next_request().await else {
            return Ok(None);
        };
        let input = self.method.input();
        let message = DynamicMessage::decode(input.clone(), bytes).map_err(|e| {
            Error::invalid_argument(format!(
                "the request of {} does not decode as {}: {e}",
                self.context.method,
                input.full_name()
            ))
        })?;
        message
            .serialize_with_options(serde_json::value::Serializer, &json_options())
            .map(Some)
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot express the request as JSON: {e}"),
                )
            })
    }

    /// Sends one answer, JSON of the method's output type; waits while the
    /// caller is behind. An answer that does not fit the output type is
    /// INTERNAL: it is the provider's mistake, not the caller's.
    pub async fn send(&mut self, value: serde_json::Value) -> Result<()> {
        let output = self.method.output();
        let message = DynamicMessage::deserialize(output.clone(), value).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!(
                    "the provider's answer to {} does not fit {}: {e}",
                    self.context.method,
                    output.full_name()
                ),
            )
        })?;
        self.call.send(message.encode_to_vec().into()).await
    }
}

/// The JSON `Client::call` gives for a message, so a handler sees what a
/// caller of the same method would: proto field names, 64-bit integers as
/// numbers, fields without presence always there.
fn json_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false)
}

/// Every method the descriptor set defines, by "/package.Service/Method".
fn methods_of(file_descriptor_set: &[u8]) -> Result<HashMap<String, MethodDescriptor>> {
    let mut pool = DescriptorPool::global();
    pool.decode_file_descriptor_set(file_descriptor_set)
        .map_err(|e| {
            Error::invalid_argument(format!(
                "the offer's descriptors do not decode or resolve: {e}"
            ))
        })?;
    Ok(pool
        .services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .map(|method| {
            (
                format!("/{}/{}", method.parent_service().full_name(), method.name()),
                method,
            )
        })
        .collect())
}

impl Client {
    /// [`provide`](Client::provide) with JSON in and out: `handler` runs for
    /// every call with a [`JsonCall`]. Returns once the node has accepted
    /// the offer.
    pub async fn provide_json<F, Fut>(&self, offer: Offer, handler: F) -> Result<Provided>
    where
        F: Fn(JsonCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let methods = Arc::new(methods_of(&offer.file_descriptor_set)?);
        let handler = Arc::new(handler);
        self.provide(offer, move |call: ProviderCall| {
            let method = methods.get(&call.context.method).cloned();
            let handler = handler.clone();
            async move {
                let Some(method) = method else {
                    return Err(Error::new(
                        ErrorCode::Unimplemented,
                        format!(
                            "this provider's descriptors define no {}",
                            call.context.method
                        ),
                    ));
                };
                handler(JsonCall {
                    context: call.context.clone(),
                    call,
                    method,
                })
                .await
            }
        })
        .await
    }
}
