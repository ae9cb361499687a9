//! `busbar._core.Core`: one connection (a `busbar_client::Client`) serving
//! either face. Every method takes the same arguments in both; the face only
//! decides whether the caller gets the result or an awaitable.

use crate::bridge::{Face, finish};
use crate::convert::{
    ToPython, invalid, message_to_json, messages_to_json, py_to_json, py_to_json_list,
};
use crate::data::{CoreSession, SeriesTables, procedure_args};
use crate::sql::{SqlTable, statement, statements};
use crate::streams::{
    CoreCall, CoreMembership, CorePublisher, CoreSubscription, MembershipEvents, Pull,
};
use crate::transport;
use busbar_client::{
    Client, ClientConfig, ConnectOptions, Error, ErrorCode, Interval, ResourceKind, Right,
    SeriesSpec,
};
use pyo3::prelude::*;
use serde_json::Value;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// A deadline in seconds from Python, checked.
pub(crate) fn duration(seconds: Option<f64>, what: &str) -> Result<Option<Duration>, Error> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(invalid(format!(
            "bad {what} {s}: use a positive number of seconds"
        ))),
    }
}

/// `client` with a per-call deadline, if one was given.
pub(crate) fn with_timeout(client: &Client, timeout: Option<f64>) -> Result<Client, Error> {
    Ok(match duration(timeout, "timeout")? {
        Some(timeout) => client.with_timeout(timeout),
        None => client.clone(),
    })
}

/// Waits for `work` at most `timeout` (for calls whose stream outlives the
/// deadline: a join or subscribe must not end when the deadline passes).
pub(crate) async fn within<T>(
    timeout: Option<Duration>,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match timeout {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorCode::Timeout,
                "the call's deadline passed before it finished; raise the timeout or retry",
            ))
        }),
    }
}

/// How to reach and log in to a node, as given to a constructor.
#[derive(FromPyObject, Default)]
#[pyo3(from_item_all)]
pub(crate) struct Target {
    config_path: Option<String>,
    config_json: Option<String>,
    address: Option<String>,
    /// More nodes of a cluster, tried in turn after `address`.
    addresses: Option<Vec<String>>,
    ca: Option<String>,
    fingerprint: Option<String>,
    server_name: Option<String>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    key_name: Option<String>,
    private_key: Option<String>,
    certificate: Option<String>,
    certificate_key: Option<String>,
    timeout: Option<f64>,
    connect_timeout: Option<f64>,
    connections: Option<usize>,
}

impl Target {
    fn options(self) -> Result<ConnectOptions, Error> {
        let mut options = match (self.config_path, self.config_json, self.address) {
            (Some(path), _, _) => ConnectOptions::from_config(&ClientConfig::from_file(path)?)?,
            (_, Some(json), _) => ConnectOptions::from_config(&ClientConfig::from_json(&json)?)?,
            (_, _, Some(address)) => {
                ConnectOptions::new(address).addresses(self.addresses.unwrap_or_default())
            }
            _ => return Err(invalid("give an address or a client config")),
        };
        if let Some(ca) = self.ca {
            options = options.ca_pem(ca);
        }
        if let Some(fingerprint) = self.fingerprint {
            options = options.pin_fingerprint(fingerprint);
        }
        if let Some(name) = self.server_name {
            options = options.server_name(name);
        }
        let credentials = [
            self.password.is_some() || self.user.is_some(),
            self.token.is_some(),
            self.key_name.is_some() || self.private_key.is_some(),
        ];
        if credentials.iter().filter(|given| **given).count() > 1 {
            return Err(invalid(
                "give one credential: user= and password=, token=, or key_name= and private_key=",
            ));
        }
        match (self.user, self.password) {
            (Some(user), Some(password)) => options = options.password(user, password),
            (None, None) => {}
            _ => return Err(invalid("user= and password= go together")),
        }
        if let Some(token) = self.token {
            options = options.token(token);
        }
        match (self.key_name, self.private_key) {
            (Some(name), Some(key)) => {
                options = options.credential(busbar_client::Credential::key(name, &key)?);
            }
            (None, None) => {}
            _ => return Err(invalid("key_name= and private_key= go together")),
        }
        // A certificate with no other credential is the credential; beside
        // one, it is only presented (for nodes that require certificates).
        match (self.certificate, self.certificate_key) {
            (Some(certificate), Some(key)) if credentials.contains(&true) => {
                options = options.client_certificate(certificate, key)
            }
            (Some(certificate), Some(key)) => options = options.certificate(certificate, key),
            (None, None) => {}
            _ => return Err(invalid("certificate= and certificate_key= go together")),
        }
        if let Some(timeout) = duration(self.timeout, "timeout")? {
            options = options.timeout(timeout);
        }
        if let Some(timeout) = duration(self.connect_timeout, "connect_timeout")? {
            options = options.connect_timeout(timeout);
        }
        if let Some(connections) = self.connections {
            options = options.connections(connections);
        }
        Ok(options)
    }
}

/// Connects; the result is a `Core` (blocking) or an awaitable of one.
#[pyfunction]
pub(crate) fn connect<'py>(
    py: Python<'py>,
    asyncio: bool,
    target: Target,
) -> PyResult<Bound<'py, PyAny>> {
    let face = if asyncio {
        Face::Asyncio
    } else {
        Face::Blocking
    };
    let home = asyncio.then(|| Arc::new(crate::loop_io::LoopTransport::default()));
    let options = match &home {
        Some(home) => target.options().map(|o| o.transport(home.clone())),
        None => target.options(),
    };
    finish(py, face, async move {
        let client = options?.connect().await?;
        Ok(Core {
            face,
            client: RwLock::new(Some(client)),
            home,
        })
    })
}

impl ToPython for Core {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(Py::new(py, self)?.into_any())
    }
}

macro_rules! pyclass_to_python {
    ($($t:ty),*) => {$(
        impl ToPython for $t {
            fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
                Ok(Py::new(py, self)?.into_any())
            }
        }
    )*};
}

pyclass_to_python!(CoreCall, CoreSubscription, CoreMembership);

/// What `Core.open` opened.
enum Opened {
    Room(CoreMembership),
    Wire(CoreSubscription),
}

impl ToPython for Opened {
    fn to_python(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Opened::Room(membership) => membership.to_python(py),
            Opened::Wire(subscription) => subscription.to_python(py),
        }
    }
}

/// The kinds `create` makes, by the names the SDK takes (time series need
/// a definition: `create_series`).
const KINDS: [(&str, ResourceKind); 4] = [
    ("folder", ResourceKind::Folder),
    ("room", ResourceKind::Room),
    ("wire", ResourceKind::Wire),
    ("database", ResourceKind::Database),
];

/// Rights by the names the SDK takes.
const RIGHTS: [(&str, Right); 3] = [
    ("read", Right::Read),
    ("write", Right::Write),
    ("admin", Right::Admin),
];

/// One of a few choices named by a Python str in any case; anything else
/// is INVALID_ARGUMENT naming the choices.
fn choice<T: Copy>(
    given: &Bound<'_, PyAny>,
    choices: &[(&str, T)],
    what: &str,
) -> Result<T, Error> {
    let name = given.extract::<String>().ok();
    let found = choices.iter().find(|(choice, _)| {
        name.as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(choice))
    });
    found.map(|(_, value)| *value).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|(choice, _)| *choice).collect();
        let shown = given.repr().map(|r| r.to_string()).unwrap_or_default();
        invalid(format!(
            "bad {what} {shown}: use one of {}",
            names.join(", ")
        ))
    })
}

/// A series definition from the names Python gives (any of the spellings
/// `busbar_client::parse_resolution` and `parse_curve` take).
fn series_spec(
    resolution: &str,
    unit: String,
    curve: &str,
    time_zone: Option<String>,
) -> Result<SeriesSpec, Error> {
    let mut spec = SeriesSpec::new(busbar_client::parse_resolution(resolution)?)
        .unit(unit)
        .curve(busbar_client::parse_curve(curve)?);
    spec.time_zone = time_zone.filter(|zone| !zone.is_empty());
    Ok(spec)
}

/// One connection to a node.
#[pyclass(frozen, module = "busbar._core")]
pub(crate) struct Core {
    face: Face,
    client: RwLock<Option<Client>>,
    /// An asyncio connection's loop, where its socket is watched.
    home: Option<Arc<crate::loop_io::LoopTransport>>,
}

impl Core {
    pub(crate) fn new(face: Face, client: Client) -> Core {
        Core {
            face,
            client: RwLock::new(Some(client)),
            home: None,
        }
    }

    /// The client with this call's deadline; FAILED_PRECONDITION after close().
    fn client(&self, timeout: Option<f64>) -> Result<Client, Error> {
        let client = self.client.read().unwrap_or_else(|p| p.into_inner());
        let client = client.as_ref().ok_or_else(|| {
            Error::new(
                ErrorCode::FailedPrecondition,
                "this connection is closed; open a new one",
            )
        })?;
        with_timeout(client, timeout)
    }

    /// Runs `work` with the client under `timeout`. The deadline is kept
    /// here, so a call ends in time even when the network hangs; for a
    /// `Call` it also travels to the server (grpc-timeout). An `Opening`
    /// (join, subscribe) gets only the local bound: the stream it opens
    /// must not end when the deadline passes.
    fn run<'py, T, F, Fut>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        scope: Scope,
        work: F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        T: ToPython + Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        let sent = match scope {
            Scope::Call => timeout,
            Scope::Opening => None,
        };
        match (self.client(sent), duration(timeout, "timeout")) {
            (Ok(client), Ok(limit)) => {
                let home = self.home.clone();
                let work = work(client);
                finish(py, self.face, async move {
                    // Checked when the work first runs: that is in the
                    // awaiting loop, wherever the call was made.
                    if let Some(home) = home {
                        home.check_here()?;
                    }
                    within(limit, work).await
                })
            }
            (Err(error), _) | (_, Err(error)) => {
                finish(py, self.face, async move { Err::<T, _>(error) })
            }
        }
    }
}

/// What a deadline bounds: a whole call, or only the opening of a stream.
#[derive(Clone, Copy)]
enum Scope {
    Call,
    Opening,
}

/// `Core`'s `#[pymethods]`, in one block as pyo3 wants them. After the
/// methods written out in full come those that only check their arguments
/// and make one client call: `fn name(args) { checks } Scope |client| { call }`
/// makes a method of `args` and a last `timeout=None` that runs the checks
/// while it holds the GIL, then the call by `Core::run` under `Scope`.
/// `[self, py, timeout]` names those three for the checks and calls (a
/// macro's own names are out of their reach).
macro_rules! core_methods {
    (
        [$this:ident, $py:ident, $timeout:ident]
        { $($written_out:tt)* }
        $(
            $(#[$attr:meta])*
            fn $name:ident($($arg:ident: $ty:ty $(= $default:tt)?),* $(,)?)
            $({ $($check:tt)* })?
            $scope:ident |$client:ident| $call:block
        )*
    ) => {
        #[pymethods]
        impl Core {
            $($written_out)*
            $(
                $(#[$attr])*
                #[pyo3(signature = ($($arg $(= $default)?,)* $timeout = None))]
                fn $name<'py>(
                    &$this,
                    $py: Python<'py>,
                    $($arg: $ty,)*
                    $timeout: Option<f64>,
                ) -> PyResult<Bound<'py, PyAny>> {
                    $($($check)*)?
                    $this.run($py, $timeout, Scope::$scope, move |$client| async move $call)
                }
            )*
        }
    };
}

core_methods! {
    [self, py, timeout]
    {
        #[getter]
        fn address(&self) -> PyResult<String> {
            Python::attach(|py| {
                self.client(None)
                    .map(|c| c.address().to_string())
                    .map_err(|e| crate::convert::to_pyerr(py, &e))
            })
        }

        #[getter]
        fn is_async(&self) -> bool {
            self.face == Face::Asyncio
        }

        /// A handle on the same connection whose writes carry `key` as their
        /// idempotency key (see `Client::with_idempotency_key`).
        fn with_idempotency_key(&self, py: Python<'_>, key: String) -> PyResult<Core> {
            let keyed = self
                .client(None)
                .and_then(|client| client.with_idempotency_key(&key))
                .map_err(|e| crate::convert::to_pyerr(py, &e))?;
            Ok(Core {
                face: self.face,
                client: RwLock::new(Some(keyed)),
                home: self.home.clone(),
            })
        }

        /// Drops this handle's connection (streams still open keep theirs).
        fn close(&self) {
            self.client
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }

        #[getter]
        fn closed(&self) -> bool {
            self.client
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
        }

        /// Calls `method` by name: a unary call's reply (a dict), or with
        /// `streaming` a started `CoreCall` (request: its first message).
        /// `trace_id` and `metadata` (`x-` keys) travel with the call.
        #[pyo3(signature = (method, request=None, timeout=None, streaming=false, trace_id=None, metadata=None))]
        #[allow(clippy::too_many_arguments)]
        fn call<'py>(
            &self,
            py: Python<'py>,
            method: String,
            request: Option<Bound<'py, PyAny>>,
            timeout: Option<f64>,
            streaming: bool,
            trace_id: Option<String>,
            metadata: Option<std::collections::HashMap<String, String>>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let request = request.map(|r| py_to_json(&r)).transpose();
            // Checked here, so bad ones fail before anything is sent.
            let tagged = |c: Client| -> Result<Client, Error> {
                let c = match &trace_id {
                    Some(trace_id) => c.with_trace_id(trace_id)?,
                    None => c,
                };
                match &metadata {
                    Some(metadata) => c.with_metadata(metadata),
                    None => Ok(c),
                }
            };
            if !streaming {
                return self.run(py, timeout, Scope::Call, |c| {
                    let c = tagged(c);
                    async move {
                        let request = request?.unwrap_or_else(|| Value::Object(Default::default()));
                        c?.call(&method, request).await
                    }
                });
            }
            let face = self.face;
            let deadline = duration(timeout, "timeout")
                .ok()
                .flatten()
                .map(|limit| tokio::time::Instant::now() + limit);
            self.run(py, timeout, Scope::Call, move |c| {
                let c = tagged(c);
                async move {
                    let call = c?.stream(&method, request?).await?;
                    Ok(CoreCall::new(face, call, deadline))
                }
            })
        }

        /// Opens a stream of the resource at `path`: joins a "room" (a
        /// `CoreMembership`) or subscribes to a "wire" (a `CoreSubscription`).
        #[pyo3(signature = (kind, path, timeout=None, resume=false))]
        fn open<'py>(
            &self,
            py: Python<'py>,
            kind: &str,
            path: String,
            timeout: Option<f64>,
            resume: bool,
        ) -> PyResult<Bound<'py, PyAny>> {
            let face = self.face;
            match kind {
                "room" => self.run(py, timeout, Scope::Opening, move |client| async move {
                    let membership = client.join(&path).await?;
                    let member_id = Arc::new(Mutex::new(String::new()));
                    let path = membership.path().to_string();
                    let events = Pull::new(MembershipEvents::new(membership, member_id.clone()));
                    Ok(Opened::Room(CoreMembership {
                        face,
                        client,
                        path,
                        member_id,
                        events,
                    }))
                }),
                _ => self.run(py, timeout, Scope::Opening, move |client| async move {
                    let subscription = CoreSubscription::open(face, &client, &path, resume).await?;
                    Ok(Opened::Wire(subscription))
                }),
            }
        }

        /// A publisher for the wire at `path` (starts the stream; no wait).
        #[pyo3(signature = (path, timeout=None))]
        fn publisher(
            &self,
            py: Python<'_>,
            path: String,
            timeout: Option<f64>,
        ) -> PyResult<CorePublisher> {
            let client = self
                .client(timeout)
                .map_err(|e| crate::convert::to_pyerr(py, &e))?;
            Ok(CorePublisher::start(self.face, client, path))
        }
    }

    /// Offers `services`, defined by the encoded FileDescriptorSet
    /// `descriptors`, running at most `concurrency` calls at once (0: the
    /// default); the result is a `CoreProvider` once the node accepted the
    /// offer. `timeout` bounds only the offer: the provider lasts until
    /// it is closed.
    fn provide(services: Vec<String>, descriptors: Vec<u8>, concurrency: u32) {
        let face = self.face;
    } Opening |c| {
        crate::mesh::provide(face, c, services, descriptors, concurrency).await
    }

    /// Live services at or below `path` ("/services" when empty), with
    /// their providers (a list of dicts).
    fn services(path: String) Call |c| {
        Ok(messages_to_json(&c.services(&path).await?))
    }

    /// The node's status (a dict).
    fn status() Call |c| {
        Ok(message_to_json(&c.status().await?))
    }

    /// The identity this connection is logged in as (a dict).
    fn whoami() Call |c| {
        Ok(message_to_json(&c.whoami().await?))
    }

    /// The resources below `path` (a list of dicts).
    fn ls(path: String, recursive: bool) Call |c| {
        Ok(messages_to_json(&c.ls(&path, recursive).await?))
    }

    /// The resource at `path` (a dict).
    fn get(path: String) Call |c| {
        Ok(message_to_json(&c.get(&path).await?))
    }

    /// Creates a resource of `kind` ("folder", "room", "wire" or
    /// "database"); with `exist_ok` an existing one of that kind is
    /// returned. The result is the resource (a dict).
    fn create(path: String, kind: Bound<'py, PyAny>, parents: bool, exist_ok: bool) {
        let kind = choice(&kind, &KINDS, "kind");
    } Call |c| {
        let kind = kind?;
        let made = if exist_ok {
            c.ensure(&path, kind, parents).await?
        } else {
            c.create(&path, kind, parents).await?
        };
        Ok(message_to_json(&made))
    }

    /// Deletes a resource; the result is how many were deleted.
    fn rm(path: String, recursive: bool) Call |c| {
        c.rm(&path, recursive).await
    }

    /// Moves a resource; the result is it at its new path (a dict).
    fn mv(source: String, destination: String) Call |c| {
        Ok(message_to_json(&c.mv(&source, &destination).await?))
    }

    /// Grants `right` ("read", "write" or "admin"); the result is the
    /// grants set on `path` (a list of dicts).
    fn grant(path: String, principal: String, right: Bound<'py, PyAny>) {
        let right = choice(&right, &RIGHTS, "right");
    } Call |c| {
        Ok(messages_to_json(&c.grant(&path, &principal, right?).await?))
    }

    /// Removes `principal`'s grant on `path`; the result is the grants left.
    fn revoke(path: String, principal: String) Call |c| {
        Ok(messages_to_json(&c.revoke(&path, &principal).await?))
    }

    /// The grants set on `path` (with `effective`, inherited ones too).
    fn grants(path: String, effective: bool) Call |c| {
        Ok(messages_to_json(&c.grants(&path, effective).await?))
    }

    /// Creates a password identity; the result is it (a dict).
    fn create_user(name: String, password: String, admin: bool) Call |c| {
        Ok(message_to_json(&c.create_user(&name, &password, admin).await?))
    }

    /// Creates an API token for the caller, valid `ttl_seconds` (None:
    /// until revoked); the result is its secret.
    fn create_token(name: String, ttl_seconds: Option<u64> = None) {
        let ttl = ttl_seconds.map(Duration::from_secs);
    } Call |c| {
        let (secret, _info) = c.create_token(&name, ttl).await?;
        Ok(secret)
    }

    /// Emits `event` with `args` (a list or tuple) to the room at `path`
    /// without joining; the result is how many members it reached.
    fn emit(path: String, event: String, args: Bound<'py, PyAny>) {
        let args = py_to_json_list(&args);
    } Call |c| {
        c.emit(&path, &event, args?).await
    }

    /// Runs one SQL statement; the result is a pyarrow.Table (see `SqlTable`).
    fn sql(database: String, sql: String, params: Option<Bound<'py, PyAny>> = None) {
        let statement = statement(py, sql, params.as_ref());
    } Call |c| {
        let result = c.sql(&database, statement?).await?;
        Ok(SqlTable(result))
    }

    /// Runs one statement once per row of parameters, in one round trip and
    /// one transaction; the result is the summary dict.
    fn sql_many(database: String, sql: String, rows: Bound<'py, PyAny>) {
        let statements = statements(py, &rows);
    } Call |c| {
        let summary = c.sql_many(&database, &sql, statements?).await?;
        Ok(message_to_json(&summary))
    }

    /// Runs a stored procedure; the result is a pyarrow.Table of its last
    /// statement's rows (see `SqlTable`).
    fn run_procedure(
        database: String,
        name: String,
        args: Option<Bound<'py, PyAny>> = None,
        kwargs: Option<Bound<'py, PyAny>> = None,
    ) {
        let given = procedure_args(py, args.as_ref(), kwargs.as_ref());
    } Call |c| {
        let result = c.run_procedure(&database, &name, given?).await?;
        Ok(SqlTable(result))
    }

    /// Stores a procedure; the result is it (a dict).
    #[allow(clippy::too_many_arguments)] // the SDK method's arguments, one for one
    fn create_procedure(
        database: String,
        name: String,
        params: Vec<String>,
        body: String,
        replace: bool,
    ) Call |c| {
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        let made = c
            .create_procedure(&database, &name, &params, &body, replace)
            .await?;
        Ok(message_to_json(&made))
    }

    /// Drops a procedure; the result is the reply's (empty) dict.
    fn drop_procedure(database: String, name: String) Call |c| {
        c.drop_procedure(&database, &name).await?;
        Ok(message_to_json(&busbar_client::proto::DropProcedureResponse {}))
    }

    /// A database's procedures (a list of dicts).
    fn procedures(database: String) Call |c| {
        Ok(messages_to_json(&c.procedures(&database).await?))
    }

    /// A key pair made here and a client certificate for it from the node's
    /// CA (see `Client::new_certificate`), as a dict.
    fn new_certificate(name: String, days: u32, create: bool, admin: bool) Call |c| {
        let issued = c
            .new_certificate(&name, days, create.then_some(admin))
            .await?;
        Ok(serde_json::json!({
            "certificate_pem": issued.certificate_pem,
            "private_key_pem": issued.private_key_pem,
            "ca_pem": issued.ca_pem,
            "fingerprint": issued.info.fingerprint,
            "identity": issued.info.identity,
            "serial": issued.info.serial,
            "created_ms": issued.info.created_ms,
            "expires_ms": issued.info.expires_ms,
        }))
    }

    /// The client certificates issued to `identity` (a list of dicts).
    fn certificates(identity: String) Call |c| {
        Ok(messages_to_json(&c.certificates(&identity).await?))
    }

    /// Revokes a client certificate by its hex SHA-256 fingerprint.
    fn revoke_certificate(fingerprint: String) Call |c| {
        c.revoke_certificate(&fingerprint).await?;
        Ok(None::<Value>) // None in Python (a unit `()` would be an empty tuple)
    }

    /// Opens a data session (a `CoreSession`).
    fn session() {
        let face = self.face;
    } Call |c| {
        // The session outlives this call's deadline.
        let session = Client::clone(&c).session().await?;
        Ok(CoreSession::new(face, session))
    }

    /// Opens (creating it when missing) or joins the transport session
    /// `session`; the result is the session (a dict: session, path,
    /// metadata, created).
    fn transport_open(session: String, metadata: Option<Bound<'py, PyAny>> = None) {
        let metadata = transport::metadata(metadata.as_ref())?;
    } Call |c| {
        let opened = c.transport_open(&session, metadata).await?;
        Ok(serde_json::json!({
            "session": opened.session,
            "path": opened.path,
            "metadata": opened.metadata,
            "created": opened.created,
        }))
    }

    /// Appends `payload` (bytes-like; TypeError otherwise) to `topic`'s
    /// queue; the result is the message's id.
    fn transport_push(
        session: String,
        topic: String,
        payload: Bound<'py, PyAny>,
        metadata: Option<Bound<'py, PyAny>> = None,
    ) {
        let payload = transport::payload(&payload)?;
        let metadata = transport::metadata(metadata.as_ref())?;
    } Call |c| {
        c.transport_push(&session, &topic, payload, metadata).await
    }

    /// Takes the oldest message of `topic`, waiting up to `wait` seconds;
    /// with `lease` (seconds) it is leased instead of removed. The result
    /// is a message dict or None.
    fn transport_pop(session: String, topic: String, wait: f64, lease: Option<f64> = None) {
        let wait = transport::seconds(wait, "timeout");
        let lease = lease.map(|l| transport::seconds(l, "lease")).transpose();
    } Call |c| {
        let popped = c.transport_pop(&session, &topic, wait?, lease?).await?;
        Ok(transport::Popped(popped))
    }

    /// The oldest message of `topic`, left in place (a dict or None).
    fn transport_peek(session: String, topic: String) Call |c| {
        Ok(transport::Popped(c.transport_peek(&session, &topic).await?))
    }

    /// Settles a leased message: "ack" removes it, "nak" returns it first
    /// in its queue; "extend" moves its lease's end to `lease` seconds from
    /// now. The result is the lease's end (epoch ms; 0 for ack and nak).
    #[allow(clippy::too_many_arguments)] // the lease calls, one for one
    fn transport_settle(session: String, receipt: String, action: String, lease: f64 = 0.0) {
        let lease = transport::seconds(lease, "lease");
    } Call |c| {
        match action.as_str() {
            "ack" => c.transport_ack(&session, &receipt).await.map(|()| 0i64),
            "nak" => c.transport_nak(&session, &receipt).await.map(|()| 0i64),
            _ => c.transport_extend(&session, &receipt, lease?).await,
        }
        .map(serde_json::Value::from)
    }

    /// Ends the session; the result is how many messages were dropped.
    fn transport_release(session: String) Call |c| {
        c.transport_release(&session).await
    }

    /// Creates a time series of a resolution and curve given by any of
    /// their names; with `exist_ok` an existing one of the same definition
    /// is returned. The result is the resource (a dict).
    #[allow(clippy::too_many_arguments)] // the SDK method's arguments, one for one
    fn create_series(
        path: String,
        resolution: &str,
        unit: String,
        curve: &str,
        time_zone: Option<String>,
        parents: bool,
        exist_ok: bool,
    ) {
        let spec = series_spec(resolution, unit, curve, time_zone);
    } Call |c| {
        let spec = spec?;
        let made = if exist_ok {
            c.ensure_series(&path, &spec, parents).await?
        } else {
            c.create_series(&path, &spec, parents).await?
        };
        Ok(message_to_json(&made))
    }

    /// A series' definition, point count and first and last times (a
    /// dict); in a session, as the session sees it.
    fn describe_series(path: String) Call |c| {
        Ok(message_to_json(&c.describe_series(&path).await?))
    }

    /// Reads `[start_ms, end_ms)` of each series: a list of pyarrow.Tables.
    fn read_series(paths: Vec<String>, start_ms: Option<i64> = None, end_ms: Option<i64> = None)
    Call |c| {
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let interval = Interval { start_ms, end_ms };
        Ok(SeriesTables(c.read_many_series(&paths, interval).await?))
    }

    /// Replaces `[start_ms, end_ms)` of a series with a table's points (any
    /// object with `__arrow_c_stream__`); returns the write summary.
    fn write_series(
        path: String,
        table: pyo3_arrow::PyTable,
        start_ms: Option<i64> = None,
        end_ms: Option<i64> = None,
    ) {
        let (batches, _) = table.into_inner();
    } Call |c| {
        let interval = Interval { start_ms, end_ms };
        let written = c.write_series(&path, interval, batches).await?;
        Ok(serde_json::json!({
            "points_written": written.points_written,
            "points_deleted": written.points_deleted,
            "start_ms": written.start_ms,
            "end_ms": written.end_ms,
        }))
    }
}
