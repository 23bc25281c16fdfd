//! The sync server (KDS): zones dial it over TLS and hold one bidirectional gRPC stream each
//! (`proto/kds.proto`). Per stream it authenticates the zone token, then pushes Meshes and
//! Secrets: the first response of a type is the full state relative to the versions the zone
//! says it holds, later ones only what changed, computed when the store revision moves (no
//! polling timer) and diffed per zone against what that zone was sent. Send and receive run in
//! separate tasks joined only by non-blocking state, so a zone that stops reading cannot
//! deadlock the server; messages are cut to the size limit and an oversized resource is skipped
//! and recorded rather than killing the stream. What happened is recorded per zone (`zones`) and
//! in metrics (`metrics`).

mod ctx;
pub mod diff;
pub mod metrics;
mod session;
pub mod tls;
pub mod zones;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::shutdown::Shutdown;
use common::store::Store;
use proto::kds::zone_sync_server::{ZoneSync, ZoneSyncServer};
use proto::kds::{GlobalMessage, ZoneMessage};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use ctx::Ctx;
pub use ctx::KdsConfig;
pub use metrics::KdsMetrics;
pub use tls::{KdsTls, TlsMaterial};
pub use zones::Zones;

use crate::tokens::{KeySet, ZONE_SCOPE, ZoneClaim};

/// Responses queued per stream before the sender waits for the zone to read.
const OUTBOUND_QUEUE: usize = 16;
/// How long connections may take to drain at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The tonic service. Cheap to clone.
#[derive(Clone)]
pub struct KdsServer {
    ctx: Arc<Ctx>,
}

impl KdsServer {
    /// `shutdown` stopping ends every stream and the server.
    pub fn new(
        store: Store,
        zones: Zones,
        authority: crate::authority::Authority,
        metrics: KdsMetrics,
        config: KdsConfig,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            ctx: Arc::new(Ctx {
                store,
                zones,
                authority,
                metrics,
                config,
                shutdown,
                identity: common::integrity::StoreIdentity {
                    id: String::new(),
                    epoch: 0,
                },
                refusal_log: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `identity` (the store's) with every response, so zones can tell a rolled-back or
    /// replaced store from the one they applied.
    pub fn with_identity(mut self, identity: common::integrity::StoreIdentity) -> Self {
        Arc::get_mut(&mut self.ctx)
            .expect("set before the server is shared")
            .identity = identity;
        self
    }

    /// The gRPC service with its limits and compression, for `Server::add_service`.
    pub fn service(self) -> ZoneSyncServer<KdsServer> {
        let limit = self.ctx.config.max_message_bytes;
        ZoneSyncServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip)
    }

    /// Serves on `listener` over TLS until shutdown. Streams are ended at shutdown; connections
    /// that still hold unsent data (a zone that stopped reading) get `SHUTDOWN_GRACE` to drain.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: TlsMaterial,
    ) -> Result<(), tonic::transport::Error> {
        let shutdown = self.ctx.shutdown.clone();
        let deadline = self.ctx.shutdown.clone();
        let config = self.ctx.config.clone();
        let zones = self.ctx.zones.clone();
        let identity = Identity::from_pem(tls.cert_chain_pem, tls.key_pem);
        let server = Server::builder()
            .tls_config(
                ServerTlsConfig::new()
                    .identity(identity)
                    .timeout(common::limits::TLS_HANDSHAKE_TIMEOUT),
            )?
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_timeout))
            .tcp_nodelay(true)
            .add_service(self.service())
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move { shutdown.wait().await },
            );
        let result = tokio::select! {
            r = server => r,
            _ = async {
                deadline.wait().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("sync connections did not drain within {}s of shutdown: closing them", SHUTDOWN_GRACE.as_secs());
                Ok(())
            }
        };
        zones.disconnect_all("global is shutting down").await;
        result
    }

    /// Checks the zone token; returns the zone name, the token's expiry (unix ms) and the token
    /// (checked again whenever keys or revocations change).
    fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(String, u64, session::ZoneToken), (&'static str, String)> {
        let md = request.metadata();
        let claimed = md
            .get(common::sync::ZONE_NAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(value) = md.get("authorization") else {
            return Err((
                "missing",
                "no zone token: send `authorization: Bearer <token>` (make one with `global zone-token --zone NAME`)".into(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or((
                "malformed",
                "the authorization metadata is not `Bearer <token>`".to_string(),
            ))?;
        let claims = self
            .ctx
            .authority
            .key_set()
            .verify::<ZoneClaim>(token, ZONE_SCOPE)
            .map_err(|e| {
                let code = e.code();
                (code, format!("zone token refused: {e}"))
            })?;
        if let Some(claimed) = claimed
            && claimed != claims.body.zone
        {
            return Err((
                "wrong_zone",
                format!(
                    "zone token refused: it was issued for zone {:?}, but this zone is named {claimed:?}",
                    claims.body.zone
                ),
            ));
        }
        Ok((
            claims.body.zone,
            claims.exp.saturating_mul(1000),
            session::ZoneToken(token.to_string()),
        ))
    }

    async fn refuse(&self, peer: Option<SocketAddr>, claimed: String, code: &str, message: &str) {
        let peer_s = peer.map(|p| p.to_string()).unwrap_or_default();
        let key = format!(
            "{}|{claimed}|{code}",
            peer.map(|p| p.ip().to_string()).unwrap_or_default()
        );
        let log_now = {
            let mut log = self
                .ctx
                .refusal_log
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            log.retain(|_, t| now.duration_since(*t) < Duration::from_secs(600));
            match log.get(&key) {
                Some(t) if now.duration_since(*t) < Duration::from_secs(60) => false,
                _ => {
                    log.insert(key, now);
                    true
                }
            }
        };
        if log_now {
            tracing::warn!(peer = %peer_s, zone = %claimed, reason = code, "sync stream refused: {message}");
        } else {
            tracing::debug!(peer = %peer_s, zone = %claimed, reason = code, "sync stream refused again: {message}");
        }
        self.ctx
            .metrics
            .auth_refusals
            .get_or_create(&metrics::ReasonLabels {
                reason: code.to_string(),
            })
            .inc();
        self.ctx
            .zones
            .refused(zones::Refusal {
                at_ms: common::clock::now_ms() as u64,
                zone: claimed,
                peer: peer_s,
                reason: message.to_string(),
            })
            .await;
    }
}

#[tonic::async_trait]
impl ZoneSync for KdsServer {
    type SyncStream = ReceiverStream<Result<GlobalMessage, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<ZoneMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let peer = request.remote_addr();
        let (zone, token_expires_ms, token) = match self.authenticate(&request) {
            Ok(z) => z,
            Err((code, message)) => {
                let claimed = request
                    .metadata()
                    .get(common::sync::ZONE_NAME_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.refuse(peer, claimed, code, &message).await;
                return Err(Status::unauthenticated(message));
            }
        };
        if self.ctx.shutdown.is_shutdown() {
            return Err(Status::unavailable("global is shutting down"));
        }
        let peer_s = peer.map(|p| p.to_string()).unwrap_or_default();
        let (session, cancel) = self
            .ctx
            .zones
            .connect(&zone, &peer_s, token_expires_ms)
            .await;
        self.ctx
            .metrics
            .stream_connects
            .get_or_create(&metrics::ZoneLabels { zone: zone.clone() })
            .inc();
        tracing::info!(zone = %zone, peer = %peer_s, session, "zone connected");
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        // The keys that verify dataplane tokens go first: the zone needs them before its proxies
        // can connect. (Global's signing key only changes with its data directory, so once per
        // stream is "whenever they change".)
        let _ = tx.try_send(Ok(token_keys_message(&self.ctx.authority.key_set())));
        tokio::spawn(session::run(
            self.ctx.clone(),
            zone,
            token,
            session,
            request.into_inner(),
            tx,
            cancel,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The `TokenKeys` message of the stream: global's public token keys and the revoked token ids.
pub fn token_keys_message(keys: &KeySet) -> GlobalMessage {
    GlobalMessage {
        message: Some(proto::kds::global_message::Message::TokenKeys(
            proto::kds::TokenKeys {
                keys: keys
                    .keys()
                    .iter()
                    .map(|k| proto::kds::TokenKey {
                        kid: k.kid().to_string(),
                        algorithm: common::tokens::ED25519_ALGORITHM.to_string(),
                        public_key: k.public_key().to_vec(),
                    })
                    .collect(),
                revoked_token_ids: keys.revoked().iter().cloned().collect(),
            },
        )),
    }
}
