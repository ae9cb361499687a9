//! Errors with the server's stable codes.

use busbar_proto::ERROR_CODE_METADATA_KEY;
pub use busbar_proto::v1::ErrorCode;
use std::fmt;

/// A failed Busbar operation: a stable [`ErrorCode`], the message (which says
/// what to do) and the server's trace id when the failure came from a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
    trace_id: Option<String>,
    /// What failed below gRPC, when something did: read from the error's
    /// causes (their types, never their text), so a first call that fails
    /// can say why the node could not be reached.
    transport: Option<TransportFailure>,
    /// The connection was lost between sending the call and its answer.
    outcome_unknown: bool,
}

/// Why a connection failed below gRPC, as its causes' types tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransportFailure {
    /// Nothing accepted the TCP connection.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// The server's certificate was not trusted (CA, name or pin).
    UntrustedServer,
    /// What came back was not TLS (a plaintext server?).
    NotTls,
    /// The connection broke during or right after its handshake.
    Broken,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            trace_id: None,
            transport: None,
            outcome_unknown: false,
        }
    }

    /// Why the connection failed below gRPC, if it did.
    pub(crate) fn transport(&self) -> Option<TransportFailure> {
        self.transport
    }

    /// Whether a keyed write that failed so may be sent again: its outcome
    /// was lost with the connection, or no node could be reached at all
    /// (nothing was sent).
    pub(crate) fn may_retry_keyed(&self) -> bool {
        self.outcome_unknown
            || matches!(
                self.transport,
                Some(TransportFailure::Refused | TransportFailure::TimedOut)
            )
    }

    /// Whether the call may or may not have taken effect: the connection
    /// was lost after it was sent and before its answer came.
    pub fn outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The trace id of the failed call, to find it in the server's log.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    pub(crate) fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidArgument, message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Unavailable, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str_name(), self.message)
    }
}

impl std::error::Error for Error {}

/// The stable code for a gRPC status that carries none (errors raised by the
/// gRPC layer itself, or by a non-busbar server).
/// The message of an error and every error that caused it.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A status's causes, outermost first.
fn causes(status: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(status), |error| error.source())
}

/// True when tonic reports a broken connection (the node died or the
/// network went) as INTERNAL or UNKNOWN: the status did not come from the
/// node (no busbar error code) and its cause is a transport error, not text.
fn lost_connection(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown)
        && causes(status).any(|error| {
            error.is::<std::io::Error>()
                || error.is::<hyper::Error>()
                || error
                    .downcast_ref::<h2::Error>()
                    .is_some_and(|h2| h2.is_io() || h2.is_go_away())
        })
}

/// The rustls error among a status's causes, if the call failed in TLS.
/// tokio-rustls wraps it in an `io::Error`, whose `source()` skips the
/// wrapped error itself, so each `io::Error` is opened by hand.
fn tls_cause(status: &tonic::Status) -> Option<&rustls::Error> {
    causes(status).find_map(|error| {
        error.downcast_ref::<rustls::Error>().or_else(|| {
            error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })
    })
}

/// What it means when the node ends the TLS handshake over this client's
/// certificate (the alert it sends names the reason).
fn refused_certificate(status: &tonic::Status) -> Option<&'static str> {
    use rustls::AlertDescription as Alert;
    let rustls::Error::AlertReceived(alert) = tls_cause(status)? else {
        return None;
    };
    Some(match alert {
        Alert::CertificateRevoked => {
            "the node refused this client certificate: it has been revoked; ask an admin for a new one (busbar identity cert NAME)"
        }
        Alert::CertificateExpired => {
            "the node refused this client certificate: it has expired or is not yet valid; ask an admin for a new one (busbar identity cert NAME), and check this machine's clock"
        }
        Alert::UnknownCA | Alert::BadCertificate | Alert::UnsupportedCertificate => {
            "the node refused this client certificate: it was not issued by this node's CA; use the config `busbar identity new NAME --cert` wrote against this node"
        }
        Alert::CertificateRequired => {
            "the node requires a client certificate (it runs with --client-certs required); connect with a config from `busbar identity new NAME --cert`"
        }
        _ => return None,
    })
}

/// What a failed call's causes say about the connection under it.
fn transport_failure(status: &tonic::Status) -> Option<TransportFailure> {
    if let Some(tls) = tls_cause(status) {
        return Some(match tls {
            rustls::Error::InvalidCertificate(_) | rustls::Error::General(_) => {
                TransportFailure::UntrustedServer
            }
            _ => TransportFailure::NotTls,
        });
    }
    causes(status).find_map(|error| {
        if error.is::<tokio::time::error::Elapsed>() {
            return Some(TransportFailure::TimedOut);
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionRefused => TransportFailure::Refused,
                std::io::ErrorKind::TimedOut => TransportFailure::TimedOut,
                _ => TransportFailure::Broken,
            });
        }
        (error.is::<hyper::Error>() || error.is::<h2::Error>()).then_some(TransportFailure::Broken)
    })
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        if let Some(reason) = refused_certificate(&status) {
            let cause = std::error::Error::source(&status).map(chain);
            return Error {
                code: ErrorCode::Unauthenticated,
                message: format!(
                    "{reason} ({})",
                    cause.as_deref().unwrap_or(status.message())
                ),
                trace_id: None,
                transport: None,
                outcome_unknown: false,
            };
        }
        let transport = transport_failure(&status);
        let metadata = status.metadata();
        let lost = lost_connection(&status);
        let code = metadata
            .get(ERROR_CODE_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::from_str_name)
            .unwrap_or_else(|| {
                // tonic reports the client side of a passed deadline as
                // CANCELLED. Some paths keep its TimeoutExpired as the
                // cause; others (tonic's `find_status_in_source_chain`)
                // build a fresh status with only TimeoutExpired's text.
                let timed_out = causes(&status).any(|error| error.is::<tonic::TimeoutExpired>())
                    || (status.code() == tonic::Code::Cancelled
                        && status.message() == tonic::TimeoutExpired(()).to_string());
                if timed_out {
                    ErrorCode::Timeout
                } else if lost {
                    ErrorCode::Unavailable
                } else {
                    busbar_proto::error_code_for(status.code())
                }
            });
        let trace_id = metadata
            .get(busbar_proto::TRACE_ID_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut message = status.message().to_string();
        if let Some(source) = std::error::Error::source(&status) {
            let cause = chain(source);
            message = if message.is_empty() {
                cause
            } else {
                format!("{message}: {cause}")
            };
        }
        if code == ErrorCode::Unavailable && lost {
            message = format!(
                "the connection to the node was lost before the call finished ({message}); \
                 retry it on a new connection (a write may or may not have taken effect)"
            );
        }
        if code == ErrorCode::Timeout && status.code() == tonic::Code::Cancelled {
            message = "the call's deadline passed before it finished; raise the timeout or retry"
                .to_string();
        }
        if status.code() == tonic::Code::Unimplemented && message.is_empty() {
            message = "the server does not know this method".to_string();
        }
        Error {
            code,
            message,
            trace_id,
            transport,
            outcome_unknown: lost && code == ErrorCode::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_side_deadline_is_a_timeout_however_tonic_reports_it() {
        // tonic rebuilds the status from TimeoutExpired's text alone.
        let rebuilt = tonic::Status::cancelled(tonic::TimeoutExpired(()).to_string());
        assert_eq!(Error::from(rebuilt).code(), ErrorCode::Timeout);
        // A status whose cause is TimeoutExpired.
        let caused = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(Error::from(caused).code(), ErrorCode::Timeout);
        // A cancellation from the server stays a cancellation.
        let cancelled = tonic::Status::cancelled("the caller went away");
        assert_eq!(Error::from(cancelled).code(), ErrorCode::Cancelled);
    }
}
