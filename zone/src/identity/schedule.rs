//! The scheduler: `IdentityManager::run` follows the store, and wakes on the earliest deadline
//! (a proxy's timer: rotation point, retry, "now"; a breaker's probe; a Vault check; the end of a
//! CA's trust grace). A due proxy gets one work task ([`Work`]) that plans its next step under the
//! lock ([`Plan`]: evaluate the chain it presented, issue, or wait for its rotation point) and
//! carries it out (`reuse.rs`, `outcome.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::table::{Cause, Holding, Snap, State, Work};
use super::{BackendId, DpKey, IdentityManager};
use common::shutdown::Shutdown;

/// How long a parked proxy woken to probe a breaker has before another is woken.
const PROBE_GRACE: Duration = Duration::from_secs(5);

/// What a work task does next for a proxy.
pub(super) enum Plan {
    Nothing,
    Evaluate(String, Box<Snap>),
    Issue(Option<Cause>, Box<Snap>),
}

impl IdentityManager {
    /// Runs the engine until `shutdown` fires: follows the store (Meshes, Secrets), rotation
    /// deadlines, retries, breaker probes, Vault checks, and refreshes the status report.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let status = tokio::spawn(self.clone().status_loop());
        let records = tokio::spawn(self.clone().records_loop());
        let mut revisions = self.ctx.store.subscribe();
        let mut seen = self.store_marks();
        self.reconcile();
        loop {
            let next = self.next_deadline();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                changed = revisions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let marks = self.store_marks();
                    if marks != seen {
                        seen = marks;
                        self.reconcile();
                    }
                }
                _ = self.wake.notified() => {}
                _ = self.login_changed.notified() => self.sync_login_health(),
                _ = tokio::time::sleep_until(next.unwrap_or(far)) => {}
            }
            self.tick();
        }
        status.abort();
        records.abort();
        self.flush_records();
        self.publish();
    }

    /// When Meshes and Secrets last changed.
    pub(super) fn store_marks(&self) -> (u64, u64) {
        use common::model::Kind;
        (
            self.ctx.store.snapshot(Kind::Mesh).changed_at,
            self.ctx.store.snapshot(Kind::Secret).changed_at,
        )
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let st = self.lock();
        let mut next = st.timers.first().map(|(t, _)| *t);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for b in st.breakers.values() {
            consider(b.probe_due());
        }
        for c in st.checks.values() {
            if !c.running {
                consider(c.next);
            }
        }
        for r in st.retiring.values() {
            consider(r.values().min().copied());
        }
        next
    }

    /// Starts whatever is due.
    pub(super) fn tick(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        while let Some((t, key)) = st.timers.first().cloned() {
            if t > now {
                break;
            }
            st.timers.remove(&(t, key.clone()));
            if let Some(p) = st.proxies.get_mut(&key) {
                p.timer = None;
            }
            self.dispatch(&mut st, &key);
        }
        // CAs whose grace ended leave their mesh's trust bundle.
        let ended: Vec<String> = st
            .retiring
            .iter_mut()
            .filter_map(|(mesh, r)| {
                let before = r.len();
                r.retain(|_, until| *until > now);
                (r.len() < before).then(|| mesh.clone())
            })
            .collect();
        st.retiring.retain(|_, r| !r.is_empty());
        for mesh in ended {
            self.refresh_trust(&mut st, &mesh, None);
        }
        // Breakers whose cooldown ended: wake one parked proxy to probe.
        let due: Vec<BackendId> = st
            .breakers
            .iter()
            .filter(|(_, b)| b.probe_due().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for bid in due {
            while let Some(key) = st.breakers.get_mut(&bid).and_then(|b| b.parked.pop_first()) {
                let usable = st
                    .proxies
                    .get(&key)
                    .is_some_and(|p| p.conn.is_some() && p.parked_on.as_ref() == Some(&bid));
                if let Some(p) = st.proxies.get_mut(&key) {
                    p.parked_on = None;
                }
                if usable {
                    if let Some(b) = st.breakers.get_mut(&bid) {
                        b.probe_woken_until = Some(now + PROBE_GRACE);
                    }
                    self.dispatch(&mut st, &key);
                    break;
                }
            }
        }
        // Vault checks.
        let checks: Vec<BackendId> = st
            .checks
            .iter()
            .filter(|(_, c)| !c.running && c.next.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for bid in checks {
            if let Some(c) = st.checks.get_mut(&bid) {
                c.running = true;
                c.next = None;
                let full = c.full;
                let backend = c.backend.clone();
                if let Some(me) = self.me.upgrade() {
                    tokio::spawn(me.run_check(bid, backend, full));
                }
            }
        }
    }

    /// Starts a work task for a connected proxy (or asks the running one to go again).
    pub(super) fn dispatch(&self, st: &mut State, key: &DpKey) {
        let Some(p) = st.proxies.get_mut(key) else {
            return;
        };
        if p.conn.is_none() {
            return;
        }
        match p.work {
            Work::Running | Work::RunningAgain => {
                p.work = Work::RunningAgain;
                return;
            }
            Work::Idle => p.work = Work::Running,
        }
        if let Some(me) = self.me.upgrade() {
            let key = key.clone();
            tokio::spawn(async move { me.work(key).await });
        }
    }

    pub(super) async fn work(self: Arc<Self>, key: DpKey) {
        loop {
            let again_now = self.work_once(&key).await;
            let mut st = self.lock();
            let Some(p) = st.proxies.get_mut(&key) else {
                return;
            };
            if p.conn.is_some() && (again_now || p.work == Work::RunningAgain) {
                p.work = Work::Running;
                continue;
            }
            p.work = Work::Idle;
            drop(st);
            // Its timer may have moved.
            self.wake.notify_one();
            return;
        }
    }

    /// Decides what a proxy needs, under the lock.
    pub(super) fn plan(&self, st: &mut State, key: &DpKey) -> Plan {
        let now_unix = self.clock.now_unix();
        let Some(p) = st.proxies.get(key) else {
            return Plan::Nothing;
        };
        if p.conn.is_none() {
            return Plan::Nothing;
        }
        let problem = match st.meshes.get(&key.0) {
            None => Some(format!("mesh {:?} is not in this zone", key.0)),
            Some(m) if m.slot.is_none() => Some(
                m.problem
                    .clone()
                    .unwrap_or_else(|| format!("mesh {:?} has no enabled mTLS backend", key.0)),
            ),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            // Woken again when the mesh changes.
            if let Some(p) = st.proxies.get_mut(key) {
                p.last_error = Some(problem);
            }
            self.dirty.notify_one();
            return Plan::Nothing;
        }
        let slot = st.meshes[&key.0].slot.as_ref().expect("checked above");
        let snap = Snap {
            bid: (key.0.clone(), slot.backend.name.clone()),
            backend: slot.backend.clone(),
            type_str: slot.type_str,
            ttl: slot.ttl,
            backend_gen: slot.backend_gen.clone(),
            anchors: slot
                .anchors_id
                .as_ref()
                .and_then(|id| st.anchors.get(id).map(|a| (id.clone(), a.clone()))),
            source: slot.source.clone(),
            tags: p.tags.clone(),
            tags_hash: p.tags_hash.clone(),
            record_cert: p.cert.clone(),
        };
        let cause = match &p.cert {
            None => None,
            Some(c) if c.backend_gen != snap.backend_gen => Some(Cause::BackendChange),
            Some(c) if c.tags_hash != p.tags_hash => Some(Cause::TagsChange),
            Some(c) if now_unix >= c.rotate_at => Some(Cause::Expiry),
            Some(_) => None,
        };
        let needed = p.holding == Holding::Unknown || p.cert.is_none() || cause.is_some();
        let rotate_at = p.cert.as_ref().map(|c| c.rotate_at);
        let p = st.proxies.get_mut(key).expect("present");
        if let Some(presented) = p.conn.as_mut().and_then(|c| c.presented.take()) {
            return Plan::Evaluate(presented, Box::new(snap));
        }
        if needed {
            // Early issuances are paced (see `policy::pace`); the proxy keeps what it holds.
            if let Some(at) = p.next_issue.filter(|at| *at > Instant::now()) {
                st.set_timer(key, Some(at));
                return Plan::Nothing;
            }
            return Plan::Issue(cause, Box::new(snap));
        }
        if let Some(at) = rotate_at {
            let at = self.clock.instant_at(at);
            st.set_timer(key, Some(at));
        }
        Plan::Nothing
    }

    /// One step for a proxy; true: decide again at once.
    pub(super) async fn work_once(&self, key: &DpKey) -> bool {
        let plan = {
            let mut st = self.lock();
            self.plan(&mut st, key)
        };
        match plan {
            Plan::Nothing => false,
            Plan::Evaluate(presented, snap) => {
                let anchors = match &snap.anchors {
                    Some(a) => Some(a.clone()),
                    None => self.fetch_anchors(&snap).await,
                };
                let verdict = match &anchors {
                    Some((id, set)) => self.evaluate(&presented, set, &snap).map(|m| (id, m)),
                    None => Err("the backend's CA is not known yet".to_string()),
                };
                match verdict {
                    Ok((id, meta)) => self.install_reused(key, &snap, id, meta, presented),
                    Err(why) => {
                        tracing::debug!(mesh = %key.0, dataplane = %key.1, reason = %why, "presented certificate not kept");
                        if let Some(p) = self.lock().proxies.get_mut(key) {
                            p.holding = Holding::Unknown;
                        }
                        true
                    }
                }
            }
            Plan::Issue(cause, snap) => self.issue(key, cause, &snap).await,
        }
    }
}
