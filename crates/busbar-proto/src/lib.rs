//! Busbar's gRPC contract, generated from `proto/busbar/v1/*.proto` by
//! `cargo run -p codegen`. Nothing in this crate is written by hand except
//! this file.

/// Messages, service clients and service servers of package `busbar.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!("generated/busbar.v1.rs");
}

/// Encoded `FileDescriptorSet` of every busbar file and its imports, served
/// through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/busbar_descriptor.bin");

/// Trailing-metadata key that carries the stable [`v1::ErrorCode`] name of a failure.
pub const ERROR_CODE_METADATA_KEY: &str = "busbar-error-code";

/// Request-metadata key carrying the trace id; the server generates one when absent
/// and echoes it in the response headers.
pub const TRACE_ID_METADATA_KEY: &str = "x-trace-id";

/// Request-metadata key of a write's idempotency key: made once per logical
/// call by the client and sent again with each retry of it.
pub const IDEMPOTENCY_KEY_METADATA_KEY: &str = "x-busbar-idempotency-key";

/// Whether `key` may be an idempotency key: 1 to 128 letters, digits, `-`
/// and `_` (a UUID, say). Client and node hold keys to the same rule.
pub fn is_idempotency_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Response-metadata key a node sets (to "1") when it honours idempotency
/// keys, so a client knows an unknown outcome may be retried there.
pub const IDEMPOTENCY_HONOURED_METADATA_KEY: &str = "x-busbar-idempotency";

/// Request-metadata key carrying a session token as is, accepted like
/// `authorization: Bearer <token>`. HTTP/2 header compression never indexes
/// `authorization` (h2 and nghttp2 keep it out of the HPACK table), so that
/// header costs the full token, Huffman-coded, on every call; this one is
/// indexed once per connection and then costs a byte or two. A session token
/// is a long random, signed value, which is what RFC 7541 §7.1.3 asks of
/// values that may be indexed.
pub const SESSION_METADATA_KEY: &str = "x-busbar-session";

/// The gRPC status code each stable [`v1::ErrorCode`] travels as, on the
/// node and on a mesh provider alike.
pub fn grpc_code(code: v1::ErrorCode) -> tonic::Code {
    use tonic::Code;
    use v1::ErrorCode;
    match code {
        ErrorCode::Unspecified | ErrorCode::Internal => Code::Internal,
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::SlowConsumer | ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::Timeout => Code::DeadlineExceeded,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Conflict => Code::Aborted,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Unimplemented => Code::Unimplemented,
        ErrorCode::Cancelled => Code::Cancelled,
    }
}

/// The stable code of a gRPC status that carries none (one tonic raised,
/// or a peer that is not Busbar's).
pub fn error_code_for(code: tonic::Code) -> v1::ErrorCode {
    use tonic::Code;
    use v1::ErrorCode;
    match code {
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => ErrorCode::Internal,
        Code::Cancelled => ErrorCode::Cancelled,
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
        Code::DeadlineExceeded => ErrorCode::Timeout,
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists => ErrorCode::AlreadyExists,
        Code::PermissionDenied => ErrorCode::PermissionDenied,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        Code::Aborted => ErrorCode::Conflict,
        Code::Unimplemented => ErrorCode::Unimplemented,
        Code::Unavailable => ErrorCode::Unavailable,
        Code::Unauthenticated => ErrorCode::Unauthenticated,
    }
}

/// A gRPC codec that passes messages through as their encoded bytes: what
/// the node forwards between a mesh caller and its provider, and what a
/// client that already holds encoded messages sends.
pub mod bytes_codec {
    use bytes::{Buf, BufMut, Bytes};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Debug, Clone, Copy, Default)]
    pub struct BytesCodec;

    #[derive(Debug)]
    pub struct BytesEncoder;

    #[derive(Debug)]
    pub struct BytesDecoder;

    impl Codec for BytesCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = BytesEncoder;
        type Decoder = BytesDecoder;
        fn encoder(&mut self) -> BytesEncoder {
            BytesEncoder
        }
        fn decoder(&mut self) -> BytesDecoder {
            BytesDecoder
        }
    }

    impl Encoder for BytesEncoder {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for BytesDecoder {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }
}
