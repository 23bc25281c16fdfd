//! The proxy identity service on `--dp-addr` (`proto/identity.proto`), over TLS only (`tls`):
//! private keys travel on it. Per stream it authenticates the dataplane token against the keys
//! global sent (`keys`), checks that the request is for the token's mesh and name, registers the
//! Dataplane with the identity manager (`IdentityManager::connect`) and forwards every identity
//! bundle from the manager's watch channel to the proxy. The forwarder runs in its own task and
//! never blocks on a proxy that does not read (the stream is bounded; the task ends when the
//! proxy goes away, which drops the subscription: the proxy is disconnected). Refusals are
//! answered UNAUTHENTICATED with a clear message and logged once per proxy and cause.

pub mod keys;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::model::{Dataplane, Inbound, Networking, SERVICE_TAG};
use common::tokens::{DATAPLANE_SCOPE, DataplaneClaim};
use proto::dpid::dataplane_identity_server::{DataplaneIdentity, DataplaneIdentityServer};
use proto::dpid::{IdentityRequest, IdentityResponse};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::ZoneCtx;
use crate::identity::{IdentityBundle, IdentityError, IdentityManager, IdentitySubscription};

/// Bundles queued per stream before the forwarder waits for the proxy to read.
const OUTBOUND_QUEUE: usize = 4;
/// How long streams may take to drain at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// A refusal of the same proxy for the same cause is logged at warn level once in this period.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(600);
/// Refusals remembered for the log-once rule.
const REFUSAL_LOG_MAX: usize = 10_000;

struct Inner {
    ctx: Arc<ZoneCtx>,
    identity: Arc<IdentityManager>,
    stop: watch::Receiver<bool>,
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
    pub fn new(
        ctx: Arc<ZoneCtx>,
        identity: Arc<IdentityManager>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                ctx,
                identity,
                stop,
                refusal_log: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Serves on `listener` over TLS until `stop` turns true; streams still open then get
    /// `SHUTDOWN_GRACE` to end.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: tls::TlsMaterial,
    ) -> Result<(), tonic::transport::Error> {
        let mut shutdown = self.inner.stop.clone();
        let mut deadline = self.inner.stop.clone();
        let identity = Identity::from_pem(tls.cert_chain_pem, tls.key_pem);
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))?
            // A proxy that vanished (no FIN) is noticed and its subscription dropped.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .add_service(DataplaneIdentityServer::new(self))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = shutdown.wait_for(|v| *v).await;
                },
            );
        tokio::select! {
            r = server => r,
            _ = async {
                let _ = deadline.wait_for(|v| *v).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("proxy streams did not end within {}s of shutdown: closing them", SHUTDOWN_GRACE.as_secs());
                Ok(())
            }
        }
    }

    /// Checks the token and that the request is for its mesh and name.
    fn authenticate(&self, request: &Request<IdentityRequest>) -> Result<DataplaneClaim, Refusal> {
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
        if claims.body.mesh != req.mesh {
            return Err(unauthenticated(
                "other_mesh",
                format!(
                    "dataplane token refused: it was issued for mesh {:?}, but this proxy registers in mesh {:?}",
                    claims.body.mesh, req.mesh
                ),
            ));
        }
        if claims.body.name != req.name {
            return Err(unauthenticated(
                "other_name",
                format!(
                    "dataplane token refused: it was issued for dataplane {:?}, but this proxy registers as {:?}",
                    claims.body.name, req.name
                ),
            ));
        }
        Ok(claims.body)
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
        trust_bundle_pem: b.trust_bundle_pem.clone(),
        backend: b.backend.clone(),
        serial: b.serial.clone(),
        not_before_unix: b.not_before_unix,
        not_after_unix: b.not_after_unix,
    }
}

#[tonic::async_trait]
impl DataplaneIdentity for DpServer {
    type StreamStream = ReceiverStream<Result<IdentityResponse, Status>>;

    async fn stream(
        &self,
        request: Request<IdentityRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        if *self.inner.stop.borrow() {
            return Err(Status::unavailable("the zone is shutting down"));
        }
        if let Err(refusal) = self.authenticate(&request) {
            self.log_refusal(peer, request.get_ref(), &refusal);
            return Err(refusal.status);
        }
        let req = request.into_inner();
        let dp = dataplane_of(&req)?;
        let presented = Some(req.cert_chain_pem.clone()).filter(|c| !c.trim().is_empty());
        let had_cert = presented.is_some();
        let subscription = self.inner.identity.connect(dp, presented).map_err(|e| {
            tracing::info!(mesh = %req.mesh, name = %req.name, error = %e, "proxy not registered");
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
            service = %req.tags.get(SERVICE_TAG).map(String::as_str).unwrap_or(""),
            presented_certificate = had_cert,
            "proxy connected"
        );
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(forward(
            subscription,
            tx,
            self.inner.stop.clone(),
            format!("{}/{}", req.mesh, req.name),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Forwards each new bundle of the subscription to the proxy until the proxy goes away, the
/// manager drops the dataplane, or the zone stops. Dropping the subscription at the end tells the
/// manager the proxy disconnected.
async fn forward(
    subscription: IdentitySubscription,
    tx: mpsc::Sender<Result<IdentityResponse, Status>>,
    mut stop: watch::Receiver<bool>,
    who: String,
) {
    let mut updates = subscription.updates.clone();
    let mut sent: Option<u64> = None;
    let reason = loop {
        let current = updates.borrow_and_update().clone();
        if let Some(bundle) = current
            && sent != Some(bundle.generation)
        {
            sent = Some(bundle.generation);
            tokio::select! {
                r = tx.send(Ok(response_of(&bundle))) => if r.is_err() {
                    break "the proxy went away";
                },
                _ = stop.wait_for(|v| *v) => break "the zone is shutting down",
            }
            tracing::debug!(dataplane = %who, generation = bundle.generation, serial = %bundle.serial, "identity sent");
        }
        tokio::select! {
            r = updates.changed() => if r.is_err() {
                let _ = tx.try_send(Err(Status::unavailable(
                    "another connection of this dataplane replaced this one",
                )));
                break "replaced by a newer connection of the same dataplane";
            },
            _ = tx.closed() => break "the proxy went away",
            _ = stop.wait_for(|v| *v) => {
                let _ = tx.try_send(Err(Status::unavailable("the zone is shutting down")));
                break "the zone is shutting down";
            }
        }
    };
    drop(updates);
    drop(subscription);
    tracing::info!(dataplane = %who, reason, "proxy disconnected");
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
