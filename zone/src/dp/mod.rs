//! The proxy identity service on `--dp-addr` (`proto/identity.proto`), over TLS only (`tls`):
//! private keys travel on it. Per stream it authenticates the dataplane token against the keys
//! global sent (`keys`), checks that the request is for the token's mesh and name, registers the
//! Dataplane with the identity manager (`IdentityManager::connect`) and answers with a stream that
//! yields the subscription's latest bundle whenever it changes. That stream never blocks the
//! manager on a proxy that does not read: it holds no queue, only the subscription's `watch`
//! receiver, so a slow proxy gets the newest bundle when it reads again. When the proxy goes away
//! the server drops the stream, which drops the subscription: the proxy is disconnected. Refusals
//! are answered UNAUTHENTICATED with a clear message and logged once per proxy and cause.
//!
//! `Session` is the same, with the registration as the agent's first message; what the agent
//! sends after it (its `AgentStatus`: files written or not and why, what it holds on disk, its
//! clock) is handed to the identity manager for that connection (`IdentityManager::agent_status`)
//! by a task that ends with the stream.
//!
//! The service is mounted through `codec::IdentityService` rather than the generated server so
//! that each response is framed in its own exactly sized buffer, freed once written: tonic's
//! server body keeps an encoding buffer per stream for the stream's whole life (8 KiB with the
//! default codec), which was most of what an idle connected proxy cost the zone.

mod codec;
pub mod keys;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::model::{Dataplane, Inbound, Networking, SERVICE_TAG};
use common::shutdown::Shutdown;
use common::tokens::{DATAPLANE_SCOPE, DataplaneClaim, TokenError};

/// What a proxy's token allows, once checked: until when, and what to warn about.
struct Authenticated {
    expires_unix: u64,
    /// The token, checked again whenever global's keys or revocations change.
    token: String,
    /// Set for a token that binds no service (made before tokens bound services).
    warning: Option<String>,
}

/// The tag the zone sets on each of its proxies.
pub const ZONE_TAG: &str = "kuma.io/zone";
/// The label of a dataplane registered with a token that binds no service, and its value.
pub const TOKEN_WARNING_LABEL: &str = "kmesh.io/token-warning";
pub const LEGACY_TOKEN: &str = "token-binds-no-service";
use futures::stream::{BoxStream, StreamExt};
use proto::dpid::dataplane_identity_server::DataplaneIdentity;
use proto::dpid::{AgentMessage, IdentityRequest, IdentityResponse, agent_message};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::identity::{IdentityBundle, IdentityError, IdentityManager, IdentitySubscription};
use crate::state::ZoneCtx;

/// How long an agent has to send its registration on `Session`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long streams may take to drain at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// A refusal of the same proxy for the same cause is logged at warn level once in this period.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(600);
/// Refusals remembered for the log-once rule.
const REFUSAL_LOG_MAX: usize = 10_000;

struct Inner {
    ctx: Arc<ZoneCtx>,
    identity: Arc<IdentityManager>,
    shutdown: Shutdown,
    refusal_log: Mutex<HashMap<String, Instant>>,
}

/// The tonic service. Cheap to clone.
#[derive(Clone)]
pub struct DpServer {
    inner: Arc<Inner>,
}

/// A refused stream: a short cause (for the log key) and the status sent back.
struct Refusal {
    cause: &'static str,
    status: Status,
}

fn unauthenticated(cause: &'static str, message: String) -> Refusal {
    Refusal {
        cause,
        status: Status::unauthenticated(message),
    }
}

impl DpServer {
    pub fn new(ctx: Arc<ZoneCtx>, identity: Arc<IdentityManager>, shutdown: Shutdown) -> Self {
        Self {
            inner: Arc::new(Inner {
                ctx,
                identity,
                shutdown,
                refusal_log: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Serves on `listener` over TLS until `shutdown` fires; streams still open then get
    /// `SHUTDOWN_GRACE` to end.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: tls::TlsMaterial,
    ) -> Result<(), tonic::transport::Error> {
        let shutdown = self.inner.shutdown.clone();
        let deadline = self.inner.shutdown.clone();
        let identity = Identity::from_pem(tls.cert_chain_pem, tls.key_pem);
        let server = Server::builder()
            .tls_config(
                ServerTlsConfig::new()
                    .identity(identity)
                    .timeout(common::limits::TLS_HANDSHAKE_TIMEOUT),
            )?
            // A proxy that vanished (no FIN) is noticed and its subscription dropped.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // A proxy needs one stream; tonic leaves the count per connection unbounded.
            .max_concurrent_streams(Some(common::limits::DP_STREAMS_PER_CONNECTION))
            .tcp_nodelay(true)
            .add_service(codec::IdentityService::new(self))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move { shutdown.wait().await },
            );
        tokio::select! {
            r = server => r,
            _ = async {
                deadline.wait().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("proxy streams did not end within {}s of shutdown: closing them", SHUTDOWN_GRACE.as_secs());
                Ok(())
            }
        }
    }

    /// Checks the token and that the request is for its mesh and name.
    fn authenticate(&self, request: &Request<IdentityRequest>) -> Result<Authenticated, Refusal> {
        let Some(value) = request.metadata().get("authorization") else {
            return Err(unauthenticated(
                "missing",
                "no dataplane token: send `authorization: Bearer <token>` (make one with `global dataplane-token --mesh MESH --name NAME`)".into(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                unauthenticated(
                    "malformed",
                    "the authorization metadata is not `Bearer <token>`".into(),
                )
            })?;
        let keys = keys::load(&self.inner.ctx.store).map_err(|e| Refusal {
            cause: "store",
            status: Status::unavailable(format!(
                "this zone cannot read its dataplane token keys: {e}"
            )),
        })?;
        if keys.is_empty() {
            return Err(Refusal {
                cause: "no_keys",
                status: Status::unavailable(
                    "this zone has not received the dataplane token keys from global yet: retry once it has synced",
                ),
            });
        }
        let claims = keys
            .verify::<DataplaneClaim>(token, DATAPLANE_SCOPE)
            .map_err(|e| unauthenticated(e.code(), format!("dataplane token refused: {e}")))?;
        let req = request.get_ref();
        let checks = [
            (
                "other_mesh",
                "mesh",
                &claims.body.mesh,
                "in mesh",
                &req.mesh,
            ),
            (
                "other_name",
                "dataplane",
                &claims.body.name,
                "as",
                &req.name,
            ),
        ];
        for (cause, what, issued_for, registers, asked) in checks {
            if issued_for != asked {
                return Err(unauthenticated(
                    cause,
                    format!(
                        "dataplane token refused: it was issued for {what} {issued_for:?}, but this proxy registers {registers} {asked:?}"
                    ),
                ));
            }
        }
        // The service and tags it registers must be the ones the token grants.
        let tags: std::collections::BTreeMap<String, String> = req
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match claims.body.allows(&tags) {
            Ok(warning) => Ok(Authenticated {
                expires_unix: claims.exp,
                token: token.to_string(),
                warning,
            }),
            Err(not) => Err(Refusal {
                cause: not.cause,
                status: Status::permission_denied(not.message),
            }),
        }
    }

    fn log_refusal(&self, peer: Option<SocketAddr>, req: &IdentityRequest, refusal: &Refusal) {
        let peer_ip = peer.map(|p| p.ip().to_string()).unwrap_or_default();
        let key = format!("{peer_ip}|{}|{}|{}", req.mesh, req.name, refusal.cause);
        let first = {
            let mut log = self
                .inner
                .refusal_log
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if log.len() >= REFUSAL_LOG_MAX {
                log.retain(|_, t| now.duration_since(*t) < REFUSAL_LOG_PERIOD);
            }
            match log.get(&key) {
                Some(t) if now.duration_since(*t) < REFUSAL_LOG_PERIOD => false,
                _ => {
                    if log.len() < REFUSAL_LOG_MAX {
                        log.insert(key, now);
                    }
                    true
                }
            }
        };
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        if first {
            tracing::warn!(%peer, mesh = %req.mesh, name = %req.name, cause = refusal.cause, "proxy refused: {}", refusal.status.message());
        } else {
            tracing::debug!(%peer, mesh = %req.mesh, name = %req.name, cause = refusal.cause, "proxy refused again: {}", refusal.status.message());
        }
    }
}

/// The Dataplane a request registers (one inbound with the request's tags).
pub fn dataplane_of(req: &IdentityRequest) -> Result<Dataplane, Status> {
    let dp = Dataplane {
        type_: "Dataplane".to_string(),
        name: req.name.clone(),
        mesh: req.mesh.clone(),
        labels: Default::default(),
        networking: Networking {
            address: String::new(),
            inbound: vec![Inbound {
                port: None,
                tags: req.tags.clone().into_iter().collect(),
            }],
        },
    };
    common::validate::validate_dataplane(&dp).map_err(|errs| {
        Status::invalid_argument(format!(
            "invalid dataplane {:?} of mesh {:?}: {}",
            req.name,
            req.mesh,
            errs.errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    Ok(dp)
}

/// The wire form of a bundle.
pub fn response_of(b: &IdentityBundle) -> IdentityResponse {
    IdentityResponse {
        generation: b.generation,
        cert_chain_pem: b.cert_chain_pem.clone(),
        key_pem: b.key_pem.clone(),
        trust_bundle_pem: b.trust_bundle_pem.to_string(),
        backend: b.backend.clone(),
        serial: b.serial.clone(),
        not_before_unix: b.not_before_unix,
        not_after_unix: b.not_after_unix,
        zone_time_unix_ms: common::clock::now_ms(),
        csr_request: None,
    }
}

/// The wire form of a CSR request: a message without a certificate.
fn ask_of(ask: &crate::identity::CsrAsk) -> IdentityResponse {
    IdentityResponse {
        zone_time_unix_ms: common::clock::now_ms(),
        csr_request: Some(proto::dpid::CsrRequest {
            key_type: ask.key_type.as_str().to_string(),
            nonce: ask.nonce,
        }),
        ..Default::default()
    }
}

/// A registered proxy: its subscription, who it is, and until when its token runs.
struct Registered {
    subscription: IdentitySubscription,
    who: String,
    token_expires: u64,
    token: String,
}

impl DpServer {
    /// Authenticates and registers the proxy of `request` (both methods; `session`: it can answer
    /// CSR requests).
    fn register(
        &self,
        request: Request<IdentityRequest>,
        session: bool,
    ) -> Result<Registered, Status> {
        let peer = request.remote_addr();
        if self.inner.shutdown.is_shutdown() {
            return Err(Status::unavailable("the zone is shutting down"));
        }
        let claim = match self.authenticate(&request) {
            Ok(c) => c,
            Err(refusal) => {
                self.log_refusal(peer, request.get_ref(), &refusal);
                return Err(refusal.status);
            }
        };
        let req = request.into_inner();
        // kuma.io/zone is the zone's to say, never the proxy's: only this zone's name is taken.
        // (Not added when absent: certificates issued before keep their SANs across an upgrade.)
        let zone = &self.inner.ctx.config.name;
        if let Some(z) = req.tags.get(ZONE_TAG).filter(|z| *z != zone) {
            return Err(Status::permission_denied(format!(
                "tag {ZONE_TAG} is the zone's: this proxy connects to zone {zone:?}, not {z:?}"
            )));
        }
        let mut dp = dataplane_of(&req)?;
        if let Some(warning) = &claim.warning {
            tracing::warn!(mesh = %req.mesh, name = %req.name, "{warning}");
            dp.labels
                .insert(TOKEN_WARNING_LABEL.into(), LEGACY_TOKEN.into());
        }
        let had_cert = !req.cert_chain_pem.trim().is_empty();
        let who = format!("{}/{}", req.mesh, req.name);
        let service = req.tags.get(SERVICE_TAG).cloned().unwrap_or_default();
        // A presented certificate is reused only with proof that the proxy holds its key.
        let proven = had_cert && possession_proven(&req);
        if had_cert && !proven {
            tracing::info!(dataplane = %who, "presented certificate not reused: no valid proof that the proxy holds its key; issuing a new one");
        }
        let presented = Some(req.cert_chain_pem).filter(|_| proven);
        let subscription = self
            .inner
            .identity
            .connect_with(dp, presented, session)
            .map_err(|e| {
                tracing::info!(dataplane = %who, error = %e, "proxy not registered");
                match e {
                    IdentityError::MeshNotFound(_) => Status::failed_precondition(e.to_string()),
                    IdentityError::InvalidDataplane(_) => Status::invalid_argument(e.to_string()),
                    // The store, or whatever else the engine may report: worth a retry.
                    #[allow(unreachable_patterns)]
                    _ => Status::unavailable(e.to_string()),
                }
            })?;
        tracing::info!(
            peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
            mesh = %req.mesh, name = %req.name,
            service = %service,
            presented_certificate = had_cert,
            "proxy connected"
        );
        Ok(Registered {
            subscription,
            who,
            token_expires: claim.expires_unix,
            token: claim.token,
        })
    }

    /// `Session`: the registration is the agent's first message; what follows are its reports.
    pub(crate) async fn session(
        &self,
        request: Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<Response<BoxStream<'static, Result<IdentityResponse, Status>>>, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let first = tokio::select! {
            m = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()) => m,
            _ = self.inner.shutdown.wait() => return Err(Status::unavailable("the zone is shutting down")),
        };
        let hello = match first {
            Ok(Ok(Some(AgentMessage {
                message: Some(agent_message::Message::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be the registration (hello)",
                ));
            }
            Ok(Ok(None)) => return Err(Status::cancelled("the agent closed the session")),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no registration within {}s",
                    HELLO_TIMEOUT.as_secs()
                )));
            }
        };
        let registered = self.register(Request::from_parts(metadata, extensions, hello), true)?;
        let reporter = registered.subscription.reporter();
        let who = registered.who.clone();
        let reports = tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(AgentMessage {
                        message: Some(agent_message::Message::Status(status)),
                    })) => {
                        if !reporter.report(status) {
                            return;
                        }
                    }
                    Ok(Some(AgentMessage {
                        message: Some(agent_message::Message::Csr(csr)),
                    })) => {
                        if !reporter.csr(csr.nonce, &csr.der) {
                            return;
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::debug!(dataplane = %who, "ignored a second registration on a session");
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        });
        Ok(Response::new(bundles(
            registered,
            &self.inner.ctx,
            self.inner.shutdown.clone(),
            Some(reports.abort_handle()),
        )))
    }
}

#[tonic::async_trait]
impl DataplaneIdentity for DpServer {
    type StreamStream = BoxStream<'static, Result<IdentityResponse, Status>>;
    type SessionStream = BoxStream<'static, Result<IdentityResponse, Status>>;

    async fn stream(
        &self,
        request: Request<IdentityRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let registered = self.register(request, false)?;
        Ok(Response::new(bundles(
            registered,
            &self.inner.ctx,
            self.inner.shutdown.clone(),
            None,
        )))
    }

    async fn session(
        &self,
        request: Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        DpServer::session(self, request).await
    }
}

/// What a proxy's response stream holds: its subscription, and why the stream ended (logged when
/// it is dropped, which also drops the subscription: the manager marks the proxy disconnected).
struct Feed {
    subscription: IdentitySubscription,
    shutdown: Shutdown,
    /// When the token the stream was opened with expires (unix seconds): the stream ends then.
    token_expires: u64,
    /// The token the stream was opened with, and the changes of global's keys and revocations:
    /// on each, the token is checked again (revoked, or its key retired: the stream ends).
    token: String,
    token_keys: tokio::sync::watch::Receiver<u64>,
    store: common::store::Store,
    /// Generation of the last bundle handed to the server.
    sent: Option<u64>,
    who: String,
    /// Set when the stream ends on our side; `None` when the proxy went away.
    ended: Option<&'static str>,
    /// The task reading the agent's reports (`Session`), stopped with the stream.
    reports: Option<tokio::task::AbortHandle>,
    /// CSR requests may still come (see `next_bundle`).
    asks_open: bool,
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(r) = &self.reports {
            r.abort();
        }
        let reason = self.ended.unwrap_or("the proxy went away");
        tracing::info!(dataplane = %self.who, reason, "proxy disconnected");
    }
}

/// The response stream of one proxy: the subscription's latest bundle whenever its generation
/// changes; an UNAVAILABLE status when a newer connection of the dataplane replaces this one or
/// the zone stops, UNAUTHENTICATED when its token expires or is revoked (the agent reads its
/// token file again and reconnects).
fn bundles(
    registered: Registered,
    ctx: &ZoneCtx,
    shutdown: Shutdown,
    reports: Option<tokio::task::AbortHandle>,
) -> BoxStream<'static, Result<IdentityResponse, Status>> {
    let mut token_keys = ctx.token_keys.subscribe();
    token_keys.borrow_and_update();
    let feed = Feed {
        subscription: registered.subscription,
        shutdown,
        token_expires: registered.token_expires,
        token: registered.token,
        token_keys,
        store: ctx.store.clone(),
        sent: None,
        who: registered.who,
        ended: None,
        reports,
        asks_open: true,
    };
    futures::stream::unfold(feed, next_bundle).boxed()
}

async fn next_bundle(mut feed: Feed) -> Option<(Result<IdentityResponse, Status>, Feed)> {
    if feed.ended.is_some() {
        return None;
    }
    loop {
        // A CSR request first: the certificate it is for follows it.
        if feed.asks_open && feed.subscription.csr_asks.has_changed().unwrap_or(false) {
            let ask = *feed.subscription.csr_asks.borrow_and_update();
            if let Some(ask) = ask {
                tracing::debug!(dataplane = %feed.who, nonce = ask.nonce, "CSR asked");
                return Some((Ok(ask_of(&ask)), feed));
            }
        }
        let current = feed.subscription.updates.borrow_and_update().clone();
        if let Some(bundle) = current
            && feed.sent != Some(bundle.generation)
        {
            feed.sent = Some(bundle.generation);
            tracing::debug!(dataplane = %feed.who, generation = bundle.generation, serial = %bundle.serial, "identity sent");
            return Some((Ok(response_of(&bundle)), feed));
        }
        let end = tokio::select! {
            r = feed.subscription.updates.changed() => match r {
                Ok(()) => continue,
                Err(_) => (
                    "replaced by a newer connection of the same dataplane",
                    "another connection of this dataplane replaced this one",
                ),
            },
            r = feed.subscription.csr_asks.changed(), if feed.asks_open => {
                // Closed: this agent is never asked (an older one, on `Stream`).
                feed.asks_open = r.is_ok();
                // `changed` marked the ask seen: send it now.
                let ask = *feed.subscription.csr_asks.borrow_and_update();
                if let Some(ask) = ask.filter(|_| feed.asks_open) {
                    tracing::debug!(dataplane = %feed.who, nonce = ask.nonce, "CSR asked");
                    return Some((Ok(ask_of(&ask)), feed));
                }
                continue;
            }
            _ = feed.shutdown.wait() => ("the zone is shutting down", "the zone is shutting down"),
            r = feed.token_keys.changed() => {
                if r.is_err() {
                    continue;
                }
                feed.token_keys.borrow_and_update();
                let refused = match keys::load(&feed.store) {
                    Ok(keys) => keys.verify::<DataplaneClaim>(&feed.token, DATAPLANE_SCOPE).err(),
                    // The keys held could not be read: the stream goes on with what it was given.
                    Err(_) => None,
                };
                match refused {
                    Some(e @ (TokenError::Revoked(_) | TokenError::BadSignature)) => {
                        tracing::info!(dataplane = %feed.who, reason = e.code(), "ending the proxy's stream: its dataplane token is no longer accepted");
                        feed.ended = Some("its dataplane token was revoked or its signing key retired");
                        return Some((
                            Err(Status::unauthenticated(format!("dataplane token refused: {e}"))),
                            feed,
                        ));
                    }
                    _ => continue,
                }
            }
            // The token was accepted with the stated leeway; the stream ends when that runs out.
            _ = tokio::time::sleep(until_unix(feed.token_expires.saturating_add(common::clock::LEEWAY.as_secs()))) => {
                feed.ended = Some("its dataplane token expired");
                return Some((
                    Err(Status::unauthenticated(
                        "the dataplane token of this stream expired: connect again with a valid one",
                    )),
                    feed,
                ));
            }
        };
        feed.ended = Some(end.0);
        return Some((Err(Status::unavailable(end.1)), feed));
    }
}

/// How far a proof of possession's time may be from the zone's clock.
const PROOF_WINDOW_SECS: i64 = 300;

/// Whether the request carries a valid proof that the proxy holds the key of the chain it
/// presents: the leaf's key signed the possession message of this mesh, name and a recent time.
fn possession_proven(req: &IdentityRequest) -> bool {
    if (req.possession_unix - common::clock::now_unix()).abs() > PROOF_WINDOW_SECS {
        return false;
    }
    let Some(leaf) = common::x509::pem_to_ders(&req.cert_chain_pem)
        .ok()
        .and_then(|d| d.into_iter().next())
    else {
        return false;
    };
    let msg = common::x509::possession_message(&req.mesh, &req.name, req.possession_unix, &leaf);
    common::x509::verify_possession(&leaf, &msg, &req.possession_signature).is_ok()
}

/// How long until the unix second `at` (zero when it passed).
fn until_unix(at: u64) -> std::time::Duration {
    let now = common::clock::now_ms().max(0) as u64;
    std::time::Duration::from_millis((at.saturating_mul(1000)).saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataplane_needs_a_service_tag_and_valid_names() {
        let mut req = IdentityRequest {
            mesh: "default".into(),
            name: "web-1".into(),
            ..Default::default()
        };
        let e = dataplane_of(&req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(SERVICE_TAG), "{}", e.message());
        req.tags.insert(SERVICE_TAG.into(), "web".into());
        req.tags.insert("version".into(), "v1".into());
        let dp = dataplane_of(&req).unwrap();
        assert_eq!(dp.services(), vec!["web".to_string()]);
        assert_eq!(dp.tags()["version"], vec!["v1".to_string()]);
        req.name = "Web 1".into();
        assert!(dataplane_of(&req).is_err());
    }
}
