//! The zone's side of the sync stream. It dials global over TLS (verifying global's certificate
//! against `--global-ca-file`, or not at all only with `--insecure-skip-verify`), presents its
//! zone token, subscribes to Secrets and Meshes with the versions its store already holds,
//! applies each response (`apply`) and answers it with an ACK or a NACK, and reports its status on
//! connect and on change. When the stream fails it keeps serving from its store and reconnects
//! with exponential backoff and jitter, logging each change of state once. Given several addresses
//! of global (replicas), it dials them in order and moves to the next one at once when one fails
//! (`failover` decides which), waiting the backoff only after a full round; a move is an ordinary
//! reconnection, subscribing with the versions held, so nothing is resent and nothing removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::shutdown::Shutdown;
use proto::kds::zone_sync_client::ZoneSyncClient;
use proto::kds::{self, GlobalMessage, ZoneMessage, global_message, zone_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;

use crate::apply::{self, ApplyError};
use crate::config::ZoneConfig;
use crate::dial::{self, End, Redial, authorize, describe, failed};
use crate::failover::{Rotation, Step};
use crate::metrics::ZoneMetrics;
use crate::rollback::StreamGuard;
use common::sync::SYNCED_KINDS;

use crate::state::{Nack, ZoneCtx};
use common::clock::now_ms;

const OUTBOUND_QUEUE: usize = 64;
/// How long a stream whose state was refused is kept before the zone connects again to look again.
const REFUSED_RECHECK: Duration = Duration::from_secs(30);
/// How often a status report that is owed checks whether the previous one has left the queue.
const REPORT_RETRY: Duration = Duration::from_millis(25);

/// Where global is, from `--global-address`, `--global-ca-file` and `--insecure-skip-verify`.
pub type Target = crate::dial::Target;

const GLOBAL: crate::dial::Flags = crate::dial::Flags {
    address: "--global-address",
    ca_file: "--global-ca-file",
    peer: "global",
    why_tls: "the sync stream runs over TLS only",
    port_hint: "global's --kds-addr, 5685 by default",
    ca_hint: "global writes <data-dir>/kds-ca.pem",
};

/// Checks the zone's flags for reaching global: every address (each a usage error naming it),
/// none twice.
pub fn targets(config: &ZoneConfig) -> Result<Vec<Target>, String> {
    if config.global_addresses.is_empty() {
        return Err(format!("{} is required", GLOBAL.address));
    }
    let mut targets: Vec<Target> = Vec::with_capacity(config.global_addresses.len());
    for address in &config.global_addresses {
        let target = Target::parse(
            &GLOBAL,
            address,
            config.global_ca_file.as_ref(),
            config.insecure_skip_verify,
        )?;
        if targets.iter().any(|t| t.uri == target.uri) {
            return Err(format!(
                "{} {:?} is given twice",
                GLOBAL.address, target.address
            ));
        }
        targets.push(target);
    }
    Ok(targets)
}

/// Keeps the zone in sync with global, at one of `targets` (tried in their order), until
/// `shutdown` fires.
pub async fn run(ctx: Arc<ZoneCtx>, targets: Vec<Target>, shutdown: Shutdown) {
    let several = targets.len() > 1;
    let mut redial =
        Redial::new(ctx.config.reconnect_initial, ctx.config.reconnect_max).peers(targets.len());
    let mut rotation = Rotation::new(targets.len());
    // The address of the last stream that was up, to say when the zone moved to another one.
    let mut last_connected: Option<usize> = None;
    let mut attempts = 0u64;
    loop {
        if shutdown.is_shutdown() {
            break;
        }
        if attempts > 0 {
            ctx.metrics.reconnects.inc();
        }
        attempts += 1;
        let at = rotation.current();
        let target = &targets[at];
        ctx.connection().address = target.address.clone();
        let moved_from = last_connected
            .filter(|&p| p != at)
            .map(|p| targets[p].address.as_str());
        let step = match session(&ctx, target, moved_from, &shutdown, &mut redial).await {
            End::Shutdown => break,
            End::Failed { error, lasted, .. } => {
                {
                    let mut conn = ctx.connection();
                    conn.connected = false;
                    conn.last_error = error.clone();
                    conn.last_error_ms = now_ms();
                }
                ctx.metrics.connected.set(0);
                match lasted {
                    Some(lasted) => {
                        last_connected = Some(at);
                        let step = if dial::lasted(lasted) {
                            rotation.lost()
                        } else {
                            rotation.failed()
                        };
                        let what = if several {
                            format!(
                                "lost the connection to global at {}; serving from the local store and {}",
                                target.address,
                                next_words(&targets, step)
                            )
                        } else {
                            "lost the connection to global; serving from the local store and reconnecting".to_string()
                        };
                        redial.lost_at(at, error, lasted, false, &what);
                        step
                    }
                    None => {
                        let step = rotation.failed();
                        let what = if several {
                            format!(
                                "cannot sync with global at {}; serving from the local store and {}",
                                target.address,
                                next_words(&targets, step)
                            )
                        } else {
                            "cannot sync with global; serving from the local store and retrying with backoff".to_string()
                        };
                        redial.failed_at(at, error, &what);
                        step
                    }
                }
            }
        };
        if let Step::AfterBackoff(_) = step
            && !redial.pause(&shutdown).await
        {
            break;
        }
    }
    ctx.connection().connected = false;
    ctx.metrics.connected.set(0);
}

/// What the zone does next, for the warning of a failure when global has several addresses.
fn next_words(targets: &[Target], step: Step) -> String {
    match step {
        Step::Now(i) => format!("trying {} now", targets[i].address),
        Step::AfterBackoff(i) => format!(
            "retrying from {} with backoff (every address failed)",
            targets[i].address
        ),
    }
}

fn subscribe(ctx: &ZoneCtx, kind: common::model::Kind) -> ZoneMessage {
    ZoneMessage {
        message: Some(zone_message::Message::Request(kds::DiscoveryRequest {
            r#type: kind.as_str().to_string(),
            initial_resource_versions: ctx.held_versions(kind),
            ..Default::default()
        })),
    }
}

fn report(ctx: &ZoneCtx) -> ZoneMessage {
    ZoneMessage {
        message: Some(zone_message::Message::Status(ctx.status_report())),
    }
}

/// One stream with global at `target`; `moved_from`: the address of the previous stream, when it
/// was another one (the connection is then logged as a move).
async fn session(
    ctx: &Arc<ZoneCtx>,
    target: &Target,
    moved_from: Option<&str>,
    shutdown: &Shutdown,
    redial: &mut Redial,
) -> End {
    let (token, channel) = match dial::open(
        target,
        &ctx.config.token_file,
        Duration::from_secs(3),
        shutdown,
    )
    .await
    {
        Ok(opened) => opened,
        Err(end) => return end,
    };
    let mut client = ZoneSyncClient::new(channel)
        .max_decoding_message_size(common::limits::SYNC_MESSAGE_BYTES)
        .max_encoding_message_size(common::limits::SYNC_MESSAGE_BYTES)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let (tx, rx) = mpsc::channel::<ZoneMessage>(OUTBOUND_QUEUE);
    for kind in SYNCED_KINDS {
        tx.send(subscribe(ctx, kind))
            .await
            .expect("the receiver is held below");
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Err(e) = authorize(&mut request, &token) {
        return failed(e);
    }
    if let Ok(name) = ctx.config.name.parse() {
        request
            .metadata_mut()
            .insert(common::sync::ZONE_NAME_HEADER, name);
    }
    let response = tokio::select! {
        r = client.sync(request) => r,
        _ = shutdown.wait() => return End::Shutdown,
    };
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return failed(describe(&status, "global", "zone")),
    };
    let since = Instant::now();
    {
        let mut conn = ctx.connection();
        conn.connected = true;
        conn.address = target.address.clone();
        conn.since_ms = now_ms();
        conn.connects += 1;
        conn.applied.clear();
    }
    ctx.metrics.connected.set(1);
    match moved_from {
        Some(previous) => tracing::info!(
            global = %target.uri, address = %target.address, previous = %previous,
            "connected to global at another address; resuming with the versions held"
        ),
        None => tracing::info!(global = %target.uri, "connected to global"),
    }
    redial.connected();
    if tx.send(report(ctx)).await.is_err() {
        return End::Failed {
            error: "the stream to global closed".into(),
            lasted: Some(since.elapsed()),
            delivered: false,
        };
    }
    let lost = |error: String| End::Failed {
        error,
        lasted: Some(since.elapsed()),
        delivered: false,
    };
    // A status report lists every dataplane: it is built only once the previous one has left the
    // outbound queue, so that reports never pile up (in memory, or as work for global) when they
    // are asked for faster than the stream carries them; the last one asked for is always sent.
    let mut report_owed = false;
    let mut guard = StreamGuard::new();
    let mut store_failure = ctx.store.write_failure();
    let mut failed_on_this_stream = store_failure.borrow_and_update().is_some();
    // When this stream's state was refused: the zone looks again on a new stream after a while
    // (a replica that had not caught up yet will have; a real rollback is refused again).
    let mut refused_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => return End::Shutdown,
            _ = tokio::time::sleep_until(refused_at.unwrap_or_else(tokio::time::Instant::now) + REFUSED_RECHECK), if refused_at.is_some() => {
                return lost("global's state was refused on this stream: connecting again to look again".into());
            }
            changed = store_failure.changed() => {
                let failing = changed.is_ok() && store_failure.borrow_and_update().is_some();
                if failing {
                    failed_on_this_stream = true;
                    report_owed = true;
                } else if failed_on_this_stream {
                    // Updates were NACKed meanwhile: subscribe again with what the store holds.
                    return lost("the local store can write again: subscribing again for what it missed".into());
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(GlobalMessage { message: Some(global_message::Message::Response(resp)) })) => {
                    if resp.sent_at_unix_ms > 0 {
                        // Pushed, not asked for: the one-way delay (milliseconds) is the error.
                        let now = common::clock::now_ms();
                        let skew = common::clock::Skew::measure(resp.sent_at_unix_ms, now, now, 0);
                        if ctx.clocks.observe(crate::clocks::GLOBAL, skew) {
                            ctx.report_now.notify_one();
                        }
                    }
                    let reply = match handle_response(ctx, &resp, &mut guard).await {
                        Ok(reply) => reply,
                        Err(e) => return lost(e),
                    };
                    if guard.is_refusing() && refused_at.is_none() {
                        refused_at = Some(tokio::time::Instant::now());
                    }
                    if tx.send(reply).await.is_err() {
                        return lost("the stream to global closed".into());
                    }
                    if !resp.more && tx.send(report(ctx)).await.is_err() {
                        return lost("the stream to global closed".into());
                    }
                }
                Ok(Some(GlobalMessage { message: Some(global_message::Message::TokenKeys(keys)) })) => {
                    match crate::dp::keys::save(&ctx.store, &keys).await {
                        Ok(true) => {
                            tracing::info!(keys = keys.keys.len(), revoked = keys.revoked_token_ids.len(), "received the dataplane token keys and revocations from global");
                            ctx.token_keys.send_modify(|g| *g += 1);
                        }
                        Ok(false) => tracing::debug!("dataplane token keys unchanged"),
                        Err(e) => tracing::warn!(error = %e, "cannot keep the dataplane token keys from global; proxies are verified with the keys held"),
                    }
                }
                Ok(Some(GlobalMessage { message: None })) => {}
                Ok(None) => return lost("global ended the stream".into()),
                Err(status) => return lost(describe(&status, "global", "zone")),
            },
            _ = ctx.report_now.notified() => report_owed = true,
            _ = tokio::time::sleep(REPORT_RETRY), if report_owed => {}
        }
        if report_owed && tx.capacity() == tx.max_capacity() {
            report_owed = false;
            if tx.send(report(ctx)).await.is_err() {
                return lost("the stream to global closed".into());
            }
        }
    }
}

/// Makes `request` the NACK of a whole response, noted where the zone's status and global see it.
fn refuse_whole(
    ctx: &ZoneCtx,
    resp: &kds::DiscoveryResponse,
    request: &mut kds::DiscoveryRequest,
    code: tonic::Code,
    reason: String,
) {
    ctx.metrics
        .nacks
        .get_or_create(&ZoneMetrics::labels(&resp.r#type))
        .inc();
    if let Some(kind) = common::sync::parse_kind(&resp.r#type) {
        let nack = Nack {
            at_ms: now_ms(),
            error: reason.clone(),
            resources: vec![],
        };
        ctx.update_type(kind, |t| {
            t.responses_rejected += 1;
            t.last_nack = Some(nack);
        });
    }
    {
        let mut conn = ctx.connection();
        conn.last_error = reason.clone();
        conn.last_error_ms = now_ms();
    }
    request.error_detail = Some(kds::ErrorDetail {
        code: code as i32,
        message: reason,
    });
}

/// Applies one response and returns the ACK or NACK to send. A store failure ends the stream
/// (the zone resubscribes with what it really holds).
async fn handle_response(
    ctx: &ZoneCtx,
    resp: &kds::DiscoveryResponse,
    guard: &mut StreamGuard,
) -> Result<ZoneMessage, String> {
    let labels = ZoneMetrics::labels(&resp.r#type);
    let mut request = kds::DiscoveryRequest {
        r#type: resp.r#type.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    };
    let held = ctx.held();
    let mut deletes = Vec::new();
    if let Some(kind) = common::sync::parse_kind(&resp.r#type) {
        let first_refusal = !guard.is_refusing();
        match guard.check(&ctx.store, held.as_ref(), resp, kind) {
            Ok(d) => deletes = d,
            Err(reason) => {
                if first_refusal {
                    tracing::error!(type_ = %resp.r#type, reason = %reason, "refused global's state; serving what this zone holds");
                }
                refuse_whole(
                    ctx,
                    resp,
                    &mut request,
                    tonic::Code::FailedPrecondition,
                    reason,
                );
                return Ok(ZoneMessage {
                    message: Some(zone_message::Message::Request(request)),
                });
            }
        }
    }
    for s in &resp.skipped {
        tracing::warn!(type_ = %resp.r#type, mesh = %s.mesh, name = %s.name, size = s.size, limit = s.limit, "global could not send a resource: it is larger than the message limit");
    }
    match apply::apply(&ctx.store, resp).await {
        Ok(applied) => {
            for d in &deletes {
                if resp.initial {
                    tracing::warn!(resource = %d, "deleted: global's full state does not hold it");
                } else {
                    tracing::info!(resource = %d, "deleted by global");
                }
            }
            if let Some(next) = guard.applied(held.as_ref(), resp) {
                if held
                    .as_ref()
                    .is_some_and(|h| h.store_id != next.store_id || h.epoch != next.epoch)
                {
                    tracing::warn!(store_id = %next.store_id, epoch = next.epoch, revision = next.revision, "now applying global's state from another store or epoch");
                }
                ctx.set_held(next)
                    .await
                    .map_err(|e| format!("cannot write the local store: {e}"))?;
            }
            let kind = common::sync::parse_kind(&resp.r#type).expect("apply checked the type");
            ctx.metrics.syncs_applied.get_or_create(&labels).inc();
            ctx.metrics
                .resources_applied
                .get_or_create(&labels)
                .inc_by(applied.changed as u64);
            ctx.metrics
                .resources_removed
                .get_or_create(&labels)
                .inc_by(applied.removed as u64);
            let rejected = !applied.rejected.is_empty();
            {
                let mut conn = ctx.connection();
                let e = conn.applied.entry(kind.as_str()).or_default();
                e.0 += 1;
                if rejected {
                    e.1 += 1;
                }
            }
            let nack = rejected.then(|| Nack {
                at_ms: now_ms(),
                error: format!(
                    "{} of {} resources rejected",
                    applied.rejected.len(),
                    resp.resources.len()
                ),
                resources: applied
                    .rejected
                    .iter()
                    .map(|r| (r.mesh.clone(), r.name.clone(), r.reason.clone()))
                    .collect(),
            });
            let system_version = resp.system_version;
            ctx.update_type(kind, |t| {
                t.system_version = system_version;
                t.last_applied_ms = now_ms();
                t.responses_applied += 1;
                if let Some(n) = nack.clone() {
                    t.responses_rejected += 1;
                    t.last_nack = Some(n);
                }
            });
            if let Some(n) = nack {
                ctx.metrics.nacks.get_or_create(&labels).inc();
                tracing::warn!(
                    type_ = %resp.r#type, nonce = %resp.nonce,
                    rejected = ?applied.rejected.iter().map(|r| format!("{}/{}: {}", r.mesh, r.name, r.reason)).collect::<Vec<_>>(),
                    "rejected resources from global; applied the rest"
                );
                request.error_detail = Some(kds::ErrorDetail {
                    code: tonic::Code::InvalidArgument as i32,
                    message: n.error,
                });
                request.rejected = applied.rejected;
            } else {
                tracing::debug!(
                    type_ = %resp.r#type, nonce = %resp.nonce, changed = applied.changed,
                    removed = applied.removed, unchanged = applied.unchanged, "applied"
                );
            }
        }
        Err(ApplyError::UnknownType(t)) => {
            ctx.metrics.nacks.get_or_create(&labels).inc();
            tracing::warn!(type_ = %t, "global sent a type this zone does not know");
            request.error_detail = Some(kds::ErrorDetail {
                code: tonic::Code::InvalidArgument as i32,
                message: format!("unknown type {t:?}"),
            });
        }
        Err(ApplyError::Store(e @ common::store::StoreError::DiskFull { .. })) => {
            // Said to global and kept off the stream: reconnecting would only download the same
            // state again into a full disk. The stream resubscribes once the store can write.
            let reason = format!("cannot write the local store: {e}");
            tracing::warn!(type_ = %resp.r#type, error = %e, "cannot apply global's update: the zone's disk is full");
            refuse_whole(
                ctx,
                resp,
                &mut request,
                tonic::Code::ResourceExhausted,
                reason,
            );
        }
        Err(ApplyError::Store(e)) => return Err(format!("cannot write the local store: {e}")),
    }
    Ok(ZoneMessage {
        message: Some(zone_message::Message::Request(request)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(c: &ZoneConfig) -> Result<Target, String> {
        targets(c).map(|mut t| t.remove(0))
    }

    fn with(c: &ZoneConfig, addresses: &[&str]) -> ZoneConfig {
        c.clone()
            .with_global_addresses(addresses.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn target_requires_tls_and_a_trust_choice() {
        let mut c = ZoneConfig::new("z", "grpcs://127.0.0.1:5685", "t".into(), "d".into());
        assert!(target(&c).unwrap_err().contains("--global-ca-file"));
        c.insecure_skip_verify = true;
        let t = target(&c).unwrap();
        assert_eq!(
            (t.uri.as_str(), t.server_name.as_str()),
            ("https://127.0.0.1:5685", "127.0.0.1")
        );
        assert_eq!(t.address, "grpcs://127.0.0.1:5685");
        assert_eq!(
            target(&with(&c, &["grpcs://[::1]:5685"]))
                .unwrap()
                .server_name,
            "::1"
        );
        assert!(
            target(&with(&c, &["http://127.0.0.1:5685"]))
                .unwrap_err()
                .contains("grpcs://")
        );
        assert!(
            target(&with(&c, &["grpcs://localhost"]))
                .unwrap_err()
                .contains("port")
        );
    }

    #[test]
    fn every_global_address_is_checked_and_named() {
        let mut c = ZoneConfig::new("z", "grpcs://127.0.0.1:5685", "t".into(), "d".into());
        c.insecure_skip_verify = true;
        let both = targets(&with(&c, &["grpcs://127.0.0.1:1", " grpcs://127.0.0.2:2 "])).unwrap();
        let addresses: Vec<_> = both.iter().map(|t| t.address.as_str()).collect();
        assert_eq!(addresses, ["grpcs://127.0.0.1:1", "grpcs://127.0.0.2:2"]);
        let bad = targets(&with(&c, &["grpcs://127.0.0.1:1", "http://b:2"])).unwrap_err();
        assert!(bad.contains("\"http://b:2\""), "{bad}");
        let portless = targets(&with(&c, &["grpcs://127.0.0.1:1", "grpcs://b"])).unwrap_err();
        assert!(
            portless.contains("\"grpcs://b\"") && portless.contains("port"),
            "{portless}"
        );
        let twice =
            targets(&with(&c, &["grpcs://127.0.0.1:1", "https://127.0.0.1:1"])).unwrap_err();
        assert!(twice.contains("given twice"), "{twice}");
        assert!(targets(&with(&c, &[])).unwrap_err().contains("required"));
    }
}
