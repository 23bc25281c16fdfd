//! One zone's stream. The receive task reads subscriptions, ACK/NACKs and status reports and
//! records them without ever waiting on the sender; the send loop wakes on a store revision
//! change or a new subscription, diffs each subscribed type against what this zone was sent,
//! and pushes the delta through a bounded queue. Whichever side ends first ends the session.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::model::Kind;
use common::shutdown::Shutdown;
use common::store::ResourceKey;
use proto::kds::{
    self, DiscoveryRequest, DiscoveryResponse, GlobalMessage, ZoneMessage, global_message,
    zone_message,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};
use tonic::{Status, Streaming};

use super::ctx::Ctx;
use super::diff::{self, Sent};
use super::metrics::KdsMetrics;
use super::zones::{DataplaneReport, LastNack, Rejected, TooLarge};

/// Oversized entries listed in one response at most.
const MAX_SKIPPED_LISTED: usize = 20;
/// Unanswered responses remembered per stream.
const MAX_INFLIGHT: usize = 1024;
/// How long a new stream waits to catch up with the other replicas before its first state.
const CATCH_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// State shared by the two halves; every lock is held briefly and never across an await.
#[derive(Default)]
struct Shared {
    /// Subscriptions received and not yet served.
    subscriptions: Mutex<Vec<(Kind, Vec<kds::ResourceVersion>)>>,
    wake: Notify,
    /// nonce -> (type, system version) of responses sent and not yet answered.
    inflight: Mutex<BTreeMap<u64, (Kind, u64)>>,
}

struct TypeState {
    kind: Kind,
    sent: Sent,
    /// The next response is the first (full) state of the type.
    initial: bool,
    /// The store revision this type was last diffed at.
    synced_revision: u64,
}

#[derive(Clone)]
enum End {
    Reason(String),
    /// End the stream with this status to the zone.
    Status(Status, String),
}

/// The zone token a stream was opened with. `Debug` never shows it.
pub(crate) struct ZoneToken(pub String);

impl std::fmt::Debug for ZoneToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZoneToken(<redacted>)")
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    zone: String,
    token: ZoneToken,
    session: u64,
    inbound: Streaming<ZoneMessage>,
    out: mpsc::Sender<Result<GlobalMessage, Status>>,
    cancel: Shutdown,
) {
    let shared = Arc::new(Shared::default());
    let (recv_end_tx, recv_end) = watch::channel::<Option<End>>(None);
    let recv = tokio::spawn(recv_loop(
        ctx.clone(),
        zone.clone(),
        session,
        inbound,
        shared.clone(),
        recv_end_tx,
    ));
    let mut sender = Sender {
        keys: ctx.authority.subscribe(),
        token,
        ctx: ctx.clone(),
        zone: zone.clone(),
        session,
        out: out.clone(),
        shared,
        types: Vec::new(),
        cancel,
        shutdown: ctx.shutdown.clone(),
        recv_end,
        nonce: 0,
    };
    let end = sender.run().await;
    recv.abort();
    let reason = match end {
        End::Reason(r) => r,
        End::Status(status, r) => {
            let _ = out.try_send(Err(status));
            r
        }
    };
    drop(sender);
    drop(out);
    ctx.metrics
        .stream_disconnects
        .get_or_create(&super::metrics::ZoneLabels { zone: zone.clone() })
        .inc();
    tracing::info!(zone = %zone, session, reason = %reason, "zone disconnected");
    ctx.zones.disconnect(&zone, session, &reason).await;
}

struct Sender {
    /// Changes with the token keys and revocations: sent again, and the stream's token checked.
    keys: watch::Receiver<u64>,
    token: ZoneToken,
    ctx: Arc<Ctx>,
    zone: String,
    session: u64,
    out: mpsc::Sender<Result<GlobalMessage, Status>>,
    shared: Arc<Shared>,
    types: Vec<TypeState>,
    /// Stops when a newer stream of the same zone replaces this one.
    cancel: Shutdown,
    /// Stops when global shuts down.
    shutdown: Shutdown,
    recv_end: watch::Receiver<Option<End>>,
    nonce: u64,
}

impl Sender {
    fn take_recv_end(&self) -> End {
        self.recv_end
            .borrow()
            .clone()
            .unwrap_or_else(|| End::Reason("the stream ended".into()))
    }

    async fn run(&mut self) -> End {
        // On PostgreSQL, first catch up with what the other replicas committed: a zone moving
        // here from another replica must not be offered a state older than it applied there
        // (it would refuse it as a rollback).
        self.ctx.store.refresh(CATCH_UP_LIMIT).await;
        let mut revision = self.ctx.store.subscribe();
        // The stream's first message (the keys) went out with what the authority held then.
        self.keys.borrow_and_update();
        loop {
            // New subscriptions replace the state of their type.
            let subs = std::mem::take(
                &mut *self
                    .shared
                    .subscriptions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            for (kind, versions) in subs {
                let sent: Sent = versions
                    .into_iter()
                    .map(|v| ((v.mesh, v.name), v.version))
                    .collect();
                tracing::debug!(zone = %self.zone, type_ = %kind, held = sent.len(), "subscribed");
                self.types.retain(|t| t.kind != kind);
                self.types.push(TypeState {
                    kind,
                    sent,
                    initial: true,
                    synced_revision: 0,
                });
            }
            revision.borrow_and_update();
            for i in 0..self.types.len() {
                if let Err(end) = self.sync_type(i).await {
                    return end;
                }
            }
            let mut recv_end = self.recv_end.clone();
            let keys_changed = tokio::select! {
                biased;
                _ = self.cancel.wait() => {
                    return End::Status(
                        Status::aborted("a newer stream of this zone replaced this one"),
                        "replaced by a newer stream of the same zone".into(),
                    );
                }
                _ = self.shutdown.wait() => {
                    return End::Status(Status::unavailable("global is shutting down"), "global is shutting down".into());
                }
                _ = recv_end.wait_for(|v| v.is_some()) => return self.take_recv_end(),
                r = revision.changed() => {
                    if r.is_err() {
                        return End::Reason("the store closed".into());
                    }
                    false
                }
                _ = self.shared.wake.notified() => false,
                r = self.keys.changed() => r.is_ok(),
            };
            if keys_changed {
                self.keys.borrow_and_update();
                if let Err(end) = self.keys_changed().await {
                    return end;
                }
            }
        }
    }

    /// Keys or revocations changed: the zone gets the new keys and revocation list (first, so a
    /// zone whose own token a retirement refuses still learns which proxies' tokens to refuse),
    /// then the stream's own token is checked again (revoked, or its key retired: the stream
    /// ends).
    async fn keys_changed(&mut self) -> Result<(), End> {
        let keys = self.ctx.authority.key_set();
        self.send_message(super::token_keys_message(&keys)).await?;
        if let Err(e) =
            keys.verify::<crate::tokens::ZoneClaim>(&self.token.0, crate::tokens::ZONE_SCOPE)
        {
            let why = format!("zone token refused: {e}");
            tracing::warn!(zone = %self.zone, reason = e.code(), "ending the sync stream: {why}");
            return Err(End::Status(Status::unauthenticated(why.clone()), why));
        }
        Ok(())
    }

    async fn send(&mut self, response: DiscoveryResponse) -> Result<(), End> {
        self.send_message(GlobalMessage {
            message: Some(global_message::Message::Response(response)),
        })
        .await
    }

    async fn send_message(&mut self, msg: GlobalMessage) -> Result<(), End> {
        let timeout = self.ctx.config.send_timeout;
        let (out, cancel, shutdown, mut recv_end) = (
            self.out.clone(),
            self.cancel.clone(),
            self.shutdown.clone(),
            self.recv_end.clone(),
        );
        tokio::select! {
            r = out.send(Ok(msg)) => r.map_err(|_| End::Reason("the zone went away".into())),
            _ = tokio::time::sleep(timeout) => Err(End::Reason(format!(
                "the zone did not read for {}s", timeout.as_secs()
            ))),
            _ = cancel.wait() => Err(End::Reason("replaced by a newer stream of the same zone".into())),
            _ = shutdown.wait() => Err(End::Reason("global is shutting down".into())),
            _ = recv_end.wait_for(|v| v.is_some()) => Err(self.take_recv_end()),
        }
    }

    /// Sends what changed of `types[i]` since it was last sent (everything relevant if initial).
    async fn sync_type(&mut self, i: usize) -> Result<(), End> {
        let kind = self.types[i].kind;
        let snapshot = self.ctx.store.snapshot(kind);
        let initial = self.types[i].initial;
        if !initial && snapshot.changed_at <= self.types[i].synced_revision {
            // Nothing of this type changed since it was last diffed.
            return Ok(());
        }
        let system_version = snapshot.revision;
        let delta = diff::diff(&snapshot.map, &self.types[i].sent);
        self.types[i].synced_revision = system_version;
        if delta.is_empty() && !initial {
            return Ok(());
        }
        let mut resources = Vec::with_capacity(delta.changed.len());
        for (mesh, name) in delta.changed {
            match self.ctx.store.get(&ResourceKey::new(kind, &mesh, &name)) {
                Ok(Some(record)) => resources.push(kds::Resource {
                    payload: serde_json::to_vec(&record.spec).expect("JSON values serialize"),
                    version: record.hash,
                    mesh,
                    name,
                }),
                // Deleted since the snapshot: the next pass removes it.
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(zone = %self.zone, type_ = %kind, mesh = %mesh, name = %name, error = %e, "cannot read a resource to send");
                }
            }
        }
        let removed: Vec<kds::ResourceId> = delta
            .removed
            .into_iter()
            .map(|(mesh, name)| kds::ResourceId { mesh, name })
            .collect();
        let limit = self.ctx.config.max_message_bytes;
        let (chunks, oversized) = diff::split(resources, removed, limit);
        let labels = KdsMetrics::zone_type(&self.zone, kind.as_str());
        let mut skipped = Vec::new();
        for o in oversized {
            tracing::warn!(
                zone = %self.zone, type_ = %kind, mesh = %o.mesh, name = %o.name, size = o.size, limit,
                "resource too large to send: skipped until it changes"
            );
            self.ctx
                .metrics
                .resources_too_large
                .get_or_create(&labels)
                .inc();
            self.ctx.zones.record_too_large(
                &self.zone,
                self.session,
                TooLarge {
                    type_: kind.as_str().to_string(),
                    mesh: o.mesh.clone(),
                    name: o.name.clone(),
                    version: o.version.clone(),
                    size: o.size as u64,
                    limit: limit as u64,
                    at_ms: common::clock::now_ms() as u64,
                },
            );
            self.types[i]
                .sent
                .insert((o.mesh.clone(), o.name.clone()), o.version.clone());
            if skipped.len() < MAX_SKIPPED_LISTED {
                skipped.push(kds::SkippedResource {
                    mesh: o.mesh,
                    name: o.name,
                    size: o.size as u64,
                    limit: limit as u64,
                });
            }
        }
        let n = chunks.len();
        for (j, chunk) in chunks.into_iter().enumerate() {
            self.nonce += 1;
            let nonce = self.nonce;
            let (n_res, n_rem) = (chunk.resources.len() as u64, chunk.removed.len() as u64);
            let applied: Vec<((String, String), Option<String>)> = chunk
                .resources
                .iter()
                .map(|r| ((r.mesh.clone(), r.name.clone()), Some(r.version.clone())))
                .chain(
                    chunk
                        .removed
                        .iter()
                        .map(|r| ((r.mesh.clone(), r.name.clone()), None)),
                )
                .collect();
            let response = DiscoveryResponse {
                r#type: kind.as_str().to_string(),
                nonce: nonce.to_string(),
                system_version,
                resources: chunk.resources,
                removed_resources: chunk.removed,
                skipped: if j + 1 == n {
                    std::mem::take(&mut skipped)
                } else {
                    vec![]
                },
                initial,
                more: j + 1 < n,
                // Said with the first (full) state of each type; the zone keeps it for the stream.
                store_id: if initial {
                    self.ctx.identity.id.clone()
                } else {
                    String::new()
                },
                store_epoch: if initial { self.ctx.identity.epoch } else { 0 },
                // The zone measures how far its clock is from global's.
                sent_at_unix_ms: common::clock::now_ms(),
            };
            let bytes = prost::Message::encoded_len(&response) as u64;
            {
                let mut inflight = self
                    .shared
                    .inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                inflight.insert(nonce, (kind, system_version));
                while inflight.len() > MAX_INFLIGHT {
                    inflight.pop_first();
                }
            }
            self.send(response).await?;
            let sent = &mut self.types[i].sent;
            for (key, version) in applied {
                match version {
                    Some(v) => sent.insert(key, v),
                    None => sent.remove(&key),
                };
            }
            self.ctx.metrics.responses_sent.get_or_create(&labels).inc();
            self.ctx
                .metrics
                .resources_sent
                .get_or_create(&labels)
                .inc_by(n_res);
            self.ctx
                .metrics
                .bytes_sent
                .get_or_create(&labels)
                .inc_by(bytes);
            self.ctx.zones.update(&self.zone, self.session, |r| {
                let s = r.types.entry(kind.as_str().to_string()).or_default();
                s.responses_sent += 1;
                s.resources_sent += n_res;
                s.removed_sent += n_rem;
                s.bytes_sent += bytes;
                s.last_sent_ms = common::clock::now_ms() as u64;
            });
            tracing::debug!(zone = %self.zone, type_ = %kind, nonce, resources = n_res, removed = n_rem, bytes, initial, "sent");
        }
        self.types[i].initial = false;
        Ok(())
    }
}

async fn recv_loop(
    ctx: Arc<Ctx>,
    zone: String,
    session: u64,
    mut inbound: Streaming<ZoneMessage>,
    shared: Arc<Shared>,
    end: watch::Sender<Option<End>>,
) {
    let reason = loop {
        match inbound.message().await {
            Ok(Some(ZoneMessage {
                message: Some(zone_message::Message::Request(req)),
            })) => handle_request(&ctx, &zone, session, &shared, req).await,
            Ok(Some(ZoneMessage {
                message: Some(zone_message::Message::Status(status)),
            })) => {
                if !status.zone.is_empty() && status.zone != zone {
                    let msg = format!(
                        "the zone reports itself as {:?} but its token is for {zone:?}",
                        status.zone
                    );
                    break End::Status(Status::unauthenticated(msg.clone()), msg);
                }
                // A zone's report is its claims only: entries of meshes global does not hold are
                // dropped (and counted), and no control character of it is kept.
                let mut status = status;
                let before = status.dataplanes.len() + status.backend_checks.len();
                let known = |mesh: &str| ctx.store.version_of(&ResourceKey::mesh(mesh)).is_some();
                status.dataplanes.retain(|d| known(&d.mesh));
                status.backend_checks.retain(|c| known(&c.mesh));
                let dropped = before - status.dataplanes.len() - status.backend_checks.len();
                if dropped > 0 {
                    ctx.metrics
                        .report_entries_dropped
                        .get_or_create(&super::metrics::ZoneLabels { zone: zone.clone() })
                        .inc_by(dropped as u64);
                }
                let value =
                    common::http::printable_json(&status_json(&status, common::clock::now_ms()));
                let dataplanes: Vec<DataplaneReport> = status
                    .dataplanes
                    .iter()
                    .map(DataplaneReport::from)
                    .collect();
                // By global's clock: a zone's may be off (its skew is in the status).
                let reported = common::clock::now_ms().max(0) as u64;
                ctx.zones.update_status(&zone, session, |r| {
                    r.status = Some(value);
                    r.dataplanes = dataplanes;
                    r.dataplanes_reported_ms = reported;
                });
            }
            Ok(Some(ZoneMessage { message: None })) => {}
            Ok(None) => break End::Reason("the zone closed the stream".into()),
            Err(status) => {
                break End::Reason(format!("stream error: {}", status.message()));
            }
        }
    };
    let _ = end.send(Some(reason));
}

async fn handle_request(
    ctx: &Ctx,
    zone: &str,
    session: u64,
    shared: &Shared,
    req: DiscoveryRequest,
) {
    let Some(kind) = common::sync::parse_kind(&req.r#type) else {
        tracing::warn!(zone = %zone, type_ = %req.r#type, "the zone asked for a type that is not synced");
        let msg = format!("asked for type {:?}, which is not synced", req.r#type);
        ctx.zones.update(zone, session, |r| r.last_error = msg);
        return;
    };
    if req.response_nonce.is_empty() {
        shared
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((kind, req.initial_resource_versions));
        shared.wake.notify_one();
        ctx.zones.update(zone, session, |_| {});
        return;
    }
    let Ok(nonce) = req.response_nonce.parse::<u64>() else {
        tracing::debug!(zone = %zone, nonce = %req.response_nonce, "answer to an unknown response");
        return;
    };
    let sent = shared
        .inflight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&nonce);
    let Some((sent_kind, system_version)) = sent.filter(|(k, _)| *k == kind) else {
        tracing::debug!(zone = %zone, nonce, "answer to an unknown response");
        return;
    };
    let labels = KdsMetrics::zone_type(zone, sent_kind.as_str());
    match req.error_detail {
        None if req.rejected.is_empty() => {
            ctx.metrics.responses_acked.get_or_create(&labels).inc();
            ctx.zones.update(zone, session, |r| {
                let s = r.types.entry(kind.as_str().to_string()).or_default();
                s.acked += 1;
                s.acked_version = s.acked_version.max(system_version);
                s.last_acked_ms = common::clock::now_ms() as u64;
            });
        }
        detail => {
            let error = detail
                .map(|d| d.message)
                .unwrap_or_else(|| "some resources were rejected".into());
            let resources: Vec<Rejected> = req
                .rejected
                .into_iter()
                .map(|r| Rejected {
                    mesh: r.mesh,
                    name: r.name,
                    reason: r.reason,
                })
                .collect();
            tracing::warn!(
                zone = %zone, type_ = %kind, nonce, error = %error,
                rejected = ?resources.iter().map(|r| format!("{}/{}", r.mesh, r.name)).collect::<Vec<_>>(),
                "the zone rejected a response"
            );
            ctx.metrics.responses_nacked.get_or_create(&labels).inc();
            ctx.zones.update_persist(zone, session, |r| {
                let s = r.types.entry(kind.as_str().to_string()).or_default();
                s.nacked += 1;
                s.last_nack = Some(LastNack {
                    at_ms: common::clock::now_ms() as u64,
                    nonce: nonce.to_string(),
                    error,
                    resources,
                });
            });
        }
    }
}

/// The JSON form of a zone's status report, as `GET /zones/{name}` shows it, received at
/// `received_ms` by global's clock: with how far the zone's clock is from global's (its report
/// says when it was made), and how far its peers' clocks (global, each Vault) are from its own.
pub fn status_json(s: &kds::ZoneStatus, received_ms: i64) -> Value {
    // The zone's clock against global's: the report's time, sent a few milliseconds before.
    let zone_clock = (s.reported_at_unix_ms > 0).then(|| {
        let skew = common::clock::Skew::measure(s.reported_at_unix_ms, received_ms, received_ms, 0);
        json!({
            "skewMs": skew.ms,
            "skewed": skew.is_notable(),
            "detail": skew.describe("the zone").replace("this host's", "global's"),
        })
    });
    json!({
        "clock": zone_clock,
        "clocks": s.clocks.iter().map(|c| {
            let skew = common::clock::Skew { ms: c.skew_ms, error_ms: c.error_ms };
            json!({
                "peer": c.peer,
                "skewMs": c.skew_ms,
                "skewed": skew.is_notable(),
                "detail": skew.describe(&c.peer.replacen("vault ", "Vault ", 1)).replace("this host's", "the zone's"),
                "measuredAt": common::clock::rfc3339_ms(c.measured_at_unix_ms),
            })
        }).collect::<Vec<_>>(),
        "zone": s.zone,
        "version": s.version,
        "connectedSince": common::clock::rfc3339_ms(s.connected_since_unix_ms),
        "globalAddress": s.global_address,
        "storeError": (!s.store_error.is_empty()).then_some(&s.store_error),
        "dataplanesOmitted": s.dataplanes_omitted,
        "reportedAt": common::clock::rfc3339_ms(s.reported_at_unix_ms),
        "types": s.types.iter().map(|t| json!({
            "type": t.r#type,
            "count": t.count,
            "digest": t.digest,
            "systemVersion": t.system_version,
            "applied": t.applied,
            "rejected": t.rejected,
        })).collect::<Vec<_>>(),
        // The dataplanes themselves are kept apart (`GET /meshes/{mesh}/dataplanes`): a zone may
        // have thousands.
        "dataplanes": {
            "total": s.dataplanes.len(),
            "connected": s.dataplanes.iter().filter(|d| d.connected).count(),
        },
        "backendChecks": s.backend_checks.iter().map(|c| json!({
            "mesh": c.mesh,
            "backend": c.backend,
            "type": c.backend_type,
            "ok": c.ok,
            "error": c.error,
            "checkedAt": common::clock::rfc3339_ms(c.checked_at_unix_ms),
            "issued": c.issued,
            "lastIssuedAt": common::clock::rfc3339_ms(c.last_issued_unix_ms),
        })).collect::<Vec<_>>(),
    })
}
