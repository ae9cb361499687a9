//! The one error model: every failure has a stable [`ErrorCode`] and a message
//! that says what to do. It becomes a gRPC status whose trailing metadata
//! carries the code's name under [`ERROR_CODE_METADATA_KEY`].

use busbar_proto::ERROR_CODE_METADATA_KEY;
pub use busbar_proto::v1::ErrorCode;
use tonic::Status;

/// A failure with a stable code and a message meant for the person calling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! constructors {
    ($($name:ident => $code:ident),* $(,)?) => {
        impl Error {
            $(
                pub fn $name(message: impl Into<String>) -> Self {
                    Self { code: ErrorCode::$code, message: message.into() }
                }
            )*
        }
    };
}

constructors! {
    invalid_argument => InvalidArgument,
    not_found => NotFound,
    already_exists => AlreadyExists,
    permission_denied => PermissionDenied,
    unauthenticated => Unauthenticated,
    slow_consumer => SlowConsumer,
    unavailable => Unavailable,
    failed_precondition => FailedPrecondition,
    resource_exhausted => ResourceExhausted,
    internal => Internal,
    cancelled => Cancelled,
    conflict => Conflict,
    unimplemented => Unimplemented,
}

pub use busbar_proto::grpc_code;

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let mut status = Status::new(grpc_code(error.code), error.message);
        status.metadata_mut().insert(
            ERROR_CODE_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(error.code.as_str_name()),
        );
        status
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(error: tokio::task::JoinError) -> Self {
        Error::internal(format!("storage task failed: {error}"))
    }
}
