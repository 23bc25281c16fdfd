//! The SPIFFE Workload API of the proxy agent (`zone proxy --workload-api unix:///PATH`): a gRPC
//! server on a unix socket (mode 0600) speaking the standard's `SpiffeWorkloadAPI`
//! (`proto/workload.proto`), so that go-spiffe, py-spiffe, java-spiffe and spiffe-helper get the
//! proxy's identity as they would get it from SPIRE's agent. It owns the socket (a stale one is
//! removed at start, ours at stop), the current SVID material ([`Material`], kept in a `watch`
//! channel by a [`Publisher`] that the writer feeds after each successful write, and that starts
//! from the files already on disk) and the streams: `FetchX509SVID` and `FetchX509Bundles` send
//! what the files hold at once, then again on every change (a rotation, a trust bundle change:
//! during a CA switch the bundle holds the old and the new CA); before the agent holds anything
//! they wait. It serves exactly what the files hold: the chain of `cert.pem` (leaf first) as
//! concatenated DER, `key.pem` as PKCS#8 DER, `ca.pem` as the trust domain's bundle keyed by the
//! trust domain's SPIFFE ID (`spiffe://<mesh>`, as SPIRE keys it; every client accepts it). Only a
//! strict X.509-SVID is served (exactly one URI SAN, a `spiffe://` ID with a path; a leaf, allowed
//! to sign but not to certify); the proxy certificates of a mesh with `dpCert.uriSans: kuma` carry
//! several URI SANs, and the X.509 calls then fail with FAILED_PRECONDITION saying to set
//! `dpCert.uriSans: spiffe`. A call without the `workload.spiffe.io: true` metadata gets
//! INVALID_ARGUMENT (as SPIRE answers); the JWT calls answer UNIMPLEMENTED. Connections pass
//! through `authority`, which makes the socket path that grpc-core and grpc-java clients send as
//! `:authority` acceptable to the HTTP/2 server. At most [`limits::WORKLOAD_API_CONNECTIONS`]
//! connections are served and [`limits::WORKLOAD_API_STREAMS`] streams run at once; each stream
//! holds at most one response in flight (the latest state wins). The key never reaches a log or a
//! `Debug` output.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::limits;
use common::shutdown::Shutdown;
use futures::Stream;
use proto::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::{Request, Response, Status};

use super::files::{CA_FILE, CERT_FILE, KEY_FILE, OutDir};

pub mod authority;

/// The flag that turns the server on.
pub const FLAG: &str = "--workload-api";
/// The metadata every Workload API call carries, with the value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// Longest socket path a `sockaddr_un` holds (108 bytes with the final NUL).
const SOCKET_PATH_MAX: usize = 107;
/// How long the server may take to close its connections once the agent stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest SPIFFE ID (the SPIFFE ID standard's bound).
const SPIFFE_ID_MAX: usize = 2048;

/// The socket path of `--workload-api unix:///ABSOLUTE/PATH`, or why the endpoint is refused
/// (naming the flag).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let bad = |why: &str| {
        Err(format!(
            "{FLAG} {endpoint:?}: {why}; give unix:///ABSOLUTE/PATH (e.g. unix:///run/kmesh/workload.sock)"
        ))
    };
    let Some(rest) = endpoint.strip_prefix("unix://") else {
        return bad(
            "only a unix domain socket is served (the Workload API is local to the host and its workloads)",
        );
    };
    if !rest.starts_with('/') {
        return bad("a unix:// address takes no host and an absolute path (three slashes)");
    }
    if rest.contains(['?', '#', '%', '\0']) {
        return bad("a query, a fragment, percent-encoding or NUL has no place in the socket path");
    }
    if rest.ends_with('/') {
        return bad("the path names a directory, not a socket");
    }
    if rest.len() > SOCKET_PATH_MAX {
        return bad(&format!(
            "the path is {} bytes long, more than a unix socket address holds ({SOCKET_PATH_MAX})",
            rest.len()
        ));
    }
    Ok(PathBuf::from(rest))
}

/// The identity an X.509-SVID names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    /// `spiffe://<trust domain>/<path>`.
    pub id: String,
    /// The trust domain's name (`<mesh>` for kmesh's proxies).
    pub trust_domain: String,
}

impl SpiffeId {
    /// The key of the trust domain in bundle maps: its SPIFFE ID, `spiffe://<trust domain>`.
    pub fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.trust_domain)
    }
}

/// What the agent's files hold, as the Workload API serves it.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    /// DER certificates of `cert.pem`, the leaf first.
    chain: Vec<Vec<u8>>,
    /// `key.pem` as unencrypted PKCS#8 DER.
    key_pkcs8: Vec<u8>,
    /// DER certificates of `ca.pem`.
    bundle: Vec<Vec<u8>>,
    /// The SPIFFE ID of the leaf, or why the leaf is not an X.509-SVID.
    svid: Result<SpiffeId, String>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field(
                "chain",
                &format_args!("<{} certificates>", self.chain.len()),
            )
            .field("key_pkcs8", &format_args!("<redacted>"))
            .field(
                "bundle",
                &format_args!("<{} certificates>", self.bundle.len()),
            )
            .field("svid", &self.svid)
            .finish()
    }
}

impl Material {
    /// From the PEM of the three files. `mesh` only words the advice when the leaf is not an
    /// X.509-SVID. Errors never hold key bytes.
    pub fn from_pem(
        mesh: &str,
        cert_chain_pem: &str,
        key_pem: &str,
        trust_bundle_pem: &str,
    ) -> Result<Self, String> {
        let chain =
            common::x509::pem_to_ders(cert_chain_pem).map_err(|e| format!("{CERT_FILE}: {e}"))?;
        let bundle =
            common::x509::pem_to_ders(trust_bundle_pem).map_err(|e| format!("{CA_FILE}: {e}"))?;
        if !common::x509::private_key_matches_cert(cert_chain_pem, key_pem) {
            return Err(format!(
                "{KEY_FILE} does not hold the key of the leaf of {CERT_FILE}"
            ));
        }
        let key_pkcs8 =
            common::x509::private_key_pkcs8_der(key_pem).map_err(|e| format!("{KEY_FILE}: {e}"))?;
        let svid = x509_svid_id(mesh, &chain[0]);
        Ok(Self {
            chain,
            key_pkcs8,
            bundle,
            svid,
        })
    }

    /// What `out` holds now.
    pub fn read(mesh: &str, out: &OutDir) -> Result<Self, String> {
        let read = |name: &str| {
            std::fs::read_to_string(out.path(name))
                .map_err(|e| format!("cannot read {}: {e}", out.path(name).display()))
        };
        Self::from_pem(mesh, &read(CERT_FILE)?, &read(KEY_FILE)?, &read(CA_FILE)?)
    }

    /// The SPIFFE ID of the SVID, or why the leaf is not one.
    pub fn svid(&self) -> &Result<SpiffeId, String> {
        &self.svid
    }

    fn x509_svid_response(&self) -> Result<X509svidResponse, Status> {
        let id = self
            .svid
            .as_ref()
            .map_err(|e| Status::failed_precondition(e.clone()))?;
        Ok(X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: id.id.clone(),
                x509_svid: self.chain.concat(),
                x509_svid_key: self.key_pkcs8.clone(),
                bundle: self.bundle.concat(),
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: Default::default(),
        })
    }

    fn x509_bundles_response(&self) -> Result<X509BundlesResponse, Status> {
        let id = self
            .svid
            .as_ref()
            .map_err(|e| Status::failed_precondition(e.clone()))?;
        Ok(X509BundlesResponse {
            crl: Vec::new(),
            bundles: [(id.trust_domain_id(), self.bundle.concat())]
                .into_iter()
                .collect(),
        })
    }
}

/// The SPIFFE ID of `leaf_der` when it is a strict X.509-SVID (exactly one URI SAN, a valid
/// `spiffe://` ID with a path; not a CA; key usage with digitalSignature and without keyCertSign
/// or cRLSign), else why not, with what to change.
pub fn x509_svid_id(mesh: &str, leaf_der: &[u8]) -> Result<SpiffeId, String> {
    let leaf = common::x509::summarize_der(leaf_der)
        .map_err(|e| format!("the proxy's certificate cannot be read: {e}"))?;
    let advice = format!(
        "set `dpCert.uriSans: spiffe` on the enabled backend of mesh {mesh:?} so that its proxy certificates carry the one spiffe:// URI SAN an X.509-SVID has"
    );
    let id = match leaf.uri_sans.as_slice() {
        [one] => one,
        [] => {
            return Err(format!(
                "the proxy's certificate (serial {}) is not an X.509-SVID: it has no URI SAN; {advice}",
                leaf.serial
            ));
        }
        many => {
            return Err(format!(
                "the proxy's certificate (serial {}) is not an X.509-SVID: it has {} URI SANs ({}) where an X.509-SVID has exactly one; {advice}",
                leaf.serial,
                many.len(),
                many.join(", ")
            ));
        }
    };
    let parsed = parse_spiffe_id(id).map_err(|why| {
        format!(
            "the proxy's certificate (serial {}) is not an X.509-SVID: its URI SAN {id:?} {why}; {advice}",
            leaf.serial
        )
    })?;
    let not_leaf = |why: &str| {
        Err(format!(
            "the proxy's certificate (serial {}) is not an X.509-SVID: {why}",
            leaf.serial
        ))
    };
    if leaf.is_ca {
        return not_leaf("it is a CA certificate");
    }
    match &leaf.key_usage {
        None => return not_leaf("it has no key usage extension (an X.509-SVID must)"),
        Some(ku) if !ku.contains(&"DigitalSignature") => {
            return not_leaf("its key usage lacks digitalSignature");
        }
        Some(ku) if ku.contains(&"CertSign") || ku.contains(&"CRLSign") => {
            return not_leaf("its key usage allows keyCertSign or cRLSign, which a leaf must not");
        }
        Some(_) => {}
    }
    Ok(parsed)
}

/// Parses a SPIFFE ID as the SPIFFE ID standard defines it, for a workload (a path is needed):
/// `spiffe://` then a trust domain of lower-case letters, digits, `.`, `-`, `_`, then segments
/// of letters, digits, `.`, `-`, `_`, none empty, `.` or `..`. The error says what is wrong.
pub fn parse_spiffe_id(id: &str) -> Result<SpiffeId, String> {
    if id.len() > SPIFFE_ID_MAX {
        return Err(format!("is longer than {SPIFFE_ID_MAX} bytes"));
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("is not a spiffe:// ID")?;
    let (trust_domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if trust_domain.is_empty() {
        return Err("has no trust domain".into());
    }
    if !trust_domain
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "has a trust domain {trust_domain:?} with characters other than a-z, 0-9, '.', '-', '_'"
        ));
    }
    if path.is_empty() {
        return Err("has no path (a workload's ID is not its trust domain)".into());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err("has an empty, '.' or '..' path segment".into());
        }
        if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(format!(
                "has a path segment {segment:?} with characters other than letters, digits, '.', '-', '_'"
            ));
        }
    }
    Ok(SpiffeId {
        id: id.to_string(),
        trust_domain: trust_domain.to_string(),
    })
}

/// What the streams watch: `None` until the agent holds an identity.
pub type Current = Option<Arc<Material>>;

/// The writer's end: publishes what the files hold after each successful write. Only a change
/// reaches the streams.
#[derive(Clone)]
pub struct Publisher {
    mesh: String,
    tx: watch::Sender<Current>,
}

impl Publisher {
    /// Starts from what `out` holds when it is a usable identity (valid now, key matching).
    pub fn new(mesh: &str, out: &OutDir) -> Self {
        let initial = match out.held() {
            Some(_) => match Material::read(mesh, out) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    tracing::warn!(error = %e, "{FLAG}: the files on disk cannot be served; waiting for the zone's identity");
                    None
                }
            },
            None => None,
        };
        let (tx, _) = watch::channel(initial);
        Self {
            mesh: mesh.to_string(),
            tx,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Current> {
        self.tx.subscribe()
    }

    /// What the streams see now.
    pub fn current(&self) -> Current {
        self.tx.borrow().clone()
    }

    /// Publishes `material`, if it differs from what is published.
    pub fn publish(&self, material: Material) {
        self.tx.send_if_modified(|cur| {
            if cur.as_deref() == Some(&material) {
                return false;
            }
            // Said once per change between serving X.509-SVIDs and not.
            let was_svid = cur.as_ref().map(|m| m.svid.is_ok());
            match (&material.svid, was_svid) {
                (Err(why), None | Some(true)) => tracing::warn!(
                    reason = %why,
                    "{FLAG}: the proxy's certificate is not an X.509-SVID: FetchX509SVID and FetchX509Bundles fail with FAILED_PRECONDITION"
                ),
                (Ok(id), Some(false)) => tracing::info!(
                    spiffe_id = %id.id,
                    "{FLAG}: the proxy's certificate is an X.509-SVID again: serving it"
                ),
                _ => {}
            }
            *cur = Some(Arc::new(material));
            true
        });
    }

    /// Reads the files the writer just wrote and publishes them.
    pub async fn refresh(&self, out: &OutDir) {
        let (mesh, out) = (self.mesh.clone(), out.clone());
        let read = tokio::task::spawn_blocking(move || Material::read(&mesh, &out))
            .await
            .unwrap_or_else(|e| Err(format!("the reading task failed: {e}")));
        match read {
            Ok(m) => self.publish(m),
            Err(e) => {
                tracing::warn!(error = %e, "{FLAG}: cannot serve the files just written; the Workload API keeps serving the previous identity")
            }
        }
    }
}

/// The service: what every call shares.
#[derive(Clone)]
struct Service {
    current: watch::Receiver<Current>,
    streams: Arc<Semaphore>,
    max_streams: usize,
    shutdown: Shutdown,
}

type Updates<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// INVALID_ARGUMENT unless `request` carries `workload.spiffe.io: true`, once.
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "security header missing from request: every Workload API call must carry the metadata {SECURITY_HEADER}: true"
        ))),
    }
}

fn jwt_unimplemented() -> Status {
    Status::unimplemented(
        "this agent serves the X.509-SVID profile only (FetchX509SVID, FetchX509Bundles); JWT-SVIDs are not issued",
    )
}

/// One stream's state.
struct Watch<T> {
    rx: watch::Receiver<Current>,
    shutdown: Shutdown,
    _permit: OwnedSemaphorePermit,
    last: Option<T>,
    first: bool,
    done: bool,
}

impl Service {
    /// The stream of `make`'s responses: the current one at once (when there is one), then each
    /// that differs from the last sent; an error (not an SVID) is sent and ends the stream.
    fn updates<T>(&self, make: fn(&Material) -> Result<T, Status>) -> Result<Updates<T>, Status>
    where
        T: Clone + PartialEq + Send + 'static,
    {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this agent already serves {} Workload API streams, its bound",
                self.max_streams
            ))
        })?;
        let state = Watch {
            rx: self.current.clone(),
            shutdown: self.shutdown.clone(),
            _permit: permit,
            last: None,
            first: true,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            move |mut s| async move {
                if s.done {
                    return None;
                }
                loop {
                    if !s.first {
                        let stopping = tokio::select! {
                            changed = s.rx.changed() => changed.is_err(),
                            _ = s.shutdown.wait() => true,
                        };
                        if stopping {
                            s.done = true;
                            return Some((
                                Err(Status::unavailable("the proxy agent is stopping")),
                                s,
                            ));
                        }
                    }
                    s.first = false;
                    let Some(material) = s.rx.borrow_and_update().clone() else {
                        continue;
                    };
                    match make(&material) {
                        Ok(resp) if s.last.as_ref() == Some(&resp) => continue,
                        Ok(resp) => {
                            s.last = Some(resp.clone());
                            return Some((Ok(resp), s));
                        }
                        Err(status) => {
                            s.done = true;
                            return Some((Err(status), s));
                        }
                    }
                }
            },
        )))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = Updates<X509svidResponse>;
    type FetchX509BundlesStream = Updates<X509BundlesResponse>;
    type FetchJWTBundlesStream = Updates<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        self.updates(Material::x509_svid_response)
            .map(Response::new)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        self.updates(Material::x509_bundles_response)
            .map(Response::new)
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(jwt_unimplemented())
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        Err(jwt_unimplemented())
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(jwt_unimplemented())
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{FLAG} {path}: {reason}")]
    Socket { path: String, reason: String },
}

fn socket_error(path: &Path, reason: impl Into<String>) -> ServeError {
    ServeError::Socket {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The running server: stop it with [`Server::stop`].
pub struct Server {
    path: PathBuf,
    /// Device and inode of our socket: only that file is removed at stop.
    inode: (u64, u64),
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `path` (removing a stale socket left there; refusing a live one or any other kind of
    /// file) with mode 0600 from the start, and serves until `shutdown`.
    pub async fn start(
        path: &Path,
        current: watch::Receiver<Current>,
        shutdown: Shutdown,
    ) -> Result<Self, ServeError> {
        Self::start_with(path, current, shutdown, limits::WORKLOAD_API_STREAMS).await
    }

    /// [`Server::start`] with another bound on concurrent streams (tests).
    pub async fn start_with(
        path: &Path,
        current: watch::Receiver<Current>,
        shutdown: Shutdown,
        max_streams: usize,
    ) -> Result<Self, ServeError> {
        remove_stale(path)?;
        let listener = bind_private(path)?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| socket_error(path, format!("cannot stat the socket just bound: {e}")))?;
        let service = Service {
            current,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            shutdown: shutdown.clone(),
        };
        let svc = SpiffeWorkloadApiServer::new(service)
            .max_decoding_message_size(limits::WORKLOAD_API_REQUEST_BYTES);
        // Each connection through the relay that makes clients' `:authority` acceptable; beyond
        // the bound on connections, a new one is closed at once.
        let connections = Arc::new(Semaphore::new(limits::WORKLOAD_API_CONNECTIONS));
        let incoming = futures::StreamExt::filter_map(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            move |accepted| {
                let admitted = match accepted {
                    Ok(stream) => match connections.clone().try_acquire_owned() {
                        Ok(permit) => Some(Ok(authority::relay(stream, permit))),
                        Err(_) => {
                            tracing::warn!(
                                limit = limits::WORKLOAD_API_CONNECTIONS,
                                "{FLAG}: too many connections: closing a new one"
                            );
                            None
                        }
                    },
                    Err(e) => Some(Err(e)),
                };
                std::future::ready(admitted)
            },
        );
        let shown = path.display().to_string();
        let task = tokio::spawn(async move {
            // HTTP/2 streams of one connection: room for the bounded streams and a few unary
            // calls, so that a stream over the bound is refused (RESOURCE_EXHAUSTED), not queued.
            let served = tonic::transport::Server::builder()
                .max_concurrent_streams(Some(max_streams.saturating_add(8) as u32))
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
                .await;
            if let Err(e) = served {
                tracing::error!(socket = %shown, error = %crate::dial::error_chain(&e), "the Workload API server failed");
            }
        });
        tracing::info!(socket = %path.display(), "serving the SPIFFE Workload API");
        Ok(Self {
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the server (its shutdown must have fired) and removes the socket file.
    pub async fn stop(self) {
        let Self { path, inode, task } = self;
        let abort = task.abort_handle();
        if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
            abort.abort();
            tracing::warn!(socket = %path.display(), "the Workload API server did not stop in time: its connections are dropped");
        }
        // Only our socket: another agent may have taken the path since.
        if let Ok(m) = std::fs::symlink_metadata(&path)
            && (m.dev(), m.ino()) == inode
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove the Workload API socket");
        }
        tracing::info!(socket = %path.display(), "the SPIFFE Workload API is no longer served");
    }
}

/// Removes a socket left at `path` by an agent that is gone. A socket something still answers
/// on, or a file of another kind, is refused.
fn remove_stale(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_error(path, format!("cannot inspect the path: {e}"))),
    };
    if !meta.file_type().is_socket() {
        return Err(socket_error(
            path,
            "exists and is not a socket: not removing it; give a path of its own",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(socket_error(
            path,
            "another process serves this socket (another agent?); stop it or give another path",
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| socket_error(path, format!("cannot remove the stale socket: {e}")))?;
    tracing::info!(socket = %path.display(), "removed a stale Workload API socket");
    Ok(())
}

/// Binds `path` so that it is 0600 from the moment it appears there: bound in a private (0700)
/// directory beside it, made 0600, then renamed into place.
fn bind_private(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Err(socket_error(path, "has no directory")),
    };
    if !parent.is_dir() {
        return Err(socket_error(
            path,
            format!("its directory {} does not exist", parent.display()),
        ));
    }
    let staging = parent.join(format!(".kmesh-workload-api.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| {
            socket_error(
                path,
                format!("cannot create {} to bind in: {e}", staging.display()),
            )
        })?;
    let result = (|| {
        let inner = staging.join("s");
        let listener = tokio::net::UnixListener::bind(&inner)
            .map_err(|e| socket_error(path, format!("cannot bind: {e}")))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| socket_error(path, format!("cannot make the socket 0600: {e}")))?;
        std::fs::rename(&inner, path)
            .map_err(|e| socket_error(path, format!("cannot move the socket into place: {e}")))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = p.clone().self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(p, key),
            pem,
        }
    }

    /// A leaf of `ca` with these URI SANs: (chain PEM with the CA, key PEM as PKCS#8).
    fn leaf(ca: &Ca, uris: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
            .collect();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        (format!("{}{}", cert.pem(), ca.pem), key.serialize_pem())
    }

    fn material(ca: &Ca, uris: &[&str]) -> Material {
        let (chain, key) = leaf(ca, uris);
        Material::from_pem("default", &chain, &key, &ca.pem).unwrap()
    }

    #[test]
    fn a_strict_svid_is_served_with_its_chain_key_and_bundle() {
        let ca = ca();
        let (chain, key) = leaf(&ca, &["spiffe://default/web"]);
        let m = Material::from_pem("default", &chain, &key, &ca.pem).unwrap();
        assert_eq!(
            m.svid().as_ref().unwrap(),
            &SpiffeId {
                id: "spiffe://default/web".into(),
                trust_domain: "default".into()
            }
        );
        let r = m.x509_svid_response().unwrap();
        let svid = &r.svids[0];
        assert_eq!(svid.spiffe_id, "spiffe://default/web");
        let ders = common::x509::pem_to_ders(&chain).unwrap();
        assert_eq!(ders.len(), 2);
        assert_eq!(svid.x509_svid, ders.concat());
        assert_eq!(
            svid.x509_svid_key,
            KeyPair::from_pem(&key).unwrap().serialize_der()
        );
        assert_eq!(
            svid.bundle,
            common::x509::pem_to_ders(&ca.pem).unwrap().concat()
        );
        let b = m.x509_bundles_response().unwrap();
        assert_eq!(b.bundles.len(), 1);
        assert_eq!(b.bundles["spiffe://default"], svid.bundle);
        // Never the key in Debug.
        let secret = format!("{:?}", svid.x509_svid_key);
        for shown in [format!("{m:?}"), format!("{r:?}"), format!("{svid:?}")] {
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(!shown.contains(&secret), "{shown}");
        }
    }

    #[test]
    fn a_certificate_with_several_uri_sans_is_not_an_svid_and_says_what_to_set() {
        let ca = ca();
        let m = material(&ca, &["spiffe://default/web", "kuma://version/v1"]);
        let e = m.svid().as_ref().unwrap_err();
        assert!(e.contains("2 URI SANs"), "{e}");
        assert!(e.contains("dpCert.uriSans: spiffe"), "{e}");
        assert!(e.contains("\"default\""), "{e}");
        let s = m.x509_svid_response().unwrap_err();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(s.message().contains("dpCert.uriSans: spiffe"));
        assert_eq!(
            m.x509_bundles_response().unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        for (uris, why) in [
            (&[][..], "no URI SAN"),
            (&["kuma://default/web"][..], "not a spiffe:// ID"),
            (&["spiffe://default"][..], "no path"),
            (&["spiffe://Default/web"][..], "trust domain"),
            (&["spiffe://default/a//b"][..], "empty"),
            (&["spiffe://default/a/~b"][..], "path segment"),
        ] {
            let e = material(&ca, uris).svid().clone().unwrap_err();
            assert!(e.contains(why), "{uris:?}: {e}");
        }
    }

    #[test]
    fn a_ca_or_a_leaf_without_digital_signature_is_not_an_svid() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![SanType::URI("spiffe://default/web".try_into().unwrap())];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        let e = x509_svid_id("default", cert.der()).unwrap_err();
        assert!(e.contains("digitalSignature"), "{e}");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        let e = x509_svid_id("default", cert.der()).unwrap_err();
        assert!(e.contains("CA certificate"), "{e}");
    }

    #[test]
    fn the_endpoint_must_be_an_absolute_unix_socket_path() {
        assert_eq!(
            socket_path("unix:///run/kmesh/w.sock").unwrap(),
            PathBuf::from("/run/kmesh/w.sock")
        );
        for (bad, why) in [
            ("tcp://127.0.0.1:8081", "only a unix domain socket"),
            ("/run/w.sock", "only a unix domain socket"),
            ("unix://host/run/w.sock", "takes no host"),
            ("unix://run/w.sock", "takes no host"),
            ("unix:///run/w.sock?x=1", "query"),
            ("unix:///run/", "directory"),
        ] {
            let e = socket_path(bad).unwrap_err();
            assert!(e.starts_with("--workload-api"), "{e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("unix:///{}", "a".repeat(200));
        assert!(socket_path(&long).unwrap_err().contains("bytes long"));
    }

    fn with_header<T>(msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        r
    }

    async fn client(path: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
        let path = path.to_path_buf();
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        SpiffeWorkloadApiClient::new(channel)
    }

    async fn next<T>(s: &mut tonic::Streaming<T>) -> Result<T, Status> {
        tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("a message within 10 s")
            .map(|m| m.expect("the stream goes on"))
    }

    #[tokio::test]
    async fn the_socket_serves_each_change_refuses_calls_without_the_header_and_bounds_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A stale socket from an agent that is gone: replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let out = OutDir::open(&dir.path().join("out")).unwrap();
        let publisher = Publisher::new("default", &out);
        assert!(publisher.current().is_none());
        let (trigger, shutdown) = Shutdown::never();
        let server = Server::start_with(&path, publisher.subscribe(), shutdown, 2)
            .await
            .unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Another agent on the same path is refused while this one serves.
        let (_t2, s2) = Shutdown::never();
        let e = Server::start(&path, publisher.subscribe(), s2)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("another process serves"), "{e}");

        let mut c = client(&path).await;
        // Without the header: INVALID_ARGUMENT, on every call.
        let e = c
            .fetch_x509svid(Request::new(X509svidRequest {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = c
            .fetch_jwtsvid(Request::new(JwtsvidRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        // JWT: UNIMPLEMENTED.
        let e = c
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec!["a".into()],
                spiffe_id: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
        let e = c
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
        let e = c
            .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");

        // Nothing held yet: the streams wait.
        let mut svids = c
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let mut bundles = c
            .fetch_x509_bundles(with_header(X509BundlesRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), svids.message())
                .await
                .is_err()
        );
        // Two streams is this server's bound: a third is refused.
        let e = c
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");

        let ca1 = ca();
        let first = material(&ca1, &["spiffe://default/web"]);
        publisher.publish(first.clone());
        let got = next(&mut svids).await.unwrap();
        assert_eq!(got, first.x509_svid_response().unwrap());
        let got = next(&mut bundles).await.unwrap();
        assert_eq!(got, first.x509_bundles_response().unwrap());

        // A rotation: the SVID stream gets it; the bundle did not change, so the bundle stream
        // sends nothing.
        let rotated = material(&ca1, &["spiffe://default/web"]);
        publisher.publish(rotated.clone());
        let got = next(&mut svids).await.unwrap();
        assert_eq!(got, rotated.x509_svid_response().unwrap());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), bundles.message())
                .await
                .is_err()
        );

        // A CA switch: the bundle holds both CAs; both streams get it.
        let ca2 = ca();
        let (chain, key) = leaf(&ca2, &["spiffe://default/web"]);
        let both = format!("{}{}", ca1.pem, ca2.pem);
        let switched = Material::from_pem("default", &chain, &key, &both).unwrap();
        publisher.publish(switched.clone());
        assert_eq!(
            next(&mut svids).await.unwrap(),
            switched.x509_svid_response().unwrap()
        );
        let got = next(&mut bundles).await.unwrap();
        assert_eq!(
            got.bundles["spiffe://default"],
            common::x509::pem_to_ders(&both).unwrap().concat()
        );

        // Certificates that are not X.509-SVIDs: FAILED_PRECONDITION, and the stream ends.
        publisher.publish(material(&ca2, &["spiffe://default/web", "kuma://a/b"]));
        let e = next(&mut svids).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("dpCert.uriSans: spiffe"), "{e:?}");
        // The bundle stream ended too; their places are free again (once the server has seen
        // them end).
        assert_eq!(
            next(&mut bundles).await.unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        let mut tries = 0;
        let e = loop {
            let e = match c.fetch_x509svid(with_header(X509svidRequest {})).await {
                Ok(r) => r.into_inner().message().await.unwrap_err(),
                Err(e) => e,
            };
            tries += 1;
            if e.code() != tonic::Code::ResourceExhausted || tries == 50 {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

        // Shutdown ends the streams, and the socket is removed.
        publisher.publish(rotated.clone());
        let mut open = c
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        next(&mut open).await.unwrap();
        trigger.fire();
        server.stop().await;
        assert!(!path.exists());
    }

    /// Calls `methods` one after the other on one raw HTTP/2 connection, as grpc-core does it on
    /// a unix socket (`:authority` the percent-encoded socket path; HPACK with incremental
    /// indexing, so later requests refer to the first one's entries); each call's grpc-status.
    async fn raw_calls(path: &Path, methods: &[(&str, bool)]) -> Vec<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::UnixStream::connect(path).await.unwrap();
        let authority = path
            .display()
            .to_string()
            .trim_start_matches('/')
            .replace('/', "%2F");
        let mut encoder = loona_hpack::Encoder::new();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let frame = |out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let len = (payload.len() as u32).to_be_bytes();
            out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
            out.extend_from_slice(&stream.to_be_bytes());
            out.extend_from_slice(payload);
        };
        for (i, (method, header)) in methods.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let path = format!("/SpiffeWorkloadAPI/{method}");
            let mut headers: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", authority.as_bytes()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ];
            if *header {
                headers.push((b"workload.spiffe.io", b"true"));
            }
            let block = encoder.encode(headers);
            frame(&mut out, 0x1, 0x4, stream, &block);
            // One empty message, then the end of the request.
            frame(&mut out, 0x0, 0x1, stream, &[0, 0, 0, 0, 0]);
        }
        sock.write_all(&out).await.unwrap();
        let mut decoder = loona_hpack::Decoder::new();
        let mut statuses = vec![String::new(); methods.len()];
        let read = async {
            while statuses.iter().any(String::is_empty) {
                let mut head = [0u8; 9];
                sock.read_exact(&mut head).await.unwrap();
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                let mut payload = vec![0u8; len];
                sock.read_exact(&mut payload).await.unwrap();
                if head[3] == 0x1 {
                    for (n, v) in decoder.decode(&payload).unwrap() {
                        if n == b"grpc-status" {
                            statuses[(stream as usize - 1) / 2] = String::from_utf8(v).unwrap();
                        }
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("answers within 10 s");
        statuses
    }

    #[tokio::test]
    async fn a_socket_path_as_authority_is_served_as_grpc_core_and_grpc_java_send_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let out = OutDir::open(&dir.path().join("out")).unwrap();
        let publisher = Publisher::new("default", &out);
        let (trigger, shutdown) = Shutdown::never();
        let server = Server::start(&path, publisher.subscribe(), shutdown)
            .await
            .unwrap();
        // UNIMPLEMENTED (12) with the header, INVALID_ARGUMENT (3) without, on one connection.
        let statuses = raw_calls(
            &path,
            &[
                ("FetchJWTSVID", true),
                ("ValidateJWTSVID", false),
                ("FetchJWTSVID", true),
            ],
        )
        .await;
        assert_eq!(statuses, vec!["12", "3", "12"]);
        trigger.fire();
        server.stop().await;
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_are_closed_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let out = OutDir::open(&dir.path().join("out")).unwrap();
        let publisher = Publisher::new("default", &out);
        let (trigger, shutdown) = Shutdown::never();
        let server = Server::start(&path, publisher.subscribe(), shutdown)
            .await
            .unwrap();
        let mut held = Vec::new();
        for _ in 0..limits::WORKLOAD_API_CONNECTIONS {
            held.push(tokio::net::UnixStream::connect(&path).await.unwrap());
        }
        // One more: closed without a word.
        let mut extra = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
            .await
            .expect("closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // A place freed: a new connection is served (the server's SETTINGS come back).
        drop(held.pop());
        let mut tries = 0;
        loop {
            let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
            c.write_all(authority::PREFACE).await.unwrap();
            c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap_or(0);
            tries += 1;
            if n > 0 {
                assert_eq!(buf[3], 0x4, "a SETTINGS frame");
                break;
            }
            assert!(tries < 50, "no place freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        trigger.fire();
        server.stop().await;
    }

    #[tokio::test]
    async fn the_publisher_starts_from_the_files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutDir::open(dir.path()).unwrap();
        let ca = ca();
        let (chain, key) = leaf(&ca, &["spiffe://default/web"]);
        std::fs::write(out.path(CERT_FILE), &chain).unwrap();
        std::fs::write(out.path(KEY_FILE), &key).unwrap();
        std::fs::write(out.path(CA_FILE), &ca.pem).unwrap();
        let p = Publisher::new("default", &out);
        let cur = p.current().unwrap();
        assert_eq!(cur.svid().as_ref().unwrap().id, "spiffe://default/web");
        // The same files again: no change is published.
        let mut rx = p.subscribe();
        rx.borrow_and_update();
        p.refresh(&out).await;
        assert!(!rx.has_changed().unwrap());
    }
}
