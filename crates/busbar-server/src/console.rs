//! The web console (docs/console.md): the gateway's listener serves the
//! built console (`web/dist/`, embedded at build time by `build.rs`) at `/`
//! next to its WebSocket endpoint, so a browser pointed at the gateway's
//! address gets a page that logs in over `/ws` on the same origin.
//!
//! A connection's request head is read first ([`route`]): a WebSocket
//! handshake (the gateway's path, or any `Upgrade: websocket`) goes on to
//! the gateway with the bytes read so far replayed ([`Prefixed`]); anything
//! else is plain HTTP for the console ([`serve`]). The console answers
//! GET and HEAD from a table fixed at build time: no request path ever
//! reaches the file system, so there is nothing to traverse.

use bytes::Bytes;
use http_body_util::Full;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

include!(concat!(env!("OUT_DIR"), "/console_files.rs"));

/// Longest request head read before deciding where a connection goes
/// (the gateway's and hyper's own limits apply after that).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a console connection may wait for a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a console connection lives (keep-alive included).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Console connections open at once, per process; more are dropped.
static CONNECTIONS: Semaphore = Semaphore::const_new(256);

/// Where a connection goes after its request head was read.
pub(crate) enum Route<S> {
    WebSocket(Prefixed<S>),
    Console(Prefixed<S>),
}

/// Reads the first request head of `io` (at most [`MAX_HEAD_BYTES`]) and
/// tells a WebSocket handshake from a console request. `None` when the
/// peer closed or sent no request line.
pub(crate) async fn route<S: AsyncRead + Unpin>(mut io: S, ws_path: &str) -> Option<Route<S>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD_BYTES {
        let read = io.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let websocket = is_websocket(&head, ws_path)?;
    let io = Prefixed {
        prefix: head,
        offset: 0,
        inner: io,
    };
    Some(if websocket {
        Route::WebSocket(io)
    } else {
        Route::Console(io)
    })
}

/// Whether a request head is a WebSocket handshake: its path is the
/// gateway's, or it asks to upgrade to websocket (so a handshake on a wrong
/// path still gets the gateway's explanation, not a console page).
fn is_websocket(head: &[u8], ws_path: &str) -> Option<bool> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?;
    let target = request_line.split(' ').nth(1)?;
    let path = target.split('?').next().unwrap_or(target);
    if path == ws_path {
        return Some(true);
    }
    let upgrade = lines.take_while(|line| !line.is_empty()).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("upgrade")
                && value.to_ascii_lowercase().contains("websocket")
        })
    });
    Some(upgrade)
}

/// A stream that first replays bytes already read from it.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let take = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..take]);
            self.offset += take;
            if self.offset == self.prefix.len() {
                // Replayed: free the buffer for the connection's lifetime.
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(context, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(context, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

/// Serves console requests on `io` over HTTP/1.1 until the peer closes,
/// a head is late, or the connection's lifetime is up. `origins` are the
/// gateway's allowed origins: a request whose Host makes one of them gets
/// that origin's WebSocket URL named in its `connect-src`.
pub(crate) async fn serve<S>(io: Prefixed<S>, tls: bool, origins: Vec<String>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Ok(_permit) = CONNECTIONS.try_acquire() else {
        return;
    };
    let origins = std::sync::Arc::new(origins);
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let response = respond(&request, tls, &origins);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
}

/// The answer to one console request.
fn respond<B>(
    request: &hyper::Request<B>,
    tls: bool,
    origins: &[String],
) -> hyper::Response<Full<Bytes>> {
    use http::{Method, StatusCode, header};
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the console answers GET and HEAD\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = match request.uri().path() {
        "/" => "/index.html",
        path => path,
    };
    let found = FILES
        .binary_search_by(|(name, _, _)| (*name).cmp(path))
        .ok()
        .map(|index| FILES[index]);
    let mut response = match found {
        Some((name, bytes, etag)) => {
            let fresh = request
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
            let mut response = if fresh {
                empty(StatusCode::NOT_MODIFIED)
            } else {
                let mut response = hyper::Response::new(Full::new(Bytes::from_static(bytes)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(content_type(name)),
                );
                response
            };
            response
                .headers_mut()
                .insert(header::ETAG, http::HeaderValue::from_static(etag));
            response
        }
        None if path == "/index.html" => {
            let mut response = hyper::Response::new(Full::new(Bytes::from_static(NOT_BUILT)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        None => plain(StatusCode::NOT_FOUND, "not part of the console\n"),
    };
    let headers = response.headers_mut();
    // The console changes with the binary: always revalidate (the ETag
    // makes that a 304).
    headers.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    if let Ok(policy) = http::HeaderValue::from_str(&content_security_policy(request, tls, origins))
    {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        http::HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        http::HeaderValue::from_static("same-origin"),
    );
    response
}

/// Scripts, styles and images from the console itself only; no inline
/// code; sockets only to this origin. `'self'` covers ws/wss of the same
/// host in current browsers; the explicit URL is for older ones, and is
/// named only when the Host is one of the gateway's allowed origins (a
/// forged Host never widens the policy).
fn content_security_policy<B>(
    request: &hyper::Request<B>,
    tls: bool,
    origins: &[String],
) -> String {
    let scheme = if tls { "https" } else { "http" };
    let socket_scheme = if tls { "wss" } else { "ws" };
    let own_socket = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(|host| host.to_ascii_lowercase())
        .filter(|host| origins.contains(&format!("{scheme}://{host}")))
        .map(|host| format!(" {socket_scheme}://{host}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{own_socket}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn plain(status: http::StatusCode, text: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn empty(status: http::StatusCode) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// `/` when the binary was built without `web/dist/`.
const NOT_BUILT: &[u8] = b"<!doctype html>\n<meta charset=\"utf-8\">\n<title>Busbar console</title>\n\
<h1>The console was not built into this binary</h1>\n\
<p>Build it with <code>make web</code>, then rebuild the node (<code>make run</code> does both).</p>\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_handshakes_are_told_from_console_requests() {
        let head = |text: &str| text.replace('\n', "\r\n").into_bytes();
        let upgrade = head("GET /other HTTP/1.1\nHost: a\nUpgrade: WebSocket\n\n");
        assert_eq!(is_websocket(&upgrade, "/ws"), Some(true));
        let ws_path = head("GET /ws?x=1 HTTP/1.1\nHost: a\n\n");
        assert_eq!(is_websocket(&ws_path, "/ws"), Some(true));
        let page = head("GET /app.js HTTP/1.1\nHost: a\nAccept: */*\n\n");
        assert_eq!(is_websocket(&page, "/ws"), Some(false));
        assert_eq!(is_websocket(b"", "/ws"), None);
    }

    #[test]
    fn only_embedded_files_are_served_with_the_security_headers() {
        let get = |path: &str| {
            hyper::Request::get(path)
                .header("host", "127.0.0.1:7072")
                .body(())
                .unwrap()
        };
        let origins = vec!["https://127.0.0.1:7072".to_string()];
        for path in [
            "/../Cargo.toml",
            "/%2e%2e/Cargo.toml",
            "/nothing",
            "//etc/passwd",
        ] {
            let response = respond(&get(path), true, &origins);
            assert_eq!(response.status(), 404, "{path}");
        }
        let index = respond(&get("/"), true, &origins);
        assert_eq!(index.status(), 200);
        let headers = index.headers();
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("connect-src 'self' wss://127.0.0.1:7072;"),
            "{policy}"
        );
        let forged = hyper::Request::get("/")
            .header("host", "evil.example")
            .body(())
            .unwrap();
        let policy = respond(&forged, true, &origins).headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(!policy.contains("evil"), "{policy}");
        let post = hyper::Request::post("/").body(()).unwrap();
        assert_eq!(respond(&post, true, &origins).status(), 405);
    }

    #[test]
    fn the_file_table_is_sorted_for_lookups() {
        assert!(FILES.windows(2).all(|pair| pair[0].0 < pair[1].0));
    }
}
